//! Protection of the runtime's own binary (CVE-2019-5736).
//!
//! Every process the runtime starts inside a container's namespaces runs
//! the binary through a handle that cannot be written, never through the
//! file on disk: a container process that opens /proc/PID/exe of such a
//! process can never overwrite the host's binary.
//!
//! The handle is a read-only bind mount of the binary that is never
//! attached to any mount namespace (open_tree + mount_setattr): writes fail
//! with EROFS, nothing is copied, and no container can reach the mount to
//! remount it. Where the kernel lacks those calls (before 5.12) or the
//! runtime lacks CAP_SYS_ADMIN, it falls back to a sealed memfd copy of the
//! binary, whose write seal makes every write fail.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Context, Result};
use crate::sys;

/// The argument that makes the binary act as a container init.
pub const INIT_ARG: &str = "__husk_init";
/// How the runtime's processes inside a container show up in `ps`.
pub const INIT_PROCESS_NAME: &str = "husk-init";
/// Names the init channel's descriptor number in the init's environment.
pub const INIT_FD_ENV: &str = "_HUSK_INIT_FD";

pub struct SealedExe {
    /// The read-only mount or the sealed memfd; either way, unwritable.
    fd: OwnedFd,
}

impl SealedExe {
    /// The unwritable handle on the running binary, made once per process.
    pub fn current() -> Result<&'static SealedExe> {
        static EXE: OnceLock<SealedExe> = OnceLock::new();
        if let Some(exe) = EXE.get() {
            return Ok(exe);
        }
        let exe = Path::new("/proc/self/exe");
        let fd = match sys::readonly_detached_mount(exe) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!("read-only mount of the runtime binary unavailable ({e}); copying it to a sealed memfd");
                sys::sealed_memfd_copy(c"husk-runtime", exe)
                    .context(|| "copy the runtime binary into a sealed memfd".into())?
            }
        };
        Ok(EXE.get_or_init(|| SealedExe { fd }))
    }

    /// The path and arguments that run the protected binary as a container
    /// init (argv[0] is its process name).
    pub fn init_argv(&self) -> (PathBuf, [&'static OsStr; 2]) {
        (
            PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())),
            [OsStr::new(INIT_PROCESS_NAME), OsStr::new(INIT_ARG)],
        )
    }
}
