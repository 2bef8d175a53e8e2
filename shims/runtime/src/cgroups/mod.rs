//! Cgroups for containers: cgroup v1, v2 and hybrid hosts, driven by cgroupfs.
//!
//! * [`Hierarchy`] says where the host's cgroup filesystems are mounted; it is
//!   read once from `/proc/self/mountinfo` ([`Hierarchy::detect`]).
//! * [`Cgroup`] is one container's cgroup: a hierarchy plus a path relative to
//!   its root (OCI `linux.cgroupsPath`). It serializes, so the runtime keeps it
//!   in its state file and rebuilds it for `kill`, `delete`, `pause`, `stats`.
//!
//! Hybrid hosts (v1 controllers plus a cgroup2 tree at
//! `/sys/fs/cgroup/unified`) are [`Hierarchy::V1`] with `unified: Some(..)`:
//! limits go to the v1 controllers, and the process also joins the same path
//! in the unified tree (as systemd and runc do). If the kernel hands
//! `hugetlb` to the unified tree (as on this project's development hosts),
//! hugepage limits are written there.
//!
//! What is not done: no systemd cgroup driver (a `slice:prefix:name`
//! cgroupsPath is refused with a clear error); `linux.resources.network`
//! (net_cls / net_prio) has no v2 equivalent and is skipped there with a
//! warning. Device rules on v2 become an eBPF program (`device_filter`).
//!
//! All filesystem access goes through the `fs` helpers, which take full
//! paths: tests run everything against a fake tree in a tempdir.

mod device_filter;
mod fs;
mod mountinfo;
mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod testutil;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use stats::{CpuStats, MemoryStats, PidsStats, Stats};

/// Where the mountinfo comes from in [`Hierarchy::detect`].
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// How long [`Cgroup::freeze`] / [`Cgroup::thaw`] wait for the kernel to
/// report the new state.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// cgroup v1: controller name (`"memory"`, `"cpu"`, `"name=systemd"`, ...)
    /// to the mount point of its hierarchy (co-mounted controllers share
    /// one, e.g. `cpu` and `cpuacct` -> `/sys/fs/cgroup/cpu,cpuacct`).
    /// `unified` is the cgroup2 mount point on a hybrid host.
    V1 {
        controllers: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
    /// cgroup v2 only: the cgroup2 mount point (usually `/sys/fs/cgroup`).
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Read the host's layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
            path: PathBuf::from(MOUNTINFO),
            source,
            hint: "is /proc mounted?".to_string(),
        })?;
        let h = mountinfo::hierarchy_from_mounts(&mountinfo::cgroup_mounts(&text)?, MOUNTINFO)?;
        tracing::debug!(hierarchy = ?h, "detected cgroup hierarchy");
        Ok(h)
    }

    /// Decide the layout from a mountinfo text (pure; for tests and callers
    /// that already read it). v1 when any resource controller (cpu, memory,
    /// pids, ...) is mounted as cgroup v1 — hybrid if a cgroup2 tree is
    /// mounted too — otherwise v2 when cgroup2 is mounted.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, CgroupError> {
        mountinfo::hierarchy_from_mounts(&mountinfo::cgroup_mounts(text)?, "mountinfo text")
    }

    /// True for v1 controllers plus a cgroup2 tree.
    pub fn is_hybrid(&self) -> bool {
        matches!(
            self,
            Hierarchy::V1 {
                unified: Some(_),
                ..
            }
        )
    }

    /// True for a pure cgroup v2 host.
    pub fn is_v2(&self) -> bool {
        matches!(self, Hierarchy::V2 { .. })
    }

    /// The cgroup2 mount point (v2 root, or the hybrid unified tree).
    pub fn unified_root(&self) -> Option<&Path> {
        match self {
            Hierarchy::V1 { unified, .. } => unified.as_deref(),
            Hierarchy::V2 { root } => Some(root),
        }
    }

    /// Mount point of a v1 controller's hierarchy (`None` on v2).
    pub fn controller_root(&self, controller: &str) -> Option<&Path> {
        match self {
            Hierarchy::V1 { controllers, .. } => controllers.get(controller).map(PathBuf::as_path),
            Hierarchy::V2 { .. } => None,
        }
    }

    /// v1: one entry per distinct mount, named by its controllers joined
    /// with "," (e.g. `"cpu,cpuacct"`, `"name=systemd"`).
    fn v1_mounts(&self) -> Vec<(String, &Path)> {
        let mut out: Vec<(String, &Path)> = Vec::new();
        if let Hierarchy::V1 { controllers, .. } = self {
            for (name, root) in controllers {
                match out.iter_mut().find(|(_, r)| *r == root.as_path()) {
                    Some((names, _)) => {
                        names.push(',');
                        names.push_str(name);
                    }
                    None => out.push((name.clone(), root.as_path())),
                }
            }
        }
        out
    }
}

