//! A private instance of the host's real containerd (Debian's 1.6).
//!
//! Everything it owns lives in a `husk-containerd-*` temp dir: `config.toml`,
//! `root/`, `state/`, `opt/`, the gRPC socket `containerd.sock`, the ttrpc
//! socket `containerd.sock.ttrpc` and `containerd.log`. It is started by hand
//! (no systemd), found by PID, and stopped by PID. containerd still creates
//! `/run/containerd/{s,fifo,runc}` (shim sockets live in `/run/containerd/s`),
//! which is shared with other instances and left alone.
//!
//! Drop deletes every task and container (so shims, container processes,
//! cgroups and rootfs mounts go away), stops containerd (SIGTERM, then
//! SIGKILL), kills any shim still pointing at this instance, unmounts what is
//! left under the temp dir and removes it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{command, host, leaks, plugind};

/// How long [`Containerd::start`] waits for `ctr version` to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits after SIGTERM before sending SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The time limit of [`Containerd::ctr`].
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start containerd.
#[derive(Clone, Debug, Default)]
pub struct ContainerdOptions {
    /// Leave the CRI plugin enabled (it is disabled by default: it is slow to
    /// start and needs CNI). It gets a private CNI config dir
    /// (`cni/net.d`, empty: pods must use the node's network) and a stream
    /// server on a free loopback port, so instances do not collide.
    pub enable_cri: bool,
    /// With `enable_cri`: the CRI plugin's `sandbox_image`, the image each
    /// pod's sandbox ("pause") container runs. It must be imported into the
    /// `k8s.io` namespace ([`Containerd::import_image_into`]); empty keeps
    /// containerd's default, which is pulled from a registry.
    pub cri_sandbox_image: String,
    /// TOML appended to the generated `config.toml`, e.g. runtime entries:
    /// `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]`.
    pub extra_config: String,
    /// Directories searched first for binaries containerd runs (shims
    /// `containerd-shim-<name>-v2`, runtimes), e.g. `target/debug`.
    pub path_prepend: Vec<PathBuf>,
    /// `[debug] level` ("info" if empty).
    pub log_level: String,
}

/// A running private containerd. See the module docs.
#[derive(Debug)]
pub struct Containerd {
    dir: TempDir,
    opts: ContainerdOptions,
    child: Option<Child>,
    containerd_bin: PathBuf,
    ctr_bin: PathBuf,
}

impl Containerd {
    /// Starts containerd with the default [`ContainerdOptions`]. Panics (with
    /// containerd's log) if it does not answer within [`START_TIMEOUT`], and
    /// with install instructions if containerd or ctr is missing.
    pub fn start() -> Containerd {
        Self::start_with(ContainerdOptions::default())
    }

