//! The plugin service (`husk-plugind`) in tests.
//!
//! Shims start the service on demand on the socket named by
//! `$HUSK_PLUGIND_SOCKET`. Every [`Huskd`](crate::huskd::Huskd) and
//! [`Containerd`](crate::Containerd) gives its shims a socket of its own,
//! in its temp dir ([`socket_in`]), and stops the daemon they started when
//! it is dropped ([`stop`]), so tests never share a daemon nor leave one
//! behind. [`Plugind`] runs one directly, for protocol tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::leaks::{processes_matching, ProcessInfo};
use crate::runtime_bin::profile_dir_of;

pub const SOCKET_ENV: &str = "HUSK_PLUGIND_SOCKET";
pub const BINARY: &str = "husk-plugind";

/// The socket for the shims of an instance whose temp dir is `dir`.
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("plugind").join("plugind.sock")
}

/// The daemon's log beside `socket` (every daemon started there appends).
pub fn log_of(socket: &Path) -> PathBuf {
    socket.with_extension("log")
}

pub fn log(socket: &Path) -> String {
    std::fs::read_to_string(log_of(socket)).unwrap_or_default()
}

/// `target/<profile>/husk-plugind`; panics with a build instruction if
/// missing.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let bin = profile_dir_of(&exe).join(BINARY);
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// The husk-plugind processes serving `socket`.
pub fn daemons(socket: &Path) -> Vec<ProcessInfo> {
    processes_matching(&format!("--socket {}", socket.display()))
        .into_iter()
        .filter(|p| p.cmdline.contains(BINARY))
        .collect()
}

/// Whether `pid` is alive (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    crate::huskd::alive(pid)
}

/// Stops every daemon serving `socket` (SIGTERM, then SIGKILL after 5 s)
/// and waits until they are gone.
pub fn stop(socket: &Path) {
    for p in daemons(socket) {
        signal(p.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(p.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if alive(p.pid) {
            eprintln!(
                "husk-tests: husk-plugind {} ignored SIGTERM; killing it",
                p.pid
            );
            signal(p.pid, libc::SIGKILL);
            while alive(p.pid) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid just read from /proc; at worst it is gone.
    unsafe { libc::kill(pid as i32, sig) };
}

/// A husk-plugind started by the test on a socket of its own, stopped on
/// drop.
pub struct Plugind {
    pub child: Child,
    pub socket: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl Plugind {
    /// Starts the daemon with `args` (e.g. `--idle-timeout 1`) and waits
    /// until it serves.
    pub fn start(args: &[&str]) -> Plugind {
        let tmp = tempfile::Builder::new()
            .prefix("husk-plugind-")
            .tempdir()
            .unwrap();
        let socket = socket_in(tmp.path());
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let log = std::fs::File::create(log_of(&socket)).unwrap();
        let child = Command::new(binary())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning husk-plugind");
        let mut d = Plugind { child, socket, tmp };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("husk-plugind exited ({st}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "husk-plugind did not serve {} in 10 s",
                d.socket.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    pub fn log(&self) -> String {
        log(&self.socket)
    }
}

impl Drop for Plugind {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        if crate::command::wait_timeout(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