/// One container's cgroup: a [`Hierarchy`] and a path below its root(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CgroupRepr")]
pub struct Cgroup {
    hierarchy: Hierarchy,
    /// Normalized relative path: "a/b" (no leading or trailing slash).
    path: String,
}

#[derive(Deserialize)]
struct CgroupRepr {
    hierarchy: Hierarchy,
    path: String,
}

impl TryFrom<CgroupRepr> for Cgroup {
    type Error = CgroupError;
    fn try_from(r: CgroupRepr) -> Result<Self, Self::Error> {
        Cgroup::new(r.hierarchy, &r.path)
    }
}

/// Validate and normalize an OCI `linux.cgroupsPath` ("/a/b" or "a/b", both
/// taken relative to the hierarchy root) to "a/b".
pub fn normalize_path(path: &str) -> Result<String, CgroupError> {
    let invalid = |reason: &str| CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if !path.contains('/') && path.matches(':').count() == 2 {
        return Err(CgroupError::SystemdPath {
            path: path.to_string(),
        });
    }
    if path.contains('\0') || path.contains('\n') {
        return Err(invalid("it contains a NUL or newline character"));
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(invalid(
                    "\"..\" is not allowed (it would escape the cgroup root); give a path such as /husk/<container-id>",
                ))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(invalid(
            "it names the root cgroup; give a path such as /husk/<container-id>",
        ));
    }
    Ok(parts.join("/"))
}

impl Cgroup {
    /// A cgroup at `path` (OCI `linux.cgroupsPath`: "/a/b" and "a/b" are both
    /// relative to each hierarchy root). Refuses "..", an empty path and the
    /// systemd `slice:prefix:name` form. Touches no file.
    pub fn new(hierarchy: Hierarchy, path: &str) -> Result<Cgroup, CgroupError> {
        Ok(Cgroup {
            path: normalize_path(path)?,
            hierarchy,
        })
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// The normalized relative path ("a/b").
    pub fn path(&self) -> &str {
        &self.path
    }

    fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(&self.path)
    }

