//! A private huskd (temp `--root`, `--state` and socket, started and
//! stopped by pid) and the `husk` CLI against it, for the `core_*` tests
//! and the huskd benchmarks.
//!
//! Drop removes every container the daemon still lists (`husk rm -f`),
//! then stops it (SIGTERM, then SIGKILL); the temp dir goes with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::command;
use crate::plugind;
use crate::runtime_bin::profile_dir_of;
use crate::ImageBuilder;

/// The name [`Huskd::import_busybox`] gives husk's busybox image.
pub const IMAGE: &str = "husk.test/busybox:latest";

/// `target/<profile>` of the running test or bench, where cargo put huskd,
/// husk and the shims; panics with a build instruction if they are missing.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = profile_dir_of(&exe);
    for bin in ["huskd", "husk", "containerd-shim-husk-v2"] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}: build it first (`cargo build --workspace`, or \
             `cargo build --release -p husk-core -p husk-shim` for benchmarks)",
            dir.display()
        );
    }
    dir
}

/// How to start a [`Huskd`].
#[derive(Clone, Debug)]
pub struct HuskdOptions {
    /// Extra huskd arguments (`--runtime NAME=BIN`, ...).
    pub args: Vec<String>,
    /// `--debug` logging (on for tests; benchmarks turn it off, since
    /// formatting debug lines is part of what they would time).
    pub debug: bool,
}

impl Default for HuskdOptions {
    fn default() -> Self {
        HuskdOptions {
            args: Vec::new(),
            debug: true,
        }
    }
}

/// A running private huskd. See the module docs.
pub struct Huskd {
    pub child: Option<Child>,
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    opts: HuskdOptions,
}

impl Huskd {
    /// A huskd on temp dirs, with debug logs.
    pub fn start() -> Huskd {
        Self::start_with(&[])
    }

    /// A huskd with extra arguments, with debug logs.
    pub fn start_with(extra: &[&str]) -> Huskd {
        Self::start_with_options(HuskdOptions {
            args: extra.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    pub fn start_with_options(opts: HuskdOptions) -> Huskd {
        let tmp = tempfile::Builder::new()
            .prefix("husk-coretest-")
            .tempdir()
            .unwrap();
        let mut d = Huskd {
            child: None,
            root: tmp.path().join("root"),
            state: tmp.path().join("state"),
            socket: tmp.path().join("huskd.sock"),
            tmp,
            opts,
        };
        d.spawn();
        d
    }

    /// Starts the daemon process (again) on the same directories.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(bin_dir().join("huskd"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(self.opts.debug.then_some("--debug"))
            .args(&self.opts.args)
            // Its shims start a plugin service of their own.
            .env(plugind::SOCKET_ENV, plugind::socket_in(self.tmp.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let _ = std::fs::remove_file(&self.socket);
        self.child = Some(cmd.spawn().expect("spawning huskd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("huskd exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "huskd did not serve {} in 20 s:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where huskd's stderr goes (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.tmp.path().join("huskd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("huskd runs").id()
    }

    /// `kill -9` of the daemon (by pid).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `husk ARGS` against this daemon.
    pub fn husk_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("husk"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    pub fn husk(&self, args: &[&str]) -> Output {
        command::output_timeout(&mut self.husk_cmd(args), Duration::from_secs(60))
    }

    /// `husk ARGS`, which must succeed; its stdout.
    pub fn husk_ok(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed: {}\nhuskd log:\n{}",
            command::format_output(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports husk's busybox image as [`IMAGE`].
    pub fn import_busybox(&self) {
        let tar = self.tmp.path().join("busybox.tar");
        if !tar.exists() {
            ImageBuilder::busybox().write_tar(&tar);
        }
        self.husk_ok(&["image", "import", "--name", IMAGE, tar.to_str().unwrap()]);
    }

    /// A container's record (`husk inspect`).
    pub fn inspect(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.husk_ok(&["inspect", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.inspect(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits until container `id` has `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id);
            if s == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} is {s}, not {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ids of every container huskd lists (`husk ps -a`).
    pub fn container_ids(&self) -> Vec<String> {
        let out = self.husk(&["ps", "-a", "--format", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .into_iter()
            .flatten()
            .filter_map(|c| c["id"].as_str().map(String::from))
            .collect()
    }

    /// The spare shims huskd lists (`husk shim ls --spares`): (the
    /// container id each will serve, its pid, its binary).
    pub fn spare_shims(&self) -> Vec<(String, u32, String)> {
        let out = self.husk_ok(&["--format", "json", "shim", "ls", "--spares"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .into_iter()
            .flatten()
            .filter(|s| s["spare"] == true)
            .filter_map(|s| {
                Some((
                    s["container"].as_str()?.to_string(),
                    s["pid"].as_u64()? as u32,
                    s["binary"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state.join("bundles").join(id)
    }

    pub fn root_path(&self) -> &Path {
        &self.root
    }
}

impl Drop for Huskd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Remove whatever the test left running, then stop the daemon.
            for id in self.container_ids() {
                let _ = self.husk(&["rm", "-f", &id]);
            }
            if let Some(mut c) = self.child.take() {
                // SAFETY: kill(2) on our own child's pid, which it still is
                // (not reaped yet).
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                if command::wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        plugind::stop(&plugind::socket_in(self.tmp.path()));
    }
}

/// Whether a process with this pid is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let rest = &s[s.rfind(')').unwrap() + 2..];
            !rest.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`, ...); `None` if
/// the process or the field is gone.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        let rss = proc_status_kb(std::process::id(), "VmRSS").expect("VmRSS of self");
        assert!(rss > 0);
        assert!(proc_status_kb(std::process::id(), "NoSuchField").is_none());
    }
}
