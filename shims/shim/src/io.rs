//! A process's stdio: the FIFOs (or files) containerd names in Create and
//! Exec, and the copiers of a terminal.
//!
//! Without a terminal the process writes to the stdout/stderr FIFOs
//! themselves: no copying, no thread, no buffer in the shim, which keeps a
//! reader on them (so writes never fail with EPIPE after the client
//! detaches). Its stdin is a pipe that a task on the shim's event loop
//! fills from the stdin FIFO (see [`pump_stdin`]): the process's reads
//! block until the client connects, and it sees EOF when the client's
//! stdin ends or on CloseIO.
//!
//! With a terminal the process gets a pty; two pumps copy stdin FIFO →
//! master and master → stdout FIFO.
//!
//! Every copier is a [`Pump`], a task on the event loop that a live swap
//! parks between two system calls and the next binary runs again from its
//! [`PumpState`] (descriptors plus the bytes read but not yet written).
//! [`ProcIo::park`] and [`IoHandover::restore`] do that for all of a
//! process's stdio.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use husk_runtime::ProcessIo;
use serde::{Deserialize, Serialize};

use crate::error::{Result, ShimError};
use crate::state::ProcIo;

/// Opens the process's stdio. Returns what the runtime library hands the
/// process, and what the shim keeps.
pub fn open(
    stdin: &str,
    stdout: &str,
    stderr: &str,
    terminal: bool,
) -> Result<(ProcessIo, ProcIo)> {
    let mut keep = ProcIo::default();
    if terminal {
        // The pty is the process's stdio; the copiers start once it exists.
        return Ok((ProcessIo::default(), keep));
    }
    let stdin_fd = if stdin.is_empty() {
        dev_null(libc::O_RDONLY)?
    } else {
        let (reader, pump) = pump_stdin(Path::new(stdin))?;
        keep.stdin_stop = Some(pump);
        reader
    };
    let mut output = |path: &str| -> Result<OwnedFd> {
        if path.is_empty() {
            return dev_null(libc::O_WRONLY);
        }
        let (path, is_fifo) = target(path)?;
        if is_fifo {
            let reader = open_path(&path, libc::O_RDONLY | libc::O_NONBLOCK)?;
            let writer = open_path(&path, libc::O_WRONLY)?;
            keep.output_keepalive.push(reader);
            Ok(writer)
        } else {
            open_path(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)
        }
    };
    let out = output(stdout)?;
    let err = output(stderr)?;
    Ok((
        ProcessIo {
            stdin: Some(stdin_fd),
            stdout: Some(out),
            stderr: Some(err),
        },
        keep,
    ))
}

/// The process's stdin: a pipe the shim fills from the stdin FIFO. Returns
/// the pipe's read end (for the process) and the pump, whose drop stops it.
///
/// The pump holds the pipe's write end, so the process's reads block until
/// input comes, and closes it when the FIFO's last writer hangs up (the
/// client's stdin ended, like runc's shim: `echo data | ctr run ... cat`
/// ends even though ctr sends no CloseIO when its stdin ends before the
/// task exists), on CloseIO, or when the process exits (dropping the
/// pump).
///
/// A FIFO opened for reading with `O_NONBLOCK` reports no hangup until a
/// writer has come and gone, so the pump waits for the client to connect.
/// That state belongs to the open file, so it survives a live swap.
fn pump_stdin(path: &Path) -> Result<(OwnedFd, Pump)> {
    let fifo = open_path(path, libc::O_RDONLY | libc::O_NONBLOCK)?;
    let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create the stdin pipe")(e.into()))?;
    let pump = Pump::spawn(PumpState {
        kind: PumpKind::Stdin,
        from: fifo,
        to: pipe_w,
        pending: Vec::new(),
    })
    .map_err(ShimError::io(format!("pump {}", path.display())))?;
    Ok((pipe_r, pump))
}

