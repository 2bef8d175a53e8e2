//! Where the plugin service lives: its socket, the lock file that lets one
//! starter at a time launch it, its log, and the private directory they sit
//! in.
//!
//! The socket is `$HUSK_PLUGIND_SOCKET`, else `/run/husk/plugind.sock`; the
//! lock and the log are beside it (`plugind.lock`, `plugind.log`). The
//! directory is created 0700 when missing; an existing one must belong to
//! this user and be writable by no one else (whoever can write there could
//! put their own socket in the daemon's place). The socket itself is 0600.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Overrides the socket path (tests use their own).
pub const SOCKET_ENV: &str = "HUSK_PLUGIND_SOCKET";
pub const DEFAULT_SOCKET: &str = "/run/husk/plugind.sock";

/// The socket a client uses and a daemon serves by default.
pub fn socket_from_env() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// The lock file starters hold while they launch the daemon.
pub fn lock_path(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

/// The daemon's log (its stderr), appended to by every daemon started on
/// this socket.
pub fn log_path(socket: &Path) -> PathBuf {
    socket.with_extension("log")
}

/// The directory the socket is in.
pub fn dir_of(socket: &Path) -> &Path {
    socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// An unsafe or unusable service directory.
#[derive(Debug, thiserror::Error)]
#[error("the plugin service's directory {}: {detail}", dir.display())]
pub struct DirError {
    pub dir: PathBuf,
    pub detail: String,
}

/// Creates `dir` (0700) if missing, or checks that it is private enough.
pub fn ensure_private_dir(dir: &Path) -> Result<(), DirError> {
    let err = |detail: String| DirError {
        dir: dir.to_owned(),
        detail,
    };
    match std::fs::metadata(dir) {
        Ok(m) => {
            if !m.is_dir() {
                return Err(err("exists and is not a directory".into()));
            }
            let me = euid();
            if m.uid() != me {
                return Err(err(format!(
                    "is owned by uid {}, not {me}; remove it or set ${SOCKET_ENV} to a socket \
                     in a directory of your own",
                    m.uid()
                )));
            }
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                return Err(err(format!(
                    "has mode {mode:o}, writable by others; `chmod go-w {}`",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("cannot be created: {e}"))),
        Err(e) => Err(err(format!("cannot be read: {e}"))),
    }
}

/// The process at the other end of a connected unix socket (for a
/// client, the daemon that listens; for the daemon, the client).
pub fn peer_credentials(stream: &std::os::unix::net::UnixStream) -> std::io::Result<libc::ucred> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which
    // lives across the call.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_beside_the_socket() {
        let s = Path::new("/run/husk/plugind.sock");
        assert_eq!(lock_path(s), Path::new("/run/husk/plugind.lock"));
        assert_eq!(log_path(s), Path::new("/run/husk/plugind.log"));
        assert_eq!(dir_of(s), Path::new("/run/husk"));
        assert_eq!(dir_of(Path::new("p.sock")), Path::new("."));
    }

    #[test]
    fn a_new_dir_is_private_and_a_shared_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by others"), "{e}");
        let file = tmp.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = ensure_private_dir(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
