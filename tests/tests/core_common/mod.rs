//! Shared by the `core_*` tests: a private huskd (temp `--root`, `--state`
//! and socket, started and stopped by pid) and the `husk` CLI against it,
//! with husk's busybox image imported.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use husk_tests::command;
use husk_tests::runtime_bin::profile_dir_of;
use husk_tests::ImageBuilder;

pub const IMAGE: &str = "husk.test/busybox:latest";

/// `target/<profile>`, where cargo put huskd, husk and the shims.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = profile_dir_of(&exe);
    for bin in ["huskd", "husk", "containerd-shim-husk-v2"] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}: build it first (`cargo build --workspace`)",
            dir.display()
        );
    }
    dir
}

pub struct Huskd {
    pub child: Option<Child>,
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    extra: Vec<String>,
}

impl Huskd {
    /// A huskd on temp dirs.
    pub fn start() -> Huskd {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Huskd {
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
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// Starts the daemon process (again) on the same directories.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("huskd.log"))
            .unwrap();
        let mut cmd = Command::new(bin_dir().join("huskd"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--debug")
            .args(&self.extra)
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("huskd.log")).unwrap_or_default()
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
            let out = self.husk(&["ps", "-a", "--format", "json"]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                for c in v.as_array().into_iter().flatten() {
                    if let Some(id) = c["id"].as_str() {
                        let _ = self.husk(&["rm", "-f", id]);
                    }
                }
            }
            if let Some(mut c) = self.child.take() {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                if command::wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
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