/// What a pump copies, which decides how it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PumpKind {
    /// stdin FIFO -> the process's stdin pipe. Ends when the FIFO's last
    /// writer hangs up; stops when its handle is dropped.
    Stdin,
    /// stdin FIFO -> pty master. Stops when its handle is dropped.
    TtyIn,
    /// pty master -> stdout FIFO. Ends when the terminal closes (the
    /// process and everything holding the pty exited), whatever happens to
    /// its handle, so the last output is not cut off.
    TtyOut,
}

impl PumpKind {
    fn stops_on_drop(self) -> bool {
        !matches!(self, PumpKind::TtyOut)
    }
}

/// A pump's descriptors and the bytes it read but did not write yet:
/// everything needed to run it again, here or in a successor binary.
#[derive(Debug)]
pub struct PumpState {
    pub kind: PumpKind,
    pub from: OwnedFd,
    pub to: OwnedFd,
    pub pending: Vec<u8>,
}

/// [`PumpState`] as the handover records it: descriptor numbers that stay
/// open across `execve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PumpFds {
    pub kind: PumpKind,
    pub from: RawFd,
    pub to: RawFd,
    #[serde(default)]
    pub pending: Vec<u8>,
}

impl PumpState {
    fn fds(&self, all: &mut Vec<RawFd>) -> PumpFds {
        all.extend([self.from.as_raw_fd(), self.to.as_raw_fd()]);
        PumpFds {
            kind: self.kind,
            from: self.from.as_raw_fd(),
            to: self.to.as_raw_fd(),
            pending: self.pending.clone(),
        }
    }

    /// # Safety
    /// The descriptors must be open and owned by nothing else (inherited
    /// across `execve`, listed once in the handover).
    unsafe fn from_fds(f: PumpFds) -> PumpState {
        PumpState {
            kind: f.kind,
            // SAFETY: per the function's contract.
            from: unsafe { OwnedFd::from_raw_fd(f.from) },
            // SAFETY: per the function's contract.
            to: unsafe { OwnedFd::from_raw_fd(f.to) },
            pending: f.pending,
        }
    }
}

enum Ctl {
    /// Stop where you are and hand back your state.
    Park(tokio::sync::oneshot::Sender<PumpState>),
}

/// A copier from one descriptor to another: a task on the shim's event
/// loop, no thread. [`Pump::park`] stops it between two system calls and
/// returns its [`PumpState`]; [`Pump::spawn`] runs it (again).
pub struct Pump {
    ctl: Option<tokio::sync::oneshot::Sender<Ctl>>,
    kind: PumpKind,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump").field("kind", &self.kind).finish()
    }
}

impl Pump {
    /// Starts (or restarts) a pump on the current tokio runtime.
    pub fn spawn(state: PumpState) -> std::io::Result<Pump> {
        set_nonblocking(&state.from)?;
        set_nonblocking(&state.to)?;
        let kind = state.kind;
        let from = watch(state.from, tokio::io::Interest::READABLE)?;
        let to = watch(state.to, tokio::io::Interest::WRITABLE)?;
        let (ctl, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(run_pump(kind, from, to, state.pending, Some(rx)));
        Ok(Pump {
            ctl: Some(ctl),
            kind,
        })
    }

    /// Stops the pump and returns its state; `None` if it already ended.
    pub async fn park(mut self) -> Option<PumpState> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ctl.take()?.send(Ctl::Park(tx)).ok()?;
        rx.await.ok()
    }
}

/// The next control message; `None` once the handle is gone (and then
/// never again).
async fn next_ctl(ctl: &mut Option<tokio::sync::oneshot::Receiver<Ctl>>) -> Option<Ctl> {
    let Some(rx) = ctl.as_mut() else {
        return std::future::pending().await;
    };
    let r = rx.await.ok();
    *ctl = None;
    r
}

