//! Keeping the kernel's cgroup migration lock warm while containers are
//! being created.
//!
//! Every write to a `cgroup.procs` file takes the global
//! `cgroup_threadgroup_rwsem` for writing, and taking it waits for an RCU
//! grace period (13-16 ms on this project's machines) unless another writer
//! took it within about one grace period before. A runtime writes
//! `cgroup.procs` while it creates a container, so without help that wait
//! lands in the middle of every create (docs/architecture.md, "Speed").
//!
//! Husk's own runtime no longer writes `cgroup.procs` (it starts the
//! container's first process inside its cgroup), so creates served by a
//! spare shim, which is always one of husk's, do not hold the warm-up: its
//! first write holds the kernel's cgroup mutex for a whole grace period and
//! would only delay their cgroup mkdirs. Other creates (runc's shim, or no
//! spare at hand) hold it.
//!
//! While at least one create is in flight ([`hold`]), a thread of huskd
//! writes its own pid to its own cgroup's `cgroup.procs` every few
//! milliseconds: a migration to where it already is, which changes nothing
//! but keeps the lock in its fast state. The first such write pays the
//! grace period, on this thread, while huskd mounts the rootfs and starts
//! the shim; the runtime's writes that follow do not wait. With no create in
//! flight, the thread sleeps and writes nothing.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How often the lock is retaken while a create is in flight: well inside
/// the one grace period it stays fast after a writer.
const INTERVAL: Duration = Duration::from_millis(5);

struct Warmer {
    /// Creates in flight.
    active: Mutex<usize>,
    wake: Condvar,
}

fn warmer() -> &'static Warmer {
    static W: OnceLock<&'static Warmer> = OnceLock::new();
    W.get_or_init(|| {
        let w: &'static Warmer = Box::leak(Box::new(Warmer {
            active: Mutex::new(0),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("cgroup-warm".into())
            .spawn(move || w.run());
        if let Err(e) = spawned {
            tracing::debug!(%e, "no cgroup warm-up thread; creates pay the cgroup lock's wait");
        }
        w
    })
}

impl Warmer {
    fn run(&self) {
        loop {
            {
                let mut active = self.active.lock().unwrap();
                while *active == 0 {
                    active = self.wake.wait(active).unwrap();
                }
            }
            if let Err(e) = migrate_to_own_cgroup() {
                tracing::debug!(%e, "cgroup warm-up write failed; stopping warm-ups");
                return;
            }
            std::thread::sleep(INTERVAL);
        }
    }
}

/// Keeps the cgroup lock warm until dropped.
pub struct Hold(());

/// Keeps the cgroup lock warm while the returned guard lives (a create in
/// flight).
pub fn hold() -> Hold {
    let w = warmer();
    *w.active.lock().unwrap() += 1;
    w.wake.notify_one();
    Hold(())
}

impl Drop for Hold {
    fn drop(&mut self) {
        let w = warmer();
        let mut active = w.active.lock().unwrap();
        *active = active.saturating_sub(1);
    }
}

/// Writes this process's pid to the `cgroup.procs` of the cgroup it is
/// already in (one hierarchy is enough: the lock is global).
fn migrate_to_own_cgroup() -> std::io::Result<()> {
    let procs = own_cgroup_procs()?;
    std::fs::write(&procs, std::process::id().to_string())
}

/// `cgroup.procs` of this process's cgroup: in the cgroup2 hierarchy if it
/// is mounted, else in the first mounted v1 hierarchy.
fn own_cgroup_procs() -> std::io::Result<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    find_procs(&cgroups, &mountinfo).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no mounted cgroup hierarchy holds this process",
        )
    })
}

/// The pure part of [`own_cgroup_procs`].
fn find_procs(cgroups: &str, mountinfo: &str) -> Option<PathBuf> {
    // (mount point, mount root, fstype, super options)
    let mounts: Vec<(&str, &str, &str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some((*pre.get(4)?, *pre.get(3)?, *post.first()?, *post.get(2)?))
        })
        .filter(|m| m.2 == "cgroup" || m.2 == "cgroup2")
        .collect();
    let entries = cgroups.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        Some((controllers, path))
    });
    let mut v1 = None;
    for (controllers, path) in entries {
        let mount = if controllers.is_empty() {
            mounts.iter().find(|m| m.2 == "cgroup2")
        } else {
            mounts.iter().find(|m| {
                m.2 == "cgroup"
                    && controllers
                        .split(',')
                        .all(|c| m.3.split(',').any(|o| o == c))
            })
        };
        let Some((point, root, ..)) = mount else {
            continue;
        };
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .trim_start_matches('/');
        let procs = PathBuf::from(point).join(rel).join("cgroup.procs");
        if controllers.is_empty() {
            return Some(procs);
        }
        v1.get_or_insert(procs);
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
30 22 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn prefers_cgroup2() {
        let cg = "4:memory:/a/b\n2:cpu,cpuacct:/\n0::/svc\n";
        assert_eq!(
            find_procs(cg, HYBRID_MOUNTS),
            Some(PathBuf::from("/sys/fs/cgroup/unified/svc/cgroup.procs"))
        );
    }

    #[test]
    fn falls_back_to_a_v1_hierarchy() {
        let mounts: String = HYBRID_MOUNTS
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let cg = "4:memory:/a/b\n2:cpu,cpuacct:/\n0::/svc\n";
        assert_eq!(
            find_procs(cg, &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b/cgroup.procs"))
        );
    }

    #[test]
    fn strips_the_mount_root_and_needs_a_mount() {
        let mounts = "40 22 0:40 /ns /cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_procs("0::/ns/x\n", mounts),
            Some(PathBuf::from("/cg/x/cgroup.procs"))
        );
        assert_eq!(
            find_procs("0::/x\n", "1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    /// The real thing, on this host: huskd's own cgroup is found and the
    /// no-op migration is accepted.
    #[test]
    fn migrates_to_own_cgroup_as_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: migrates_to_own_cgroup_as_root needs root");
            return;
        }
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        migrate_to_own_cgroup().expect("a no-op migration");
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }
}
