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
//! With a terminal the process gets a pty; two threads copy stdin FIFO →
//! master and master → stdout FIFO.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use husk_runtime::ProcessIo;

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
        let (reader, stop) = pump_stdin(Path::new(stdin))?;
        keep.stdin_stop = Some(stop);
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
/// the pipe's read end (for the process) and the pump's stop handle.
///
/// The pump (a task on the shim's event loop, no thread) holds the pipe's
/// write end, so the process's reads block until input comes, and closes
/// it when the FIFO's last writer hangs up (the client's stdin ended, like
/// runc's shim: `echo data | ctr run ... cat` ends even though ctr sends
/// no CloseIO when its stdin ends before the task exists), on CloseIO, or
/// when the process exits (dropping the handle).
///
/// A FIFO opened for reading with `O_NONBLOCK` reports no hangup until a
/// writer has come and gone, so the pump waits for the client to connect.
fn pump_stdin(path: &Path) -> Result<(OwnedFd, tokio::sync::oneshot::Sender<()>)> {
    let fifo = open_path(path, libc::O_RDONLY | libc::O_NONBLOCK)?;
    set_nonblocking(&fifo)?;
    let (pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create the stdin pipe")(e.into()))?;
    set_nonblocking(&pipe_w)?;
    let fifo = watch(fifo, tokio::io::Interest::READABLE)
        .map_err(ShimError::io(format!("watch {}", path.display())))?;
    let pipe_w = watch(pipe_w, tokio::io::Interest::WRITABLE)
        .map_err(ShimError::io("watch the stdin pipe"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = stopped => {}
            _ = pump(fifo, pipe_w) => {}
        }
    });
    Ok((pipe_r, stop))
}

/// FIFO → pipe until EOF (the last writer left) or the process's end of
/// the pipe is gone. Dropping `to` closes the process's stdin.
async fn pump(from: tokio::io::unix::AsyncFd<OwnedFd>, to: tokio::io::unix::AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = loop {
            let Ok(mut ready) = from.readable().await else {
                return;
            };
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => break n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let Ok(mut ready) = to.writable().await else {
                return;
            };
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(Ok(w)) => data = &data[w..],
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EPIPE: the process closed its stdin; nothing more to do.
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

/// Registers `fd` with the event loop of the current tokio runtime.
fn watch(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (open,
    // same descriptor) until the AsyncFd is dropped.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest)? })
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map(drop)
    .map_err(|e| ShimError::io("make a descriptor non-blocking")(e.into()))
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

/// Starts the copiers of a terminal process. `keep` receives the master
/// and the stop handle of the stdin copier.
pub fn start_terminal(master: OwnedFd, stdin: &str, stdout: &str, keep: &mut ProcIo) -> Result<()> {
    let master = Arc::new(master);
    if !stdout.is_empty() {
        let (path, _) = target(stdout)?;
        let m = Arc::clone(&master);
        std::thread::Builder::new()
            .name("pty-out".into())
            .spawn(move || {
                // Blocks until the client opens its end.
                let out = match open_path(&path, libc::O_WRONLY) {
                    Ok(fd) => File::from(fd),
                    Err(e) => return tracing::warn!("terminal output: {e}"),
                };
                copy(m.as_raw_fd(), out);
            })
            .map_err(ShimError::io("start the terminal output copier"))?;
    }
    if !stdin.is_empty() {
        let fifo = open_path(Path::new(stdin), libc::O_RDWR)?;
        let (stop_rd, stop_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ShimError::io("create a pipe")(e.into()))?;
        let m = Arc::clone(&master);
        std::thread::Builder::new()
            .name("pty-in".into())
            .spawn(move || copy_stdin(fifo, stop_rd, m))
            .map_err(ShimError::io("start the terminal input copier"))?;
        keep.copier_stop = Some(stop_wr);
    }
    keep.console = Some(master);
    Ok(())
}

/// master → output until the pty closes (EIO once the last slave is gone).
fn copy(master: i32, mut out: File) {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is a valid buffer of its length; master stays open
        // (the Arc is held by this thread's closure).
        let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 || out.write_all(&buf[..n as usize]).is_err() {
            return;
        }
    }
}

/// stdin FIFO → master, until `stop` is closed by the shim.
fn copy_stdin(fifo: OwnedFd, stop: OwnedFd, master: Arc<OwnedFd>) {
    let mut fifo = File::from(fifo);
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: fifo.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        match fifo.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut m = File::from(match master.try_clone() {
                    Ok(fd) => fd,
                    Err(_) => return,
                });
                if m.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// ResizePty.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    husk_runtime::console::set_size(master.as_raw_fd(), height as u16, width as u16)
        .map_err(|e| ShimError::Internal(format!("resize the terminal: {e}")))
}
