//! Fake cgroupfs trees for unit tests (no root needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::Hierarchy;

/// A cgroup2 root at `<base>/cg` offering `controllers` (space separated).
pub(crate) fn fake_v2(base: &Path, controllers: &str) -> Hierarchy {
    let root = base.join("cg");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
    Hierarchy::V2 { root }
}

/// v1 hierarchies at `<base>/<mount>` for each mount name ("cpu,cpuacct"
/// co-mounts both), the cpuset root seeded with cpus 0-3 / mems 0, plus a
/// unified tree at `<base>/unified` when `hybrid`.
pub(crate) fn fake_v1(base: &Path, mounts: &[&str], hybrid: bool) -> Hierarchy {
    let mut controllers = BTreeMap::new();
    for m in mounts {
        let dir = base.join(m);
        std::fs::create_dir_all(&dir).unwrap();
        for c in m.split(',') {
            controllers.insert(c.to_string(), dir.clone());
            if c == "cpuset" {
                std::fs::write(dir.join("cpuset.cpus"), "0-3\n").unwrap();
                std::fs::write(dir.join("cpuset.mems"), "0\n").unwrap();
            }
        }
    }
    let unified: Option<PathBuf> = hybrid.then(|| {
        let u = base.join("unified");
        std::fs::create_dir_all(&u).unwrap();
        u
    });
    Hierarchy::V1 {
        controllers,
        unified,
    }
}

/// OCI `linux.resources` from JSON.
pub(crate) fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

/// File content, trimmed.
pub(crate) fn cat(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}
