//! Locating the `husk-runtime` binary cargo built, and driving it (or any
//! runc-compatible CLI) with a private state root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

use crate::command;

/// Environment variable that overrides where `husk-runtime` is.
pub const HUSK_RUNTIME_BIN_ENV: &str = "HUSK_RUNTIME_BIN";

/// How long the drop cleanup waits for one `delete --force`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The `husk-runtime` binary: `$HUSK_RUNTIME_BIN` if set, otherwise the one
/// next to this test's profile directory. Test and bench executables live in
/// `target/<profile>/deps/`, the workspace's binaries in `target/<profile>/`.
///
/// Cargo does not build another package's binaries for `cargo test -p
/// husk-tests`; `cargo build --workspace` (or `scripts/test.sh`) does. The
/// path is returned whether or not it exists; see [`require_husk_runtime`].
pub fn husk_runtime_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(HUSK_RUNTIME_BIN_ENV) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    profile_dir_of(&exe).join("husk-runtime")
}

/// `target/<profile>` for an executable in `target/<profile>/deps/` (or in
/// `target/<profile>/` itself).
pub fn profile_dir_of(exe: &Path) -> PathBuf {
    let dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// [`husk_runtime_bin`], failing the test with a build instruction if the
/// binary is not there.
pub fn require_husk_runtime() -> PathBuf {
    let bin = husk_runtime_bin();
    if !bin.is_file() {
        panic!(
            "husk-runtime not found at {}: build it first (`cargo build --workspace`, \
             or `cargo build --release -p husk-runtime` for benchmarks; scripts/test.sh \
             does both), or point ${HUSK_RUNTIME_BIN_ENV} at it",
            bin.display()
        );
    }
    bin
}

/// A runc-compatible runtime CLI (`husk-runtime`, `runc`, `crun`) with a
/// private `--root` state directory.
///
/// On drop it runs `BIN --root ROOT delete --force ID` for every container
/// still in the root (each subdirectory, as in runc's layout), so a failing
/// test does not leak containers, cgroups or processes; the root is then
/// removed.
#[derive(Debug)]
pub struct HuskRuntime {
    bin: PathBuf,
    root: TempDir,
}

impl HuskRuntime {
    /// `husk-runtime` (see [`husk_runtime_bin`]); panics if it was not built.
    pub fn new() -> Self {
        Self::with_binary(require_husk_runtime())
    }

    /// Debian's `runc`, for comparing behaviour; panics if not installed.
    pub fn runc() -> Self {
        Self::with_binary(crate::host::require_command("runc"))
    }

    /// Any runc-compatible binary.
    pub fn with_binary(bin: impl Into<PathBuf>) -> Self {
        let root = tempfile::Builder::new()
            .prefix("husk-rt-root-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a runtime --root temp dir: {e}"));
        HuskRuntime {
            bin: bin.into(),
            root,
        }
    }

    /// The binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The `--root` state directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `BIN --root ROOT args...`, ready to adjust and run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(self.root.path()).args(args);
        c
    }

    /// Runs `BIN --root ROOT args...` with [`command::output`] (captured
    /// output, time limit); a non-zero exit is returned.
    pub fn output(&self, args: &[&str]) -> Output {
        command::output(&mut self.cmd(args))
    }

    /// Like [`HuskRuntime::output`], and panics with stdout and stderr unless
    /// the command exits 0.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        command::output_ok(&mut self.cmd(args))
    }

    /// `BIN --root ROOT run --bundle B ID` in the foreground; a non-zero
    /// exit is returned.
    pub fn run_bundle(&self, bundle: &crate::Bundle, id: &str) -> Output {
        self.output(&["run", "--bundle", bundle.path().to_str().unwrap(), id])
    }

    /// Like [`HuskRuntime::run_bundle`], and panics with stdout and stderr
    /// unless the container exits 0.
    pub fn run_bundle_ok(&self, bundle: &crate::Bundle, id: &str) -> Output {
        self.run_ok(&["run", "--bundle", bundle.path().to_str().unwrap(), id])
    }

    /// `create` that must fail: returns its stderr, after checking that
    /// nothing of the container is left (state, cgroup, mount, process).
    pub fn create_fails(&self, bundle: &crate::Bundle, id: &str) -> String {
        let out = self.output(&["create", "--bundle", bundle.path().to_str().unwrap(), id]);
        let err = command::stderr_text(&out);
        assert!(
            !out.status.success(),
            "create {id} succeeded; stderr: {err}"
        );
        assert!(
            self.container_ids().is_empty(),
            "state left behind: {:?}",
            self.container_ids()
        );
        crate::leaks::assert_no_leaks(id);
        err
    }

    /// `BIN --root ROOT state ID`, parsed.
    pub fn state(&self, id: &str) -> serde_json::Value {
        let out = self.run_ok(&["state", id]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "`{} state {id}` printed no JSON ({e}): {}",
                self.bin.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Ids of the containers in the root (its subdirectories).
    pub fn container_ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.path()) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }
}

impl Default for HuskRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HuskRuntime {
    fn drop(&mut self) {
        for id in self.container_ids() {
            let mut c = self.cmd(&["delete", "--force", &id]);
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            match c.spawn() {
                Ok(mut child) => {
                    if command::wait_timeout(&mut child, CLEANUP_TIMEOUT).is_none() {
                        let _ = child.kill();
                        let _ = child.wait();
                        eprintln!("husk-tests: `{}` hung; killed it", command::describe(&c));
                    }
                }
                Err(e) => eprintln!("husk-tests: cannot run `{}`: {e}", command::describe(&c)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_from_deps() {
        assert_eq!(
            profile_dir_of(Path::new("/w/target/debug/deps/harness-0123abcd")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            profile_dir_of(Path::new("/w/target/release/runner")),
            PathBuf::from("/w/target/release")
        );
    }

    #[test]
    fn cmd_prepends_root() {
        let rt = HuskRuntime::with_binary("/bin/true");
        let c = rt.cmd(&["state", "x"]);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, ["--root", &rt.root().to_string_lossy(), "state", "x"]);
    }

    #[test]
    fn drop_deletes_leftover_containers() {
        // A fake runtime that records the deletes it is asked for.
        let t = tempfile::Builder::new()
            .prefix("husk-fake-rt-")
            .tempdir()
            .unwrap();
        let log = t.path().join("log");
        let fake = t.path().join("fake-runtime");
        fs::write(
            &fake,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let rt = HuskRuntime::with_binary(&fake);
        fs::create_dir(rt.root().join("c1")).unwrap();
        fs::create_dir(rt.root().join("c2")).unwrap();
        fs::write(rt.root().join("not-a-container"), "").unwrap();
        let root = rt.root().to_path_buf();
        drop(rt);
        let logged = fs::read_to_string(&log).unwrap();
        let r = root.display();
        assert_eq!(
            logged,
            format!("--root {r} delete --force c1\n--root {r} delete --force c2\n")
        );
        assert!(!root.exists(), "the root temp dir was not removed");
    }
}