    /// `mkdir -p` the cgroup in every hierarchy. v1: in every mounted
    /// controller (and the unified tree on hybrid hosts, best effort);
    /// cpuset.cpus/mems are copied down from the parents where empty.
    /// v2: cpu, cpuset, io, memory and pids (those the root offers) are
    /// enabled in every ancestor's cgroup.subtree_control (hugetlb only on
    /// demand, by `apply` when hugepage limits are set). Fails with a clear
    /// error if an ancestor holds processes itself (v2 "no internal
    /// processes" rule).
    pub fn create(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::create(self),
            Hierarchy::V2 { root } => v2::create(root, &self.path),
        }
    }

    /// Write the limits in `r`. Only controllers whose resources are set are
    /// touched. See the module docs for what is skipped.
    pub fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::apply(self, r),
            Hierarchy::V2 { root } => v2::apply(root, &self.path, r),
        }
    }

    /// Move process `pid` into the cgroup (write cgroup.procs) in every
    /// hierarchy. On hybrid hosts it also joins the unified tree (the
    /// directory is created if needed; failures there are only logged).
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::add_process(self, pid),
            Hierarchy::V2 { root } => {
                fs::write(&self.dir_in(root).join("cgroup.procs"), &pid.to_string())
            }
        }
    }

    /// Moves the calling thread, and only it, into the cgroup in every
    /// cgroup v1 hierarchy (nothing to do on v2, where single threads
    /// cannot join a domain cgroup). A process the thread then forks is
    /// born there: unlike a write of its pid to `cgroup.procs`, this takes
    /// no global lock, so it never waits for an RCU grace period (10-20 ms
    /// when the lock is cold). Paired with [`Cgroup::unified_dir`] for
    /// clone3's CLONE_INTO_CGROUP, a process starts in the whole cgroup
    /// without any migration. Meant for a short-lived thread of its own;
    /// [`ThreadInCgroup::leave`] puts it back.
    pub fn enter_thread(&self) -> Result<ThreadInCgroup, CgroupError> {
        let previous = match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::enter_thread(self)?,
            Hierarchy::V2 { .. } => Vec::new(),
        };
        Ok(ThreadInCgroup { previous })
    }

    /// The cgroup's directory in the cgroup2 tree, for clone3's
    /// CLONE_INTO_CGROUP: on v2 always, on hybrid hosts if it was created
    /// (joining the unified tree is best effort there); `None` on v1.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2 { root } => Some(self.dir_in(root)),
            Hierarchy::V1 {
                unified: Some(u), ..
            } => Some(self.dir_in(u)).filter(|d| d.is_dir()),
            Hierarchy::V1 { unified: None, .. } => None,
        }
    }

    /// Moves process `pid` into the cgroup2 part only (what
    /// [`Cgroup::unified_dir`] names), through `cgroup.procs`: for kernels
    /// without CLONE_INTO_CGROUP. Best effort on hybrid hosts, as in
    /// [`Cgroup::add_process`].
    pub fn add_process_unified(&self, pid: i32) -> Result<(), CgroupError> {
        let Some(dir) = self.unified_dir() else {
            return Ok(());
        };
        let r = fs::write(&dir.join("cgroup.procs"), &pid.to_string());
        match (&self.hierarchy, r) {
            (Hierarchy::V1 { .. }, Err(e)) => {
                tracing::warn!(error = %e, "hybrid host: cannot join the cgroup in the unified tree");
                Ok(())
            }
            (_, r) => r,
        }
    }

    /// PIDs in the cgroup and all its sub-cgroups (sorted). Empty if the
    /// cgroup does not exist.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::pids(self),
            Hierarchy::V2 { root } => fs::read_procs_recursive(&self.dir_in(root)),
        }
    }

    /// Freeze every process, and wait (up to [`FREEZE_TIMEOUT`]) until the
    /// kernel reports the cgroup frozen. On timeout the cgroup is thawed
    /// again and an error returned.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::set_frozen(self, true, FREEZE_TIMEOUT),
            Hierarchy::V2 { root } => v2::set_frozen(&self.dir_in(root), true, FREEZE_TIMEOUT),
        }
    }

    /// Thaw, waiting until the kernel reports it.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::set_frozen(self, false, FREEZE_TIMEOUT),
            Hierarchy::V2 { root } => v2::set_frozen(&self.dir_in(root), false, FREEZE_TIMEOUT),
        }
    }

    /// Whether the cgroup is (completely) frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::is_frozen(self),
            Hierarchy::V2 { root } => v2::is_frozen(&self.dir_in(root)),
        }
    }

    /// Usage figures; files the kernel does not provide give `None`.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::stats(self),
            Hierarchy::V2 { root } => v2::stats(&self.dir_in(root)),
        }
    }

    /// Processes the OOM killer has killed in this cgroup (0 if unknown).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => v1::oom_kills(self),
            Hierarchy::V2 { root } => v2::oom_kills(&self.dir_in(root)),
        }
    }

    /// The keyed file whose `oom_kill` line [`Cgroup::oom_kills`] reads
    /// (v1 `memory.oom_control`, v2 `memory.events`); `None` without a
    /// memory controller. For a caller that reads it without the library
    /// (the shim's daemon, at an init's exit).
    pub fn oom_kills_file(&self) -> Option<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => self
                .hierarchy
                .controller_root("memory")
                .map(|r| self.dir_in(r).join("memory.oom_control")),
            Hierarchy::V2 { root } => Some(self.dir_in(root).join("memory.events")),
        }
    }

    /// Remove the cgroup and every sub-cgroup, leaf first, in every
    /// hierarchy. A cgroup whose processes are still exiting (EBUSY) is
    /// retried for about a second. Missing directories are fine, so this is
    /// idempotent. Ancestors (e.g. "husk" of "husk/<id>") are left alone:
    /// other containers may share them.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + fs::RMDIR_BUSY_TIMEOUT;
        let mut first_err = None;
        for (_, dir) in self.all_dirs() {
            if let Err(e) = fs::remove_tree(&dir, deadline) {
                tracing::warn!(error = %e, "cgroup destroy");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the cgroup directory exists in any hierarchy.
    pub fn exists(&self) -> bool {
        self.all_dirs().iter().any(|(_, d)| d.is_dir())
    }

    /// The cgroup's directory in each hierarchy, for the runtime to bind
    /// into the container. v1: one entry per mounted hierarchy, named by its
    /// controllers joined with "," as in the mount (`"memory"`,
    /// `"cpu,cpuacct"`, `"name=systemd"`), then on hybrid hosts `("", dir)`
    /// for the unified tree. v2: the single entry `("", dir)`.
    pub fn controller_dirs(&self) -> Vec<(String, PathBuf)> {
        self.all_dirs()
    }

    fn all_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = self
            .hierarchy
            .v1_mounts()
            .into_iter()
            .map(|(name, root)| (name, self.dir_in(root)))
            .collect();
        if let Some(u) = self.hierarchy.unified_root() {
            out.push((String::new(), self.dir_in(u)));
        }
        out
    }
}

