//! Protection of the runtime's own binary (CVE-2019-5736).
//!
//! Every process the runtime starts inside a container's namespaces runs
//! from a sealed in-memory copy of the binary, never from the file on disk.
//! A container process that opens /proc/PID/exe of such a process gets the
//! memfd, whose write seal makes every write fail, so the host binary can
//! never be overwritten from inside.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Context, Result};
use crate::sys;

/// The argument that makes the binary act as a container init.
pub const INIT_ARG: &str = "__husk_init";
/// Names the init channel's descriptor number in the init's environment.
pub const INIT_FD_ENV: &str = "_HUSK_INIT_FD";

pub struct SealedExe {
    memfd: OwnedFd,
}

impl SealedExe {
    /// The sealed copy of the running binary, made once per process: a
    /// long-lived shim pays the copy once, not per container.
    pub fn current() -> Result<&'static SealedExe> {
        static EXE: OnceLock<SealedExe> = OnceLock::new();
        if let Some(exe) = EXE.get() {
            return Ok(exe);
        }
        let memfd = sys::sealed_memfd_copy(c"husk-runtime", Path::new("/proc/self/exe"))
            .context(|| "copy the runtime binary into a sealed memfd".into())?;
        Ok(EXE.get_or_init(|| SealedExe { memfd }))
    }

    /// A command that runs the sealed copy as a container init.
    pub fn init_command(&self) -> Command {
        let mut cmd = Command::new(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()));
        cmd.arg(INIT_ARG);
        cmd
    }
}
