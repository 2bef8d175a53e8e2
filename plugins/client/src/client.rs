//! A client of the plugin service (`husk-plugind`), as the shim uses it.
//!
//! [`Client::call`] connects to the service's socket; when no daemon
//! listens there it starts one (the `husk-plugind` binary beside the
//! calling executable, or `$HUSK_PLUGIND`), holding the lock file beside
//! the socket so that concurrent callers start only one, and connects as
//! soon as it serves. Each call is one connection: write a request, read
//! the reply.
//!
//! A call that cannot reach the service, or whose connection ends before
//! the reply, is a [`ClientError`] for which [`ClientError::is_unavailable`]
//! holds: the caller applies its plugin config's on-error policy. A request
//! the service refuses (a config that does not load, a spec that does not
//! parse) is [`ClientError::Service`].
//!
//! After an upgrade, the daemon that serves may be of the previous
//! release and refuse this client's protocol version. A call then stops
//! it (SIGTERM, to the pid of the socket's peer; it finishes what it
//! serves) and starts the installed one, once. Otherwise an old daemon,
//! kept alive by the requests it refuses, would never idle out.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::endpoint;
use crate::protocol::{self, Op, Reply, RequestRef, ServiceError};

/// The daemon binary to start (default: `husk-plugind` beside the caller's
/// own executable).
pub const BINARY_ENV: &str = "HUSK_PLUGIND";
pub const BINARY_NAME: &str = "husk-plugind";

/// How long a started daemon has to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call may wait for its reply: a config that loads for the
/// first time compiles what its cache lacks.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the plugin service husk-plugind cannot be started from {}: {source}; install \
         husk-plugind beside the shim or set ${BINARY_ENV} to its path",
        binary.display()
    )]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the plugin service husk-plugind ({}) did not serve {} {why}; see its log {}",
        binary.display(), socket.display(), log.display()
    )]
    NotServing {
        binary: PathBuf,
        socket: PathBuf,
        log: PathBuf,
        why: String,
    },
    #[error(
        "the plugin service husk-plugind at {} cannot be reached: {detail}; check that \
         husk-plugind is installed beside the shim (or ${BINARY_ENV}) and see its log {}",
        socket.display(), endpoint::log_path(socket).display()
    )]
    Unreachable { socket: PathBuf, detail: String },
    #[error(
        "the plugin service husk-plugind at {} failed during the {op} call: {detail}; \
         it may have died (see its log {}); the next call starts it again",
        socket.display(), endpoint::log_path(socket).display()
    )]
    Died {
        socket: PathBuf,
        op: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Service(ServiceError),
    /// The daemon serving the socket is of an older release: it refused
    /// this client's protocol version. [`Client::call`] stops it and
    /// starts the installed one.
    #[error(
        "the plugin service husk-plugind (pid {pid}) at {} speaks protocol versions up to \
         {speaks}, older than this client's {}: {}",
        socket.display(), protocol::VERSION, refusal.message
    )]
    Outdated {
        socket: PathBuf,
        pid: i32,
        speaks: u32,
        refusal: ServiceError,
    },
}

impl ClientError {
    /// The service could not be used at all (as opposed to a request it
    /// answered with an error).
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, ClientError::Service(_))
    }
}

/// A client of one service socket.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    /// The daemon binary started when nothing serves the socket.
    pub binary: PathBuf,
}