/// A thread moved into a container's cgroup by [`Cgroup::enter_thread`].
#[must_use = "the thread stays in the container's cgroup until it leaves or exits"]
pub struct ThreadInCgroup {
    previous: Vec<PathBuf>,
}

impl ThreadInCgroup {
    /// Puts the thread back into the cgroups it came from (best effort:
    /// failing that, it leaves them when it exits).
    pub fn leave(self) {
        v1::leave_thread(&self.previous);
    }
}

/// What can go wrong. Every message names the file or path involved and
/// says what to do about it.
#[derive(thiserror::Error, Debug)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}; {hint}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("cannot write {value:?} to {path}: {source}; {hint}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("{path} not present (wanted to write {value:?}): {hint}")]
    MissingFile {
        path: PathBuf,
        value: String,
        hint: String,
    },
    #[error("cannot create cgroup {path}: {source}; {hint}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error("cannot remove cgroup {path}: {source}; {hint}")]
    Rmdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },
    #[error(
        "cgroup {path} still has processes after {waited_ms} ms ({pids:?}); \
         kill the container's processes (and thaw it if paused), then delete again"
    )]
    Busy {
        path: PathBuf,
        waited_ms: u64,
        pids: Vec<i32>,
    },
    #[error("cannot parse {path}: unexpected {content:?} (expected {expected})")]
    Parse {
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
    #[error("malformed line {line} in mountinfo: {text:?}")]
    MountinfoSyntax { line: usize, text: String },
    #[error(
        "no usable cgroup filesystem in {mountinfo}: {reason}; mount cgroup2 at \
         /sys/fs/cgroup (or the cgroup v1 controllers under /sys/fs/cgroup/<controller>)"
    )]
    NoCgroupFs { mountinfo: String, reason: String },
    #[error("invalid linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error(
        "linux.cgroupsPath {path:?} is in systemd form (slice:prefix:name), but husk \
         manages cgroupfs directly and has no systemd cgroup driver; disable systemd \
         cgroups (containerd: SystemdCgroup = false in the runtime options; kubelet: \
         cgroupDriver: cgroupfs; docker: native.cgroupdriver=cgroupfs) or give a path \
         such as \"/husk/<container-id>\""
    )]
    SystemdPath { path: String },
    #[error("invalid linux.resources: {0}")]
    InvalidResources(String),
    #[error(
        "cannot enforce linux.resources.devices on cgroup v2 at {path}: {reason}; the \
         kernel needs CONFIG_CGROUP_BPF and the runtime CAP_BPF/CAP_SYS_ADMIN"
    )]
    DeviceFilter { path: PathBuf, reason: String },
    #[error("{what} is not supported on {on}: {hint}")]
    Unsupported {
        what: String,
        on: &'static str,
        hint: String,
    },
    #[error(
        "{needed_for} needs the cgroup v1 {controller:?} controller, which is not mounted \
         on this host; mount it (mount -t cgroup -o {controller} cgroup \
         /sys/fs/cgroup/{controller}){alternative}"
    )]
    ControllerMissing {
        controller: String,
        needed_for: String,
        alternative: String,
    },
    #[error(
        "timed out after {waited_ms} ms waiting for {path} to report {want:?} (last \
         read {last:?}); {hint}"
    )]
    Timeout {
        path: PathBuf,
        want: String,
        last: String,
        waited_ms: u64,
        hint: String,
    },
}

