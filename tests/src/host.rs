//! Facts about the host the tests run on: are we root, where are the tools.

use std::path::{Path, PathBuf};

/// Directories searched after `$PATH`: root's tools (runc lives in /usr/sbin)
/// are not on every user's `$PATH`.
const EXTRA_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Whether the effective user is root. Most integration tests need it.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The effective user id.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Returns from the calling test, after printing a `SKIP:` line naming the
/// test (libtest names the test's thread after it), its file and line,
/// unless the effective user is root.
///
/// This is the only reason a husk integration test may skip itself; a missing
/// tool is a failure (see [`require_command`]). The line goes straight to the
/// process's stderr: `cargo test` shows it, nextest shows it with
/// `--success-output immediate`.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::host::is_root() {
            // Straight to fd 2, past libtest's capture, so `cargo test` shows it.
            use ::std::io::Write as _;
            let _ = writeln!(
                ::std::io::stderr(),
                "SKIP: {} ({}:{}): this test needs root (euid is {}); run it as root, e.g. via scripts/test.sh",
                ::std::thread::current().name().unwrap_or("?"),
                file!(),
                line!(),
                $crate::host::euid()
            );
            return;
        }
    };
}

/// The full path of the executable `name`, searched in `$PATH` and then in the
/// usual system directories.
pub fn find_command(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_PATH.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Like [`find_command`], but a missing tool fails the test with a message
/// saying how to install it.
pub fn require_command(name: &str) -> PathBuf {
    find_command(name).unwrap_or_else(|| {
        panic!(
            "`{name}` was not found in $PATH or {EXTRA_PATH:?}: the integration tests need it. \
             Run scripts/install-deps.sh (as root) to install everything the tests use."
        )
    })
}

/// A `$PATH` value: `first` directories, then the caller's `$PATH`, then the
/// usual system directories. For children (containerd, shims) that must find
/// both husk's freshly built binaries and the system's tools.
pub fn path_with(first: &[&Path]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = first
        .iter()
        .map(|p| p.to_path_buf())
        .chain(std::env::split_paths(&current))
        .chain(EXTRA_PATH.iter().map(PathBuf::from))
        .collect();
    std::env::join_paths(dirs).expect("PATH entries contain no ':'")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Brings up `lo` in the network namespace of process `pid`, as the host
/// (or CNI) grants a container its network: the container itself may lack
/// CAP_NET_ADMIN.
pub fn bring_up_loopback_of(pid: u32) {
    crate::command::output_ok(std::process::Command::new("nsenter").args([
        "-t",
        &pid.to_string(),
        "-n",
        "ip",
        "link",
        "set",
        "lo",
        "up",
    ]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh() {
        let sh = find_command("sh").expect("sh is on every Debian machine");
        assert!(sh.is_absolute());
        assert!(find_command("husk-no-such-command-xyz").is_none());
    }

    #[test]
    #[should_panic(expected = "scripts/install-deps.sh")]
    fn missing_command_says_how_to_install() {
        require_command("husk-no-such-command-xyz");
    }

    #[test]
    fn path_with_puts_first_dirs_first() {
        let p = path_with(&[Path::new("/opt/husk-first")]);
        let dirs: Vec<PathBuf> = std::env::split_paths(&p).collect();
        assert_eq!(dirs[0], PathBuf::from("/opt/husk-first"));
        assert!(dirs.contains(&PathBuf::from("/usr/sbin")));
    }
}
