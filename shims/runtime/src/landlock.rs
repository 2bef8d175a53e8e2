//! Landlock: confining the container's processes to the container's own
//! file tree, where the kernel has Landlock (5.13+); skipped cleanly where
//! it has not.
//!
//! Applied by the init after pivot_root, as the last step before execve
//! (and by every `exec`), when the spec carries the annotation
//! `io.husk.landlock: rootfs` (the hardened profile sets it). The ruleset
//! handles every filesystem right of the kernel's ABI and allows them all
//! beneath "/", which after pivot_root is the rootfs with every mount the
//! container declared on it.
//!
//! What that adds, honestly: after pivot_root the host's tree is no longer
//! reachable *by path* from "/", so for ordinary lookups the rule allows
//! what the mount namespace allows anyway. Landlock's check differs in
//! that it follows the file actually reached, not the name used: a lookup
//! that starts from something outside the container's tree finds no
//! allowed ancestor and is refused (EACCES) whatever the mount table says.
//! That covers:
//!
//! - a leaked or passed descriptor of a host directory, including a cwd
//!   (the CVE-2024-21626 class: `openat(leaked_fd, "../../..")`, or a
//!   process started in `/proc/self/fd/N`); close-on-exec is the first
//!   defence, this is the second;
//! - magic links of processes outside the container's mount namespace that
//!   it can see: `/proc/PID/root`, `/proc/PID/cwd`, `/proc/PID/fd/N`
//!   (a runtime process racing an `exec`, or a host pid namespace);
//! - the same for execute, list, create, remove, rename/link (REFER) and
//!   truncate rights.
//!
//! Not covered: reading and writing through descriptors already open
//! (Landlock checks at open), non-path objects (pipes, sockets), abstract
//! unix sockets and signals (ABI 6 scoping would also cut a container's
//! `exec`'d processes off from its init, so it is not used), and mounts
//! that appear under "/" later by propagation. The container's stdio is
//! often a host FIFO (containerd's); reopening it (`/dev/stdout`) keeps
//! working because each stdio descriptor that is a file gets a rule of
//! its own (read, write, truncate, ioctl on that file alone).

use std::os::fd::AsFd;
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// The spec annotation that asks for Landlock, and its one value.
pub use crate::hardened::spec::{LANDLOCK_ANNOTATION, LANDLOCK_ROOTFS};

pub const ACCESS_FS_EXECUTE: u64 = 1 << 0;
pub const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
pub const ACCESS_FS_READ_FILE: u64 = 1 << 2;
pub const ACCESS_FS_REFER: u64 = 1 << 13;
pub const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
pub const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;

/// Every filesystem right ABI `abi` knows: 1 has the first 13 (execute to
/// make_sym), 2 adds refer, 3 truncate, 5 ioctl_dev.
pub fn handled_fs(abi: i32) -> u64 {
    let mut rights = (1 << 13) - 1;
    if abi >= 2 {
        rights |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        rights |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= ACCESS_FS_IOCTL_DEV;
    }
    rights
}

/// The rights that apply to a file (not a directory): a rule on a file may
/// hold no others.
pub fn file_rights(abi: i32) -> u64 {
    handled_fs(abi)
        & (ACCESS_FS_EXECUTE
            | ACCESS_FS_WRITE_FILE
            | ACCESS_FS_READ_FILE
            | ACCESS_FS_TRUNCATE
            | ACCESS_FS_IOCTL_DEV)
}

/// Whether `annotations` ask for Landlock.
pub fn requested(annotations: Option<&std::collections::HashMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(LANDLOCK_ANNOTATION))
        .is_some_and(|v| v == LANDLOCK_ROOTFS)
}

/// What [`confine_to_root`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Confined with this ABI version.
    Applied { abi: i32 },
    /// The kernel has no Landlock (or it is disabled): nothing was done.
    Unsupported,
}

/// The kernel's Landlock ABI, or `None` without Landlock.
pub fn abi() -> Option<i32> {
    sys::landlock_abi_version().ok().filter(|v| *v > 0)
}

/// Confines the calling process to "/" (see the module docs). Descriptors
/// `0..stdio_end` that are files get their own rule. Needs no_new_privs.
pub fn confine_to_root(stdio_end: i32) -> Result<Outcome> {
    let Some(abi) = abi() else {
        tracing::debug!("landlock: not supported by this kernel, skipped");
        return Ok(Outcome::Unsupported);
    };
    let fail = |what: &str, e: std::io::Error| Error::Init(format!("landlock: {what}: {e}"));
    let handled = handled_fs(abi);
    let ruleset = sys::landlock_create_ruleset(handled).map_err(|e| fail("create a ruleset", e))?;
    let root = sys::open(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| fail("open /", e))?;
    sys::landlock_add_path_rule(ruleset.as_fd(), handled, root.as_fd())
        .map_err(|e| fail("allow /", e))?;
    for fd in 0..stdio_end {
        // The file behind the descriptor, reopened by path; pipes, sockets
        // and anonymous files have none and need no rule.
        let link = Path::new("/proc/self/fd").join(fd.to_string());
        let Ok(file) = sys::open(&link, libc::O_PATH) else {
            continue;
        };
        let is_dir = std::fs::metadata(&link).is_ok_and(|m| m.is_dir());
        let rights = if is_dir { handled } else { file_rights(abi) };
        match sys::landlock_add_path_rule(ruleset.as_fd(), rights, file.as_fd()) {
            Ok(()) => {}
            // EBADFD: a pseudo file system (pipefs, sockfs) has no path rule.
            Err(e) if e.raw_os_error() == Some(libc::EBADFD) => {}
            Err(e) => return Err(fail(&format!("allow descriptor {fd}"), e)),
        }
    }
    sys::landlock_restrict_self(ruleset.as_fd()).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) {
            "; Landlock needs process.noNewPrivileges"
        } else {
            ""
        };
        Error::Init(format!("landlock: restrict the process: {e}{hint}"))
    })?;
    Ok(Outcome::Applied { abi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_grow_with_the_abi() {
        assert_eq!(handled_fs(1), 0x1fff);
        assert_eq!(handled_fs(2), 0x3fff);
        assert_eq!(handled_fs(3), 0x7fff);
        assert_eq!(handled_fs(4), 0x7fff);
        assert_eq!(handled_fs(5), 0xffff);
        assert_eq!(handled_fs(7), 0xffff);
        assert_eq!(file_rights(1), 0b111);
        assert_eq!(
            file_rights(5),
            0b111 | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV
        );
        // File rights never include directory-only ones.
        assert_eq!(file_rights(7) & ACCESS_FS_REFER, 0);
    }

    #[test]
    fn only_the_rootfs_value_requests_it() {
        use std::collections::HashMap;
        let a = |v: &str| HashMap::from([(LANDLOCK_ANNOTATION.to_string(), v.to_string())]);
        assert!(requested(Some(&a("rootfs"))));
        assert!(!requested(Some(&a("off"))));
        assert!(!requested(None));
    }
}