impl Client {
    /// The socket of `$HUSK_PLUGIND_SOCKET` (or the default), the binary
    /// of `$HUSK_PLUGIND` (or `husk-plugind` beside this executable).
    pub fn from_env() -> Client {
        let binary = std::env::var_os(BINARY_ENV)
            .filter(|b| !b.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::fs::read_link("/proc/self/exe")
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join(BINARY_NAME)))
                    .unwrap_or_else(|| PathBuf::from(BINARY_NAME))
            });
        Client {
            socket: endpoint::socket_from_env(),
            binary,
        }
    }

    /// Sends `op` and returns the service's reply (starting the service if
    /// nothing serves its socket).
    /// A service of an older release, which refuses this client's
    /// protocol version, is stopped and the installed one started: once.
    pub fn call(&self, op: Op) -> Result<Reply, ClientError> {
        match self.call_once(&op) {
            Err(ClientError::Outdated { pid, .. }) => {
                self.retire(pid)?;
                self.call_once(&op)
            }
            other => other,
        }
    }

    fn call_once(&self, op: &Op) -> Result<Reply, ClientError> {
        let mut stream = self.connect()?;
        self.write_request(&mut stream, op)?;
        self.receive(stream, op.name())
    }

    /// Sends `op` on a connection of its own, as its only request, if the
    /// service serves now, without starting it: the reply is then read
    /// with [`Self::receive`], maybe by another process that inherited
    /// the stream (the shim's create worker, forked while the service runs
    /// the plugins). `None` when nothing serves or the request could not
    /// be written: [`Self::call`] it, which starts the service (or says
    /// why it cannot be reached).
    pub fn send_if_serving(&self, op: &Op) -> Option<UnixStream> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        protocol::write_frame(&mut stream, &RequestRef::new(op)).ok()?;
        // The only request on this connection: said at once, so the
        // service, after its reply, finds the end of the stream without
        // waiting to be woken for it.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        Some(stream)
    }

    /// The reply to the `op_name` request sent on `stream`.
    pub fn receive(
        &self,
        mut stream: UnixStream,
        op_name: &'static str,
    ) -> Result<Reply, ClientError> {
        let died = |detail: String| ClientError::Died {
            socket: self.socket.clone(),
            op: op_name,
            detail,
        };
        let _ = stream.set_read_timeout(Some(CALL_TIMEOUT));
        let body = match protocol::read_frame(&mut stream) {
            Ok(Some(body)) => body,
            Ok(None) => return Err(died("the connection closed without a reply".into())),
            Err(protocol::FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(died(format!("no reply within {CALL_TIMEOUT:?}")))
            }
            Err(e) => return Err(died(format!("reading the reply: {e}"))),
        };
        match serde_json::from_slice(&body) {
            Ok(Reply::Error(e)) => Err(match protocol::versions_spoken(&e) {
                Some(speaks) if speaks < protocol::VERSION => ClientError::Outdated {
                    socket: self.socket.clone(),
                    pid: endpoint::peer_credentials(&stream).map_or(0, |c| c.pid),
                    speaks,
                    refusal: e,
                },
                _ => ClientError::Service(e),
            }),
            Ok(reply) => Ok(reply),
            Err(e) => Err(died(format!("the reply is not one this client reads: {e}"))),
        }
    }

    fn write_request(&self, stream: &mut UnixStream, op: &Op) -> Result<(), ClientError> {
        protocol::write_frame(stream, &RequestRef::new(op)).map_err(|e| ClientError::Died {
            socket: self.socket.clone(),
            op: op.name(),
            detail: format!("sending the request: {e}"),
        })
    }

    /// Stops the older husk-plugind `pid` (SIGTERM: it unlinks its socket
    /// at once, finishes what it serves, and exits), and waits until it no
    /// longer serves the socket, for the next connection to start the
    /// installed one. Others who met it may be doing the same: the lock
    /// in [`Self::start`] makes them start one.
    fn retire(&self, pid: i32) -> Result<(), ClientError> {
        if pid <= 0 {
            return Err(self.unreachable(
                "it speaks an older protocol and its pid cannot be read; restart husk-plugind"
                    .into(),
            ));
        }
        tracing::warn!(
            pid,
            socket = %self.socket.display(),
            "husk-plugind speaks an older protocol: stopping it to start the installed one"
        );
        // SAFETY: kill(2) with a pid read from the socket's peer
        // credentials; no memory is involved.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(self.unreachable(format!(
                    "it speaks an older protocol and stopping it (pid {pid}) failed: {e}; \
                     restart husk-plugind"
                )));
            }
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match UnixStream::connect(&self.socket) {
                Err(e) if not_served(&e) => return Ok(()),
                Err(e) => return Err(self.unreachable(e.to_string())),
                Ok(s) if endpoint::peer_credentials(&s).is_ok_and(|c| c.pid != pid) => {
                    return Ok(())
                }
                Ok(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(self.unreachable(format!(
                    "it speaks an older protocol and did not stop (pid {pid}) within \
                     {START_TIMEOUT:?}; restart husk-plugind"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A connection to the service, starting it if nothing serves.
    pub fn connect(&self) -> Result<UnixStream, ClientError> {
        match UnixStream::connect(&self.socket) {
            Ok(s) => Ok(s),
            Err(e) if not_served(&e) => self.start(),
            Err(e) => Err(self.unreachable(e.to_string())),
        }
    }

    fn unreachable(&self, detail: String) -> ClientError {
        ClientError::Unreachable {
            socket: self.socket.clone(),
            detail,
        }
    }

    /// Starts the daemon under the lock (unless another starter did
    /// meanwhile) and connects.
    fn start(&self) -> Result<UnixStream, ClientError> {
        endpoint::ensure_private_dir(endpoint::dir_of(&self.socket))
            .map_err(|e| self.unreachable(e.to_string()))?;
        let lock_path = endpoint::lock_path(&self.socket);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| self.unreachable(format!("opening {}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| self.unreachable(format!("locking {}: {e}", lock_path.display())))?;
        // Whoever held the lock before may have started it.
        match UnixStream::connect(&self.socket) {
            Ok(s) => return Ok(s),
            Err(e) if not_served(&e) => {}
            Err(e) => return Err(self.unreachable(e.to_string())),
        }
        let log_path = endpoint::log_path(&self.socket);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| self.unreachable(format!("opening {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--socket")
            .arg(&self.socket)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: only async-signal-safe system calls run between fork and
        // exec. The daemon gets its own session, and none of the caller's
        // descriptors (a shim's listening socket, a container's FIFOs)
        // beyond stdio: a daemon holding them would keep them alive.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| ClientError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        tracing::info!(pid = child.id(), socket = %self.socket.display(), "started husk-plugind");
        let not_serving = |why: String| ClientError::NotServing {
            binary: self.binary.clone(),
            socket: self.socket.clone(),
            log: log_path.clone(),
            why,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(s) = UnixStream::connect(&self.socket) {
                // Reaped when it exits (after its idle timeout), as long
                // as this process lives.
                let _ = std::thread::Builder::new()
                    .name("husk-plugind-wait".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let _ = child.wait();
                    });
                return Ok(s);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(not_serving(format!("(it exited: {status})")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(not_serving(format!("within {START_TIMEOUT:?} (killed it)")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Nothing serves the socket: missing, or a stale file of a dead daemon.
fn not_served(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(kind: protocol::ErrorKind, message: &str) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
        }
    }

    #[test]
    fn the_version_a_service_speaks_is_read_from_its_refusal() {
        use protocol::ErrorKind::{BadRequest, Config};
        // Release 1's words, then this release's.
        let v1 = "the request speaks protocol version 2, this husk-plugind speaks 1; \
                  restart husk-plugind (stop it: the next shim starts the installed one)";
        assert_eq!(protocol::versions_spoken(&refusal(BadRequest, v1)), Some(1));
        let v2 = protocol::version_refusal(3);
        assert_eq!(
            protocol::versions_spoken(&refusal(BadRequest, &v2)),
            Some(protocol::VERSION)
        );
        assert_eq!(protocol::versions_spoken(&refusal(Config, v1)), None);
        assert_eq!(
            protocol::versions_spoken(&refusal(BadRequest, "bad request: missing field `op`")),
            None
        );
    }
}