    /// Starts containerd with `opts`.
    pub fn start_with(opts: ContainerdOptions) -> Containerd {
        let containerd_bin = host::require_command("containerd");
        let ctr_bin = host::require_command("ctr");
        let dir = tempfile::Builder::new()
            .prefix("husk-containerd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating containerd's temp dir: {e}"));
        let mut c = Containerd {
            dir,
            opts,
            child: None,
            containerd_bin,
            ctr_bin,
        };
        fs::write(c.config_path(), c.config_toml())
            .unwrap_or_else(|e| panic!("writing {}: {e}", c.config_path().display()));
        c.spawn();
        c
    }

    /// The generated `config.toml`.
    pub fn config_toml(&self) -> String {
        let d = self.dir.path().display();
        let disabled = if self.opts.enable_cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\""
        };
        let level = if self.opts.log_level.is_empty() {
            "info"
        } else {
            &self.opts.log_level
        };
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  level = "{level}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{cri}
{extra}
"#,
            cri = self.cri_config_toml(),
            extra = self.opts.extra_config
        )
    }

    /// The CRI plugin's section of `config.toml` (empty unless
    /// `enable_cri`). Runtime handlers are not here: they come with
    /// `extra_config`, as the `[...cri".containerd.runtimes.NAME]` tables of
    /// examples/containerd/config.toml.
    fn cri_config_toml(&self) -> String {
        if !self.opts.enable_cri {
            return String::new();
        }
        let d = self.dir.path().display();
        let sandbox_image = if self.opts.cri_sandbox_image.is_empty() {
            String::new()
        } else {
            format!("  sandbox_image = \"{}\"\n", self.opts.cri_sandbox_image)
        };
        // The CRI plugin gives sandboxes oom_score_adj -998 (and kubelet
        // gives Guaranteed pods -997). Lowering it needs CAP_SYS_RESOURCE,
        // which some hosts (CI sandboxes) withhold even from root: there
        // every runtime, runc included, fails the write with EACCES. On such
        // a host, containerd's own option for the case clamps the values at
        // containerd's own score instead.
        let restrict_oom = !has_cap_sys_resource();
        format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
{sandbox_image}  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = {restrict_oom}

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni/net.d"
"#
        )
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The gRPC socket (`ctr -a`, `CONTAINERD_ADDRESS`).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The ttrpc socket shims publish events to (`TTRPC_ADDRESS`).
    pub fn ttrpc_address(&self) -> PathBuf {
        self.dir.path().join("containerd.sock.ttrpc")
    }

    /// containerd's `root` directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's `state` directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The config file containerd was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Where containerd's stdout and stderr go (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// containerd's PID, if it was started and not stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether containerd is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `ctr -a SOCK` in the `default` namespace, to add arguments to.
    pub fn ctr_cmd(&self) -> Command {
        let mut c = Command::new(&self.ctr_bin);
        c.arg("-a")
            .arg(self.address())
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_ADDRESS");
        c
    }

    /// Runs `ctr -a SOCK args...` with captured output and a time limit of
    /// [`CTR_TIMEOUT`]; a non-zero exit is returned, not a panic.
    pub fn ctr(&self, args: &[&str]) -> Output {
        command::output_timeout(self.ctr_cmd().args(args), CTR_TIMEOUT)
    }

    /// Like [`Containerd::ctr`], but panics (with ctr's output and the tail
    /// of containerd's log) unless it exits 0; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.ctr_cmd();
        cmd.args(args);
        let out = command::output_timeout(&mut cmd, CTR_TIMEOUT);
        if !out.status.success() {
            panic!(
                "`{}` failed: {}\n--- containerd log (tail) ---\n{}",
                command::describe(&cmd),
                command::format_output(&out),
                tail(&self.log(), 40)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the test busybox image as a layout tar into `scratch` and
    /// imports it as `husk.test/busybox:latest`.
    pub fn import_busybox(&self, scratch: &Path) {
        let tar = scratch.join("busybox.tar");
        crate::ImageBuilder::busybox().write_tar(&tar);
        self.import_image(&tar, "husk.test/busybox");
    }

    /// Imports an OCI layout tar with `ctr image import --base-name NAME`;
    /// the image is then `NAME:<ref name>`. Returns ctr's output.
    pub fn import_image(&self, layout_tar: &Path, base_name: &str) -> String {
        self.import_image_into("default", layout_tar, base_name)
    }

    /// [`Containerd::import_image`] into containerd namespace `namespace`
    /// (the CRI plugin's images live in `k8s.io`).
    pub fn import_image_into(&self, namespace: &str, layout_tar: &Path, base_name: &str) -> String {
        let tar = layout_tar.to_string_lossy();
        self.ctr_ok(&[
            "-n",
            namespace,
            "image",
            "import",
            "--base-name",
            base_name,
            &tar,
        ])
    }

    /// SIGKILLs containerd (shims and containers keep running) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops containerd: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    /// Shims and containers keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            if command::wait_timeout(&mut child, STOP_TIMEOUT).is_none() {
                eprintln!(
                    "husk-tests: containerd {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                    child.id()
                );
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Starts containerd again on the same root, state and sockets (stopping
    /// it first if it runs). It reconnects to the shims that outlived it.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts containerd and waits until it answers; never panics (Drop uses
    /// it too).
    fn try_spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "containerd is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening {}: {e}", self.log_path().display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("duplicating the log fd: {e}"))?;
        // A stale socket from a killed instance would look ready.
        let _ = fs::remove_file(self.address());
        let prepend: Vec<&Path> = self
            .opts
            .path_prepend
            .iter()
            .map(PathBuf::as_path)
            .collect();
        let mut cmd = Command::new(&self.containerd_bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .env("PATH", host::path_with(&prepend))
            // Its shims start a plugin service of their own.
            .env(plugind::SOCKET_ENV, plugind::socket_in(self.dir.path()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. If the test process dies without
        // running Drop (SIGKILL on a timeout), containerd dies with it instead
        // of outliving the test. (PDEATHSIG fires when the spawning *thread*
        // exits: keep a Containerd on the thread that started it.)
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", command::describe(&cmd)))?;
        self.child = Some(child);
        self.wait_ready()?;
        if self.opts.enable_cri {
            self.check_cri_loaded()?;
        }
        Ok(())
    }

    /// containerd boots without a plugin that failed to load (it only logs a
    /// warning): make a broken CRI config fail here, with the reason.
    fn check_cri_loaded(&mut self) -> Result<(), String> {
        let out = command::try_output_timeout(
            self.ctr_cmd().args(["plugins", "ls"]),
            Duration::from_secs(10),
        )?;
        let listing = String::from_utf8_lossy(&out.stdout);
        let cri = listing
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("cri"));
        if cri.is_some_and(|l| l.split_whitespace().last() == Some("ok")) {
            return Ok(());
        }
        let reason = self
            .log()
            .lines()
            .rfind(|l| l.contains("failed to load plugin io.containerd.grpc.v1.cri"))
            .unwrap_or("(no reason in containerd's log)")
            .to_string();
        self.kill9();
        Err(format!(
            "containerd's CRI plugin did not load: {}\n{reason}\n--- config.toml ---\n{}",
            cri.unwrap_or("(not listed by `ctr plugins ls`)"),
            self.config_toml()
        ))
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!(
                    "containerd exited during startup ({}):\n{}",
                    command::describe_status(status),
                    tail(&self.log(), 60)
                ));
            }
            if self.address().exists() {
                match command::try_output_timeout(
                    self.ctr_cmd().args(["version"]),
                    Duration::from_secs(10),
                ) {
                    Ok(out) if out.status.success() => return Ok(()),
                    Ok(out) => last = command::format_output(&out),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "containerd did not answer `ctr version` within {START_TIMEOUT:?}; last try: \
                     {last}\n--- containerd log (tail) ---\n{}",
                    tail(&self.log(), 60)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Task directories containerd keeps for live shims:
    /// `state/io.containerd.runtime.v2.task/<namespace>/<id>`.
    fn task_dirs(&self) -> Vec<PathBuf> {
        let base = self.state().join("io.containerd.runtime.v2.task");
        let mut dirs = Vec::new();
        for ns in fs::read_dir(base).into_iter().flatten().flatten() {
            for t in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                dirs.push(t.path());
            }
        }
        dirs
    }

    /// Best effort: delete every task and container in every namespace.
    fn remove_everything(&self) {
        let lines = |out: Output| -> Vec<String> {
            if !out.status.success() {
                return Vec::new();
            }
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        };
        let quick = Duration::from_secs(30);
        let ctr = |args: &[&str]| {
            command::try_output_timeout(self.ctr_cmd().args(args), quick).unwrap_or_else(|e| {
                eprintln!("husk-tests: cleanup: {e}");
                Output {
                    status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                }
            })
        };
        for ns in lines(ctr(&["namespaces", "ls", "-q"])) {
            for task in lines(ctr(&["-n", &ns, "tasks", "ls", "-q"])) {
                let _ = ctr(&["-n", &ns, "tasks", "kill", "-a", "-s", "SIGKILL", &task]);
                let _ = ctr(&["-n", &ns, "tasks", "delete", "--force", &task]);
            }
            for c in lines(ctr(&["-n", &ns, "containers", "ls", "-q"])) {
                let _ = ctr(&["-n", &ns, "containers", "rm", &c]);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A killed containerd is brought back if shims outlived it, so that
        // it can delete their tasks properly.
        if !self.is_running() && !self.task_dirs().is_empty() {
            self.child = None;
            if let Err(e) = self.try_spawn() {
                eprintln!("husk-tests: could not restart containerd to clean up its tasks: {e}");
            }
        }
        if self.is_running() {
            self.remove_everything();
        }
        self.stop();
        // Last resort: shims still serving this instance.
        let address = self.address().to_string_lossy().into_owned();
        for p in leaks::processes_matching(&address) {
            eprintln!("husk-tests: killing leftover shim {p}");
            let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
        }
        plugind::stop(&plugind::socket_in(self.dir.path()));
        for m in leaks::mount_points_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        // TempDir's drop removes the directory.
    }
}

/// `CAP_SYS_RESOURCE` in linux/capability.h (the libc crate has no
/// capability numbers).
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has CAP_SYS_RESOURCE in its effective set (from
/// `CapEff` in /proc/self/status).
pub fn has_cap_sys_resource() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
