//! Running commands from tests: with a time limit, and with failures that show
//! the command line, the exit status, stdout and stderr.
//!
//! [`output`] also copes with commands that leave a daemon holding their
//! stdout/stderr (`runc run -d`, `ctr run -d`, a shim's `start`), where
//! `std::process::Command::output` would wait forever for end-of-file: once
//! the command itself has exited, its output is collected for a short grace
//! period and then returned as it is.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::thread;
use std::time::{Duration, Instant};

/// The time limit of [`output`] and [`output_ok`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long output is still collected after the command exited, for
/// grandchildren that inherited the pipes.
const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// `program arg1 arg2 ...` for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) with the
/// [`DEFAULT_TIMEOUT`]. Panics if it cannot be started or does not finish in
/// time (it is killed first); a non-zero exit is returned, not a panic.
pub fn output(cmd: &mut Command) -> Output {
    output_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Like [`output`], and panics unless the command exited 0.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    check_success(cmd, &out);
    out
}

/// Panics with the command line, status, stdout and stderr unless `out`
/// reports success.
pub fn check_success(cmd: &Command, out: &Output) {
    if !out.status.success() {
        panic!("`{}` failed: {}", describe(cmd), format_output(out));
    }
}

/// "exit status: 1\n--- stdout ---\n...\n--- stderr ---\n..." for messages.
/// A command's stdout as text (lossy).
pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr as text (lossy).
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn format_output(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe_status(out.status),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// "exit status: 1" or "killed by signal 9".
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status: {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// Runs `cmd` like [`output`] with an explicit time limit.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    try_output_timeout(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`output_timeout`], but returns failures to start or to finish in
/// time as `Err(message)` instead of panicking (for cleanup code in `Drop`,
/// where a panic during unwinding would abort).
pub fn try_output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", describe(cmd)))?;
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    // A blocking wait on a helper thread: the exit is seen at once (no
    // polling), which also keeps timings taken around this call exact.
    let pid = Pid::from_raw(child.id() as i32);
    let (exited_tx, exited) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = exited_tx.send(());
        status
    });
    let timed_out = exited.recv_timeout(timeout).is_err();
    if timed_out {
        // Not reaped yet (the waiter has not returned), so the pid is still ours.
        let _ = kill(pid, Signal::SIGKILL);
    }
    let status = waiter
        .join()
        .expect("the waiter thread does not panic")
        .map_err(|e| format!("waiting for `{}`: {e}", describe(cmd)))?;
    let out = Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    };
    if timed_out {
        return Err(format!(
            "`{}` did not finish within {timeout:?} and was killed: {}",
            describe(cmd),
            format_output(&out)
        ));
    }
    Ok(out)
}

/// Waits up to `timeout` for `child` to exit (polling every few
/// milliseconds); `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            // Already reaped elsewhere: there is nothing left to wait for.
            Err(_) => return Some(ExitStatus::from_raw(0)),
        }
    }
}

/// A pipe being read into a buffer by a background thread.
struct Collector {
    buf: Arc<Mutex<Vec<u8>>>,
    eof: mpsc::Receiver<()>,
}

fn collect(mut r: impl Read + Send + 'static) -> Collector {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = Arc::clone(&buf);
    let (eof_tx, eof) = mpsc::channel();
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b
                    .lock()
                    .expect("buffer lock")
                    .extend_from_slice(&chunk[..n]),
            }
        }
        let _ = eof_tx.send(());
    });
    Collector { buf, eof }
}

impl Collector {
    /// What was read: everything, or what arrived within [`DRAIN_GRACE`] if a
    /// grandchild still holds the pipe (its reader thread is then left behind).
    fn finish(self) -> Vec<u8> {
        let _ = self.eof.recv_timeout(DRAIN_GRACE);
        let out = self.buf.lock().expect("buffer lock").clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    #[should_panic(expected = "exit status: 3")]
    fn output_ok_reports_failure() {
        output_ok(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]));
    }

    #[test]
    #[should_panic(expected = "did not finish within")]
    fn times_out() {
        output_timeout(Command::new("sleep").arg("10"), Duration::from_millis(100));
    }

    #[test]
    fn does_not_wait_for_grandchildren_holding_the_pipe() {
        let start = Instant::now();
        // The background sleep inherits stdout and stderr and outlives sh.
        let out = output_ok(Command::new("sh").args(["-c", "sleep 2 & echo started"]));
        assert_eq!(out.stdout, b"started\n");
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "waited for the grandchild: {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn describes_commands() {
        let mut c = Command::new("ctr");
        c.args(["-a", "/x.sock", "version"]);
        assert_eq!(describe(&c), "ctr -a /x.sock version");
    }
}