// ---- conversions shared by v1 and v2 (runc semantics) ----

/// OCI memory.swap is memory+swap. Returns the v2 `memory.swap.max` value
/// (-1 = "max"), or `None` to leave it alone. Same rules as runc's
/// ConvertMemorySwapToCgroupV2Value.
pub(crate) fn swap_v2(limit: Option<i64>, swap: Option<i64>) -> Result<Option<i64>, CgroupError> {
    let limit = limit.unwrap_or(0);
    let swap = swap.unwrap_or(0);
    if limit == -1 && swap == 0 {
        return Ok(Some(-1));
    }
    if swap == 0 {
        return Ok(None);
    }
    if swap < 0 {
        return Ok(Some(-1));
    }
    check_swap(limit, swap)?;
    Ok(Some(swap - limit))
}

/// memory+swap must come with a finite memory limit no larger than it.
pub(crate) fn check_swap(limit: i64, swap: i64) -> Result<(), CgroupError> {
    if limit <= 0 {
        return Err(CgroupError::InvalidResources(format!(
            "memory.swap ({swap}) is memory+swap and needs a memory.limit; set \
             linux.resources.memory.limit, or set swap to -1 for unlimited swap"
        )));
    }
    if swap < limit {
        return Err(CgroupError::InvalidResources(format!(
            "memory.swap ({swap}) is memory+swap and must be >= memory.limit ({limit}); \
             raise swap (equal to the limit means no swap)"
        )));
    }
    Ok(())
}

/// v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// v1 blkio.weight (10..1000) to v2 io.weight (1..10000).
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