async fn run_pump(
    kind: PumpKind,
    from: tokio::io::unix::AsyncFd<OwnedFd>,
    to: tokio::io::unix::AsyncFd<OwnedFd>,
    mut pending: Vec<u8>,
    mut ctl: Option<tokio::sync::oneshot::Receiver<Ctl>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let ctl_msg = if pending.is_empty() {
            tokio::select! {
                biased;
                c = next_ctl(&mut ctl) => Some(c),
                r = from.readable() => {
                    let Ok(mut ready) = r else { return };
                    match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                        // EOF: the FIFO's last writer left. EIO (an error
                        // below): the terminal's last holder closed it.
                        Ok(Ok(0)) => return,
                        Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Ok(Err(_)) => return,
                        Err(_would_block) => {}
                    }
                    None
                }
            }
        } else {
            tokio::select! {
                biased;
                c = next_ctl(&mut ctl) => Some(c),
                r = to.writable() => {
                    let Ok(mut ready) = r else { return };
                    match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), &pending).map_err(Into::into)) {
                        Ok(Ok(n)) => {
                            pending.drain(..n);
                        }
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // EPIPE: the reading side is gone; nothing more to do.
                        Ok(Err(_)) => return,
                        Err(_would_block) => {}
                    }
                    None
                }
            }
        };
        match ctl_msg {
            None => {}
            Some(Some(Ctl::Park(reply))) => {
                let _ = reply.send(PumpState {
                    kind,
                    from: from.into_inner(),
                    to: to.into_inner(),
                    pending,
                });
                return;
            }
            // The handle was dropped.
            Some(None) if kind.stops_on_drop() => return,
            Some(None) => {}
        }
    }
}

/// A process's stdio, parked for a live swap: every descriptor, owned.
#[derive(Debug, Default)]
pub struct IoHandover {
    pub stdin: Option<PumpState>,
    pub keepalive: Vec<OwnedFd>,
    pub console: Option<Arc<OwnedFd>>,
    pub tty_in: Option<PumpState>,
    pub tty_out: Option<PumpState>,
}

/// [`IoHandover`] as the handover records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoFds {
    pub stdin: Option<PumpFds>,
    pub keepalive: Vec<RawFd>,
    pub console: Option<RawFd>,
    pub tty_in: Option<PumpFds>,
    pub tty_out: Option<PumpFds>,
}

impl ProcIo {
    /// Parks every pump; the process's stdio as descriptors.
    pub async fn park(self) -> IoHandover {
        let park = |p: Option<Pump>| async move {
            match p {
                Some(p) => p.park().await,
                None => None,
            }
        };
        IoHandover {
            stdin: park(self.stdin_stop).await,
            keepalive: self.output_keepalive,
            console: self.console,
            tty_in: park(self.copier_stop).await,
            tty_out: park(self.tty_out).await,
        }
    }
}

impl IoHandover {
    /// The descriptor numbers, for the handover; `all` receives every one.
    pub fn fds(&self, all: &mut Vec<RawFd>) -> IoFds {
        all.extend(self.keepalive.iter().map(|f| f.as_raw_fd()));
        all.extend(self.console.iter().map(|f| f.as_raw_fd()));
        IoFds {
            stdin: self.stdin.as_ref().map(|p| p.fds(all)),
            keepalive: self.keepalive.iter().map(|f| f.as_raw_fd()).collect(),
            console: self.console.as_ref().map(|f| f.as_raw_fd()),
            tty_in: self.tty_in.as_ref().map(|p| p.fds(all)),
            tty_out: self.tty_out.as_ref().map(|p| p.fds(all)),
        }
    }

