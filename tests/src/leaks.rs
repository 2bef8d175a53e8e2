//! What a test may leave behind on the host: cgroups, mounts, processes.
//!
//! Tests call these after tearing down (`assert_no_leaks(&id)`);
//! `scripts/test.sh` checks the same things for everything named `husk`
//! after the whole suite.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How deep [`cgroup_dirs_matching`] looks below [`CGROUP_ROOT`]. Depth 1 is
/// a v1 controller (`memory`) or, on a pure v2 host, a top-level cgroup. On
/// this hybrid machine a runtime's relative cgroup lands at
/// `memory/<parent>/<parent>/<id>` (depth 4, and 5 under
/// `unified/...`), so look one level further than that.
pub const CGROUP_MAX_DEPTH: usize = 5;

/// Cgroup directories under [`CGROUP_ROOT`] (down to [`CGROUP_MAX_DEPTH`])
/// whose own name contains `name`.
pub fn cgroup_dirs_matching(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk_dirs(Path::new(CGROUP_ROOT), 1, CGROUP_MAX_DEPTH, &mut |p| {
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().contains(name))
        {
            found.push(p.to_path_buf());
        }
    });
    found.sort();
    found
}

fn walk_dirs(dir: &Path, depth: usize, max: usize, f: &mut impl FnMut(&Path)) {
    if depth > max {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return; // vanished or unreadable: nothing to report there
    };
    for e in entries.flatten() {
        // file_type() does not follow symlinks (v1 hosts have cpu -> cpu,cpuacct).
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk_dirs(&p, depth + 1, max, f);
        }
    }
}

/// Lines of `/proc/self/mountinfo` that contain `substr` (in any field: the
/// mount point, the root, the source).
pub fn mounts_matching(substr: &str) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    info.lines()
        .filter(|l| l.contains(substr) || unescape_mountinfo(l).contains(substr))
        .map(String::from)
        .collect()
}

/// Mount points (from `/proc/self/mountinfo`) at or below `dir`, deepest
/// first: the order to unmount them in.
pub fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let mut points = parse_mount_points(&info)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect::<Vec<_>>();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// The mount point (5th field) of each mountinfo line, unescaped.
pub fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A process found by [`processes_matching`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The command line, arguments joined with spaces.
    pub cmdline: String,
}

impl fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pid, self.cmdline)
    }
}

/// Processes (other than this one) whose command line contains `substr`.
/// Kernel threads and zombies (empty command lines) are not listed.
pub fn processes_matching(substr: &str) -> Vec<ProcessInfo> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<ProcessInfo> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            cmdline
                .contains(substr)
                .then_some(ProcessInfo { pid, cmdline })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// Everything that matches `name`: cgroup dirs, mounts and processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaks {
    pub cgroups: Vec<PathBuf>,
    pub mounts: Vec<String>,
    pub processes: Vec<ProcessInfo>,
}

impl Leaks {
    /// Looks for cgroup dirs, mounts and processes matching `name`.
    pub fn find(name: &str) -> Leaks {
        Leaks {
            cgroups: cgroup_dirs_matching(name),
            mounts: mounts_matching(name),
            processes: processes_matching(name),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty() && self.mounts.is_empty() && self.processes.is_empty()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cgroups {
            writeln!(f, "  cgroup:  {}", c.display())?;
        }
        for m in &self.mounts {
            writeln!(f, "  mount:   {m}")?;
        }
        for p in &self.processes {
            writeln!(f, "  process: {p}")?;
        }
        Ok(())
    }
}

/// Panics, listing them, if any cgroup dir, mount or process matches `name`
/// (typically a container id from [`crate::unique_id`]).
///
/// Cleanup may finish asynchronously (a shim reaping, the kernel releasing a
/// cgroup), so this retries for up to two seconds before failing.
pub fn assert_no_leaks(name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let leaks = Leaks::find(name);
        if leaks.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!("leaked after the test, matching {name:?}:\n{leaks}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The descriptors `pid` holds, as `fd -> target` lines (`3 -> socket:[123]`),
/// read once the set has stopped changing for 200 ms (or after 3 s): a
/// server closes a finished client's connection a moment after the client
/// has its answer, and that moment must not count as a leak.
pub fn settled_descriptors(pid: u32) -> Vec<String> {
    let read = || -> Vec<String> {
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        let mut fds: Vec<(u32, String)> = dir
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = fs::read_link(e.path()).ok()?;
                Some((fd, target.display().to_string()))
            })
            .collect();
        fds.sort();
        fds.into_iter()
            .map(|(fd, target)| format!("{fd} -> {target}"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut last = read();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = read();
        if now == last || std::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// `pid`'s unix stream connections whose peer has closed (`ss` shows the
/// peer inode as 0): a server that never noticed a client hang up, and
/// keeps its descriptor.
pub fn hung_up_connections(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-xpn", "state", "established"])
        .output()
        .expect("running ss (iproute2)");
    let owner = format!(",pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&owner))
        .filter(|l| {
            // ... Local Port  Peer Port  Process: the peer's port is the
            // second-to-last field before the process column.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[f.len() - 2] == "0" && f[f.len() - 3] == "*"
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
90 22 0:50 / /tmp/husk-ctd-1/state/rootfs rw - overlay overlay rw,lowerdir=/a
91 90 0:51 / /tmp/husk-ctd-1/state/rootfs/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_mount_points() {
        let points = parse_mount_points(MOUNTINFO);
        assert_eq!(
            points,
            [
                PathBuf::from("/"),
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/tmp/husk-ctd-1/state/rootfs"),
                PathBuf::from("/tmp/husk-ctd-1/state/rootfs/with space"),
            ]
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mountinfo("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape_mountinfo("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_mountinfo("plain"), "plain");
    }

    #[test]
    fn finds_a_child_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30.4242")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its cmdline is still this test's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = processes_matching("sleep 30.4242");
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = processes_matching("sleep 30.4242");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            found.iter().any(|p| p.pid == child.id()),
            "{found:?} lacks {}",
            child.id()
        );
    }

    #[test]
    fn nothing_matches_a_fresh_name() {
        let id = crate::unique_id("leakcheck");
        assert!(Leaks::find(&id).is_empty());
        assert_no_leaks(&id);
    }
}
