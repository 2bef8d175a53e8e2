//! Terminals: the container's pty, its controlling terminal, and handing
//! the master end to whoever asked through `--console-socket`.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Context, Error, Result};
use crate::sys;

/// Opens a new pty from the container's own devpts (/dev/ptmx) and returns
/// (master, slave). The slave is opened through the master (TIOCGPTPEER),
/// so no path in /dev/pts can be swapped under us.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd)> {
    let master = sys::open(Path::new("/dev/ptmx"), libc::O_RDWR | libc::O_NOCTTY)
        .context(|| "open /dev/ptmx: is devpts mounted at /dev/pts?".into())?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(std::io::Error::last_os_error()).context(|| "unlock pty".into());
    }
    // SAFETY: TIOCGPTPEER returns a new descriptor we then own.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error()).context(|| "open pty slave".into());
    }
    // SAFETY: slave was just returned by the kernel.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// The /dev/pts path of a pty slave, for bind-mounting it to /dev/console.
pub fn slave_path(slave: &OwnedFd) -> Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .context(|| "find the pty slave's path".into())
}

pub fn set_size(fd: RawFd, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error()).context(|| "set terminal size".into());
    }
    Ok(())
}

pub fn get_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize to a valid pointer.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Makes `slave` the controlling terminal and the stdio of this process.
/// The caller must already lead a new session.
pub fn attach_stdio(slave: &OwnedFd) -> Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(std::io::Error::last_os_error())
            .context(|| "make the pty the controlling terminal".into());
    }
    for target in 0..3 {
        sys::dup2(slave.as_raw_fd(), target).context(|| format!("dup pty onto fd {target}"))?;
    }
    Ok(())
}

/// Sends the pty master to the `--console-socket` listener, as runc does:
/// one message whose payload is a name and whose SCM_RIGHTS is the fd.
pub fn send_to_console_socket(socket: &Path, master: RawFd) -> Result<()> {
    let stream = UnixStream::connect(socket).map_err(|e| Error::Io {
        context: format!("connect to console socket {}", socket.display()),
        source: e,
    })?;
    let fds = [master];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context(|| format!("send the pty to console socket {}", socket.display()))?;
    Ok(())
}

/// Puts the terminal on `fd` into raw mode and restores it on drop, for
/// `husk-runtime run` attached to a user's terminal.
pub struct RawMode {
    fd: RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enter(fd: RawFd) -> Option<RawMode> {
        use nix::sys::termios;
        // SAFETY: fd is stdin, alive for the whole program.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let saved = termios::tcgetattr(borrowed).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(borrowed, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        let _ =
            nix::sys::termios::tcsetattr(borrowed, nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