/// "max" for negative, the number otherwise.
pub(crate) fn max_or(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// OCI pids.limit: <= 0 means unlimited.
pub(crate) fn pids_value(limit: i64) -> String {
    if limit <= 0 {
        "max".to_string()
    } else {
        limit.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Hierarchy {
        Hierarchy::V2 {
            root: "/sys/fs/cgroup".into(),
        }
    }

    #[test]
    fn path_validation() {
        assert_eq!(normalize_path("/husk/abc").unwrap(), "husk/abc");
        assert_eq!(normalize_path("husk/abc").unwrap(), "husk/abc");
        assert_eq!(normalize_path("//husk/./abc/").unwrap(), "husk/abc");
        for bad in ["", "/", "//", ".", "/a/../b", "..", "a/..", "a\0b"] {
            let e = normalize_path(bad).unwrap_err();
            assert!(matches!(e, CgroupError::InvalidPath { .. }), "{bad:?}: {e}");
        }
        let e = normalize_path("system.slice:docker:abc").unwrap_err();
        assert!(matches!(e, CgroupError::SystemdPath { .. }));
        let msg = e.to_string();
        assert!(msg.contains("disable systemd cgroups"), "{msg}");
        assert!(msg.contains("SystemdCgroup = false"), "{msg}");
        // a colon inside a cgroupfs path is just a name
        assert_eq!(normalize_path("/a/b:c:d").unwrap(), "a/b:c:d");
    }

    #[test]
    fn cgroup_roundtrips_through_json() {
        let cg = Cgroup::new(v2(), "/husk/c1").unwrap();
        let j = serde_json::to_string(&cg).unwrap();
        let back: Cgroup = serde_json::from_str(&j).unwrap();
        assert_eq!(back, cg);
        assert_eq!(back.path(), "husk/c1");
        // a tampered state file is refused
        let bad = j.replace("husk/c1", "../etc");
        assert!(serde_json::from_str::<Cgroup>(&bad).is_err());

        let mut c = BTreeMap::new();
        c.insert("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory"));
        let h = Hierarchy::V1 {
            controllers: c,
            unified: Some("/sys/fs/cgroup/unified".into()),
        };
        let cg = Cgroup::new(h, "x").unwrap();
        let back: Cgroup = serde_json::from_str(&serde_json::to_string(&cg).unwrap()).unwrap();
        assert_eq!(back, cg);
    }

    #[test]
    fn controller_dirs_dedupes_comounts() {
        let mut c = BTreeMap::new();
        c.insert("cpu".to_string(), PathBuf::from("/cg/cpu,cpuacct"));
        c.insert("cpuacct".to_string(), PathBuf::from("/cg/cpu,cpuacct"));
        c.insert("memory".to_string(), PathBuf::from("/cg/memory"));
        c.insert("name=systemd".to_string(), PathBuf::from("/cg/systemd"));
        let h = Hierarchy::V1 {
            controllers: c,
            unified: Some("/cg/unified".into()),
        };
        let cg = Cgroup::new(h, "/husk/x").unwrap();
        assert_eq!(
            cg.controller_dirs(),
            vec![
                (
                    "cpu,cpuacct".to_string(),
                    PathBuf::from("/cg/cpu,cpuacct/husk/x")
                ),
                ("memory".to_string(), PathBuf::from("/cg/memory/husk/x")),
                (
                    "name=systemd".to_string(),
                    PathBuf::from("/cg/systemd/husk/x")
                ),
                (String::new(), PathBuf::from("/cg/unified/husk/x")),
            ]
        );
        let cg = Cgroup::new(v2(), "husk/x").unwrap();
        assert_eq!(
            cg.controller_dirs(),
            vec![(String::new(), PathBuf::from("/sys/fs/cgroup/husk/x"))]
        );
    }

    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(swap_v2(Some(100), Some(300)).unwrap(), Some(200));
        assert_eq!(swap_v2(Some(100), Some(100)).unwrap(), Some(0));
        assert_eq!(swap_v2(Some(100), Some(-1)).unwrap(), Some(-1));
        assert_eq!(swap_v2(Some(-1), None).unwrap(), Some(-1));
        assert_eq!(swap_v2(Some(100), None).unwrap(), None);
        assert_eq!(swap_v2(None, None).unwrap(), None);
        assert!(swap_v2(Some(300), Some(100)).is_err());
        assert!(swap_v2(None, Some(100)).is_err());
        assert_eq!(pids_value(0), "max");
        assert_eq!(pids_value(-1), "max");
        assert_eq!(pids_value(10), "10");
    }
}
