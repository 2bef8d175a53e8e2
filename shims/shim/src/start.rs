//! `start`: containerd runs `containerd-shim-husk-v2 -namespace NS -address
//! ADDR -publish-binary BIN -id ID start` in the bundle directory. We bind
//! the shim's socket, daemonize a copy of ourselves that serves it, print
//! its address and exit. Containers of one pod (same
//! `io.kubernetes.cri.sandbox-id`) share one shim: a `start` for a group
//! whose shim is up prints the existing address.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::plugins;

/// Where containerd's shims keep their sockets.
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The annotation CRI puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// The fd a daemon executed by `start` (before it forked instead) found
/// its listening socket on.
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

/// What `start` goes on to do after [`run`].
pub enum Outcome {
    /// This is `start`: print the address and exit.
    Address(String),
    /// This is the daemon `start` forked: serve on this listening socket
    /// with these arguments.
    Daemon(Args, OwnedFd),
}

/// Runs `start`: the address to print to containerd, or, in the child it
/// forked, the daemon's arguments.
pub fn run(args: &Args) -> Result<Outcome> {
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
                return Ok(Outcome::Address(address));
            }
            tracing::info!(socket = path, "removing a stale shim socket");
            std::fs::remove_file(&path)
                .map_err(ShimError::io(format!("remove stale socket {path}")))?;
            UnixListener::bind(&path).map_err(ShimError::io(format!("bind shim socket {path}")))?
        }
        Err(e) => return Err(ShimError::io(format!("bind shim socket {path}"))(e)),
    };
    let pid = match fork_daemon() {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            if let Some(config) = preload {
                // Single-threaded still: nothing else reads the environment.
                std::env::set_var(plugins::PRELOAD_ENV, config);
            }
            return Ok(Outcome::Daemon(
                args.for_daemon(&address),
                OwnedFd::from(listener),
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    drop(listener);
    write_bundle_file(&bundle, "shim.pid", &pid.to_string())?;
    write_bundle_file(&bundle, "address", &address)?;
    Ok(Outcome::Address(address))
}

/// Forks the daemon: `Some(pid)` in `start`, `None` in the daemon, which
/// is in a session of its own with stdio on /dev/null (containerd reads
/// `start`'s output until every writer is gone).
///
/// `start` returns only after the daemon has blanked `start` from its
/// command line: whoever counts shims by their command line once `start`
/// has printed the address finds exactly one.
///
/// A fork, not an exec of this binary as Go shims must do: `start` has no
/// thread yet, and the daemon starts with everything `start` already
/// loaded and touched, instead of paying a second exec, dynamic loading
/// and relocation before it can accept containerd's Create.
fn fork_daemon() -> Result<Option<u32>> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create a pipe for the shim daemon")(e.into()))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(ShimError::io("open /dev/null for the daemon's stdio"))?;
    // SAFETY: `start` is single-threaded (no runtime, no thread has been
    // started), so the child may go on running any code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(ready_w);
            // EOF once the daemon has retitled itself (or died).
            let _ = nix::unistd::read(&ready_r, &mut [0u8; 1]);
            Ok(Some(child.as_raw() as u32))
        }
        Ok(nix::unistd::ForkResult::Child) => {
            let detach = || -> std::io::Result<()> {
                nix::unistd::setsid()?;
                for fd in 0..3 {
                    if null.as_raw_fd() != fd {
                        // SAFETY: dup2 onto stdio; `null` stays open.
                        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            };
            if let Err(e) = detach() {
                tracing::error!("detaching the forked shim daemon: {e}");
                std::process::exit(1);
            }
            drop((null, ready_r));
            hide_start_argument();
            drop(ready_w);
            Ok(None)
        }
        Err(e) => Err(ShimError::io("fork the shim daemon")(e.into())),
    }
}

/// Blanks `start`'s action out of the daemon's command line (which `ps`
/// shows; the daemon of a Go shim has none). Best effort; nothing reads our
/// arguments again (the daemon's are in [`Args`], and
/// `crate::daemon_argv`).
fn hide_start_argument() {
    const ACTION: &[u8] = b"start\0";
    let Ok(cmdline) = std::fs::read("/proc/self/cmdline") else {
        return;
    };
    let Some(at) = cmdline
        .strip_suffix(ACTION)
        .filter(|k| k.ends_with(b"\0"))
        .map(<[u8]>::len)
    else {
        return;
    };
    if let Err(e) = write_args(at, &[0; ACTION.len() - 1]) {
        tracing::debug!("the daemon's command line keeps `start`: {e}");
    }
}

/// Replaces this process's whole command line with `title`: a worker (a
/// fork of the daemon) must not look like a shim to
/// whatever counts shims by their command line. Best effort.
pub fn retitle(title: &str) {
    let Some((_, len)) = arg_area() else {
        return;
    };
    let mut area = vec![0u8; len.saturating_sub(1)];
    let n = title.len().min(area.len());
    area[..n].copy_from_slice(&title.as_bytes()[..n]);
    let _ = write_args(0, &area);
}

/// This process's argument area (what /proc/PID/cmdline shows): its
/// address and length, from /proc/self/stat, read once per process. The
/// daemon reads it as it starts, so a worker, a fork of it, retitles
/// itself without reading /proc.
pub fn arg_area() -> Option<(u64, usize)> {
    static AREA: std::sync::OnceLock<Option<(u64, usize)>> = std::sync::OnceLock::new();
    *AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields 48 and 49, arg_start and arg_end (fields counted from 1,
        // the third is the first after the parenthesized command name).
        let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
        let start = fields.nth(48 - 3)?.parse::<u64>().ok()?;
        let end = fields.next()?.parse::<u64>().ok()?;
        Some((start, end.checked_sub(start)? as usize))
    })
}

/// Writes `bytes` at `offset` into this process's argument area, its own
/// memory, through /proc/self/mem as setproctitle(3) does.
fn write_args(offset: usize, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (start, _) =
        arg_area().ok_or_else(|| std::io::Error::other("no arg_start in /proc/self/stat"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?
        .write_all_at(bytes, start + offset as u64)
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

/// The listener on fd [`LISTENER_FD`], for a daemon executed (not
/// forked) by an older `start`.
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
