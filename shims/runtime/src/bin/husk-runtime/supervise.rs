//! Foreground `run` and `exec`: stay with the container's process, forward
//! signals to it, proxy its terminal, and exit with its status.
//!
//! The runtime becomes a child subreaper first: the container's process is
//! forked by the init's intermediate process, which exits, so the process
//! is reparented to us and we can wait for it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use husk_runtime::console::{self, RawMode};
use husk_runtime::container::{CreateOptions, ExecOptions, Runtime};
use husk_runtime::error::{Context, Result};
use husk_runtime::sys;
use oci_spec::runtime::Process;

/// Signals a foreground runtime passes on to the container.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

fn block_signals() -> Result<Vec<libc::c_int>> {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    sys::set_signal_mask(libc::SIG_BLOCK, &all).context(|| "block signals".into())?;
    Ok(all)
}

pub fn run(rt: &Runtime, id: &str, opts: CreateOptions, detach: bool, keep: bool) -> Result<i32> {
    if !detach {
        sys::set_child_subreaper().context(|| "become a child subreaper".into())?;
    }
    let signals = block_signals()?;
    let started = rt.create(id, opts)?;
    if let Err(e) = rt.start(id) {
        let _ = rt.delete(id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let status = wait_forwarding(started.pid, started.console_master, &signals);
    if !keep {
        rt.delete(id, true)?;
    }
    status
}

pub fn exec(
    rt: &Runtime,
    id: &str,
    process: &Process,
    opts: ExecOptions,
    detach: bool,
) -> Result<i32> {
    if !detach {
        sys::set_child_subreaper().context(|| "become a child subreaper".into())?;
    }
    let signals = block_signals()?;
    let started = rt.exec(id, process, opts)?;
    if detach {
        return Ok(0);
    }
    wait_forwarding(started.pid, started.console_master, &signals)
}

/// Waits for `pid`, forwarding signals; reaps every other orphan that lands
/// on us meanwhile.
fn wait_forwarding(
    pid: i32,
    console_master: Option<OwnedFd>,
    signals: &[libc::c_int],
) -> Result<i32> {
    let tty = console_master.map(|m| TtyProxy::start(m, pid));
    loop {
        let signal = sys::wait_signal(signals, 100).context(|| "wait for signals".into())?;
        match signal {
            Some(libc::SIGWINCH) => {
                if let Some(t) = &tty {
                    t.resize();
                }
            }
            Some(s) if s != libc::SIGCHLD => {
                let _ = sys::kill(pid, s);
            }
            _ => {}
        }
        while let Some((reaped, exit)) = sys::waitpid(-1, true).unwrap_or(None) {
            if reaped == pid {
                if let Some(t) = tty {
                    t.finish();
                }
                return Ok(exit.status());
            }
        }
    }
}

/// Copies between the user's terminal and the container's pty.
struct TtyProxy {
    master: std::sync::Arc<std::fs::File>,
    output: std::thread::JoinHandle<()>,
    _raw: Option<RawMode>,
}

impl TtyProxy {
    fn start(master: OwnedFd, _pid: i32) -> TtyProxy {
        let raw = RawMode::enter(0);
        let master = std::sync::Arc::new(std::fs::File::from(master));
        let proxy_resize_fd = master.as_raw_fd();
        if let Some((rows, cols)) = console::get_size(0) {
            let _ = console::set_size(proxy_resize_fd, rows, cols);
        }
        let input = master.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || (&*input).write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let out = master.clone();
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = std::io::stdout();
            // Reading the master fails with EIO once the container's side closes.
            while let Ok(n) = (&*out).read(&mut buf) {
                if n == 0
                    || stdout
                        .write_all(&buf[..n])
                        .and_then(|_| stdout.flush())
                        .is_err()
                {
                    break;
                }
            }
        });
        TtyProxy {
            master,
            output,
            _raw: raw,
        }
    }

    fn resize(&self) {
        if let Some((rows, cols)) = console::get_size(0) {
            let _ = console::set_size(self.master.as_raw_fd(), rows, cols);
        }
    }

    fn finish(self) {
        let _ = self.output.join();
    }
}