    /// Takes ownership of inherited descriptors.
    ///
    /// # Safety
    /// Every descriptor in `f` must be open and owned by nothing else
    /// (inherited across `execve`, listed once in the handover).
    pub unsafe fn from_fds(f: IoFds) -> IoHandover {
        IoHandover {
            // SAFETY: per the function's contract.
            stdin: f.stdin.map(|p| unsafe { PumpState::from_fds(p) }),
            keepalive: f
                .keepalive
                .into_iter()
                // SAFETY: per the function's contract.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect(),
            // SAFETY: per the function's contract.
            console: f
                .console
                .map(|fd| Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })),
            // SAFETY: per the function's contract.
            tty_in: f.tty_in.map(|p| unsafe { PumpState::from_fds(p) }),
            // SAFETY: per the function's contract.
            tty_out: f.tty_out.map(|p| unsafe { PumpState::from_fds(p) }),
        }
    }

    /// Runs the pumps again: the process's stdio as it was.
    pub fn restore(self) -> Result<ProcIo> {
        let spawn = |p: Option<PumpState>| -> Result<Option<Pump>> {
            p.map(Pump::spawn)
                .transpose()
                .map_err(ShimError::io("restart a stdio pump"))
        };
        Ok(ProcIo {
            stdin_stop: spawn(self.stdin)?,
            output_keepalive: self.keepalive,
            console: self.console,
            copier_stop: spawn(self.tty_in)?,
            tty_out: spawn(self.tty_out)?,
        })
    }
}

/// Registers `fd` with the event loop of the current tokio runtime.
pub(crate) fn watch(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (open,
    // same descriptor) until the AsyncFd is dropped.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest)? })
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A FIFO path, `fifo://`-less, or a `file://` URI. `binary://` loggers
/// are not supported yet.
fn target(uri: &str) -> Result<(std::path::PathBuf, bool)> {
    if let Some(rest) = uri.strip_prefix("file://") {
        let path = rest.split('?').next().unwrap_or(rest);
        return Ok((path.into(), false));
    }
    if uri.starts_with("binary://") {
        return Err(ShimError::NotImplemented("the binary:// log driver"));
    }
    let path = std::path::PathBuf::from(uri);
    let is_fifo = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_fifo());
    Ok((path, is_fifo))
}

fn open_path(path: &Path, flags: libc::c_int) -> Result<OwnedFd> {
    let fd = husk_runtime::sys::open(path, flags | libc::O_CLOEXEC)
        .map_err(ShimError::io(format!("open {}", path.display())))?;
    if flags & libc::O_NONBLOCK != 0 {
        // Only the open had to be non-blocking.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
    }
    Ok(fd)
}

fn dev_null(flags: libc::c_int) -> Result<OwnedFd> {
    open_path(Path::new("/dev/null"), flags)
}

/// Starts the copiers of a terminal process: stdin FIFO -> master and
/// master -> stdout FIFO, two pumps. `keep` receives the master and the
/// pumps.
pub fn start_terminal(master: OwnedFd, stdin: &str, stdout: &str, keep: &mut ProcIo) -> Result<()> {
    set_nonblocking(&master).map_err(ShimError::io("set up the terminal's master"))?;
    let dup = |m: &OwnedFd| {
        m.try_clone()
            .map_err(ShimError::io("duplicate the terminal's master"))
    };
    if !stdout.is_empty() {
        let (path, is_fifo) = target(stdout)?;
        // Read-write: the open never waits for the client, and writes
        // never fail with EPIPE while the client is away.
        let out = if is_fifo {
            open_path(&path, libc::O_RDWR)?
        } else {
            open_path(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)?
        };
        let pump = Pump::spawn(PumpState {
            kind: PumpKind::TtyOut,
            from: dup(&master)?,
            to: out,
            pending: Vec::new(),
        });
        keep.tty_out = Some(pump.map_err(ShimError::io("start the terminal output copier"))?);
    }
    if !stdin.is_empty() {
        let fifo = open_path(Path::new(stdin), libc::O_RDWR)?;
        let pump = Pump::spawn(PumpState {
            kind: PumpKind::TtyIn,
            from: fifo,
            to: dup(&master)?,
            pending: Vec::new(),
        });
        keep.copier_stop = Some(pump.map_err(ShimError::io("start the terminal input copier"))?);
    }
    keep.console = Some(Arc::new(master));
    Ok(())
}

/// ResizePty.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    husk_runtime::console::set_size(master.as_raw_fd(), height as u16, width as u16)
        .map_err(|e| ShimError::Internal(format!("resize the terminal: {e}")))
}
