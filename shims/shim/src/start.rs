//! `start`: containerd runs `containerd-shim-husk-v2 -namespace NS -address
//! ADDR -publish-binary BIN -id ID start` in the bundle directory. We bind
//! the shim's socket, daemonize a copy of ourselves that serves it, print
//! its address and exit. Containers of one pod (same
//! `io.kubernetes.cri.sandbox-id`) share one shim: a `start` for a group
//! whose shim is up prints the existing address.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::plugins;

/// Where containerd's shims keep their sockets.
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The annotation CRI puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The fd the daemon finds its listening socket on.
pub const LISTENER_FD: i32 = 3;

/// containerd's socket naming: sha256 of `<containerd address>/<ns>/<id>`.
pub fn socket_address(containerd_address: &str, namespace: &str, group: &str) -> String {
    let path = clean_join(&[containerd_address, namespace, group]);
    let digest = Sha256::digest(path.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

/// Go's `filepath.Join` for the plain paths containerd uses: joined with
/// `/`, empty parts skipped, duplicate and trailing slashes removed.
fn clean_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let absolute = joined.starts_with('/');
    let segs: Vec<&str> = joined
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let body = segs.join("/");
    if absolute {
        format!("/{body}")
    } else {
        body
    }
}

pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// The shim group of the container in `bundle`: its pod's sandbox id, or
/// its own id.
pub fn group_of(bundle: &Path, id: &str) -> String {
    let config = bundle.join("config.json");
    let sandbox = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("annotations")?
                .get(SANDBOX_ID_ANNOTATION)?
                .as_str()
                .map(String::from)
        });
    match sandbox {
        Some(s) if !s.is_empty() => s,
        _ => id.to_string(),
    }
}

pub fn bundle_dir(args: &Args) -> Result<PathBuf> {
    if !args.bundle.is_empty() {
        return Ok(PathBuf::from(&args.bundle));
    }
    std::env::current_dir().map_err(ShimError::io("read the current directory (the bundle)"))
}

/// Runs `start`: returns the address printed to containerd.
pub fn run(args: &Args) -> Result<String> {
    args.require_id()?;
    let preload = plugins::config_in_start_options(&drain_bootstrap_params());
    let bundle = bundle_dir(args)?;
    let group = group_of(&bundle, &args.id);
    let address = socket_address(&args.address, &args.namespace, &group);
    let path = socket_path(&address).to_string();
    std::fs::create_dir_all(SOCKET_DIR).map_err(ShimError::io(format!("create {SOCKET_DIR}")))?;
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(&path).is_ok() {
                // The group's shim is up: containerd creates the task there.
                write_bundle_file(&bundle, "address", &address)?;
                return Ok(address);
            }
            tracing::info!(socket = path, "removing a stale shim socket");
            std::fs::remove_file(&path)
                .map_err(ShimError::io(format!("remove stale socket {path}")))?;
            UnixListener::bind(&path).map_err(ShimError::io(format!("bind shim socket {path}")))?
        }
        Err(e) => return Err(ShimError::io(format!("bind shim socket {path}"))(e)),
    };
    let pid = match spawn_daemon(args, &bundle, &address, listener.as_raw_fd(), preload) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    drop(listener);
    write_bundle_file(&bundle, "shim.pid", &pid.to_string())?;
    write_bundle_file(&bundle, "address", &address)?;
    Ok(address)
}

fn spawn_daemon(
    args: &Args,
    bundle: &Path,
    address: &str,
    listener: i32,
    plugin_config: Option<PathBuf>,
) -> Result<u32> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(ShimError::io("find the shim's own binary"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &args.namespace,
        "-id",
        &args.id,
        "-address",
        &args.address,
    ]);
    cmd.args(["-publish-binary", &args.publish_binary, "-socket", address]);
    if args.debug {
        cmd.arg("-debug");
    }
    if let Some(config) = plugin_config {
        cmd.env(plugins::PRELOAD_ENV, config);
    }
    cmd.current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if listener == LISTENER_FD {
                let flags = libc::fcntl(LISTENER_FD, libc::F_GETFD);
                if flags < 0
                    || libc::fcntl(LISTENER_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(listener, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(ShimError::io("start the shim daemon"))?;
    // It runs on its own (setsid); when we exit it is reparented.
    Ok(child.id())
}

fn write_bundle_file(bundle: &Path, name: &str, contents: &str) -> Result<()> {
    let path = bundle.join(name);
    let tmp = bundle.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(ShimError::io(format!("write {}", path.display())))
}

/// containerd 1.6 writes the runtime options (a protobuf `Any`) on
/// `start`'s stdin, 2.3+ a `BootstrapParams`; others give /dev/null. Read
/// it so the writer never blocks; the options may name the plugin config
/// the daemon asks the plugin service to load before the first Create.
fn drain_bootstrap_params() -> Vec<u8> {
    // SAFETY: fd 0 is borrowed only for these calls.
    let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    if nix::unistd::isatty(stdin).unwrap_or(true) {
        return Vec::new();
    }
    let mut fds = [libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: fds is a valid array of one pollfd.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
    if ready <= 0 {
        return Vec::new();
    }
    // SAFETY: fd 0 stays open for the life of the process; ManuallyDrop
    // keeps the File from closing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let mut buf = Vec::new();
    let _ = (&mut *f).take(1 << 20).read_to_end(&mut buf);
    tracing::debug!(bytes = buf.len(), "read bootstrap params from stdin");
    buf
}

/// Prints the address the way containerd reads it (no newline needed).
pub fn print_address(address: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes())
        .and_then(|_| out.flush())
        .map_err(ShimError::io("print the shim address"))
}

/// The listener `start` passed to the daemon.
pub fn inherited_listener() -> Result<OwnedFd> {
    // SAFETY: fd 3 is checked to be a socket before it is owned.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTENER_FD) };
    let st = nix::sys::stat::fstat(fd).map_err(|e| {
        ShimError::Internal(format!(
            "no listening socket on fd {LISTENER_FD} ({e}); the shim daemon is started by `start`"
        ))
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ShimError::Internal(format!(
            "fd {LISTENER_FD} is not a socket"
        )));
    }
    // SAFETY: fd 3 is an open socket nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(LISTENER_FD) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_name_is_sha256_of_address_namespace_id() {
        let a = socket_address("/run/containerd/containerd.sock", "default", "c1");
        let digest = Sha256::digest(b"/run/containerd/containerd.sock/default/c1");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a, format!("unix:///run/containerd/s/{hex}"));
        assert_eq!(socket_path(&a), format!("/run/containerd/s/{hex}"));
    }

    #[test]
    fn join_cleans_like_go() {
        assert_eq!(clean_join(&["/a//b/", "ns", "id"]), "/a/b/ns/id");
        assert_eq!(clean_join(&["", "ns", "id"]), "ns/id");
    }

    #[test]
    fn group_is_the_sandbox_id_when_annotated() {
        let d = std::env::temp_dir().join(format!("husk-shim-group-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(group_of(&d, "c1"), "c1");
        std::fs::write(
            d.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert_eq!(group_of(&d, "c1"), "pod1");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
