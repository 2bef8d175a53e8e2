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
//!
//! A long-lived process that starts many containers (the shim) executes
//! itself through such a handle once, as it starts ([`reexec_sealed`]).
//! Its /proc/self/exe is then unwritable, and so is that of every copy it
//! forks: the intermediate of each container is a fork that enters the
//! namespaces without executing anything, as crun's is. The exec of a
//! whole runtime binary per container (1.5 ms of CPU here, most of it the
//! binary's start-up) is gone. A process that runs unsealed (the
//! runc-compatible CLI, whose one container is all it starts) executes
//! the handle for its intermediate.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

/// Set by [`reexec_sealed`]: the binary's path on disk, which
/// /proc/self/exe no longer shows ("/" for a detached mount).
pub const BINARY_ENV: &str = "_HUSK_RUNTIME_BINARY";

static EXE: OnceLock<SealedExe> = OnceLock::new();

pub struct SealedExe {
    /// The read-only mount or the sealed memfd to execute; `None` when
    /// this process already runs from an unwritable binary, so that a copy
    /// of it (a fork) is as safe inside a container as an exec of a handle.
    handle: Option<OwnedFd>,
}

impl SealedExe {
    /// The unwritable handle on the running binary, made once per process.
    pub fn current() -> Result<&'static SealedExe> {
        if let Some(exe) = EXE.get() {
            return Ok(exe);
        }
        let handle = if runs_sealed() {
            None
        } else {
            Some(handle_on(Path::new("/proc/self/exe"))?)
        };
        Ok(EXE.get_or_init(|| SealedExe { handle }))
    }

    /// Starts making the handle in a thread, for a caller with other work
    /// to do meanwhile; `None` when nothing is to be made (this process
    /// runs sealed, or the handle exists): a thread would cost more.
    pub fn prepare_in_background() -> Option<std::thread::JoinHandle<Result<()>>> {
        if EXE.get().is_some() {
            return None;
        }
        if runs_sealed() {
            EXE.get_or_init(|| SealedExe { handle: None });
            return None;
        }
        Some(std::thread::spawn(|| SealedExe::current().map(|_| ())))
    }

    /// Whether this process runs from an unwritable binary already: the
    /// runtime then forks its intermediate instead of executing a handle.
    pub fn runs_sealed(&self) -> bool {
        self.handle.is_none()
    }

    /// The path and arguments that run the protected binary as a container
    /// init (argv[0] is its process name); `None` when [`Self::runs_sealed`].
    pub fn init_argv(&self) -> Option<(PathBuf, [&'static OsStr; 2])> {
        let fd = self.handle.as_ref()?;
        Some((
            PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            [OsStr::new(INIT_PROCESS_NAME), OsStr::new(INIT_ARG)],
        ))
    }
}

/// A read-only detached mount of the binary at `exe`, or a sealed memfd
/// copy where that is unavailable.
fn handle_on(exe: &Path) -> Result<OwnedFd> {
    match sys::readonly_detached_mount(exe) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            tracing::debug!("read-only mount of the runtime binary unavailable ({e}); copying it to a sealed memfd");
            sys::sealed_memfd_copy(c"husk-runtime", exe)
                .context(|| "copy the runtime binary into a sealed memfd".into())
        }
    }
}

/// Whether this process runs from a binary that cannot be written through
/// /proc/self/exe.
fn runs_sealed() -> bool {
    sys::unwritable_file(Path::new("/proc/self/exe")).unwrap_or(false)
}

/// Executes this process's binary again through an unwritable handle, with
/// the same arguments and environment (plus [`BINARY_ENV`]), unless it
/// already runs from one. For a long-lived process that starts containers
/// (a shim): its forks then enter containers without executing anything.
/// Returns only when no exec happened: running sealed already, no
/// read-only mount could be made (kernels before 5.12, no CAP_SYS_ADMIN),
/// or the exec failed (logged); the runtime then executes a handle for
/// every container.
pub fn reexec_sealed() {
    if runs_sealed() {
        // Known from here on, in this process and every fork of it.
        EXE.get_or_init(|| SealedExe { handle: None });
        // The exec through a descriptor named the process after its number.
        let name = binary_path()
            .file_name()
            .map(|n| n.as_bytes()[..n.len().min(15)].to_vec());
        if let Some(name) = name.and_then(|n| std::ffi::CString::new(n).ok()) {
            let _ = sys::set_process_name(&name);
        }
        return;
    }
    let exe = Path::new("/proc/self/exe");
    let binary = match std::fs::read_link(exe) {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}; running unsealed", exe.display());
            return;
        }
    };
    // A mount only: a sealed memfd copy would keep the whole binary in
    // memory for as long as this process lives, once per process. Without
    // one, every container's intermediate executes a memfd copy instead,
    // which lives as long as that exec.
    let handle = match sys::readonly_detached_mount(exe) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(
                "no read-only mount of {} ({e}); running unsealed",
                binary.display()
            );
            return;
        }
    };
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != BINARY_ENV)
        .collect();
    env.push((BINARY_ENV.into(), binary.clone().into()));
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let e = sys::execveat_empty(handle.as_fd(), &args, &env);
    tracing::warn!(
        "executing {} through its unwritable handle: {e}; running unsealed",
        binary.display()
    );
}

/// The path of the running binary on disk (what /proc/self/exe names,
/// unless [`reexec_sealed`] replaced it with a handle).
pub fn binary_path() -> PathBuf {
    let sealed = EXE.get().map_or_else(runs_sealed, SealedExe::runs_sealed);
    if let Some(path) = std::env::var_os(BINARY_ENV).filter(|_| sealed) {
        return PathBuf::from(path);
    }
    std::fs::read_link("/proc/self/exe").unwrap_or_default()
}
