//! Finding the cgroup hierarchies in `/proc/self/mountinfo`.
//!
//! Line format (proc(5)):
//! `36 35 98:0 /root /mount/point rw,noatime master:1 - fstype source super,opts`
//! The optional fields end at a lone `-`; paths escape space, tab, newline
//! and backslash as `\040`, `\011`, `\012`, `\134`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CgroupError, Hierarchy};

/// cgroup v1 controllers the kernel knows (`/proc/cgroups`). Anything else in
/// the super options of a `cgroup` mount is a mount option, except `name=X`
/// (a named hierarchy such as `name=systemd`).
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "debug",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Controllers whose presence on v1 makes the host a v1 (or hybrid) host. A
/// stray `net_cls` or `name=systemd` v1 mount beside a full cgroup2 tree
/// (common on v2 hosts that run old containers) does not.
const V1_CORE: &[&str] = &[
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids",
];

/// One cgroup-related mount.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CgroupMount {
    /// The mount's root inside the filesystem (4th field): "/" normally, a
    /// sub-cgroup when a container sees only its own part of the tree.
    pub root: String,
    pub mount_point: PathBuf,
    /// `false` for `cgroup2`.
    pub v1: bool,
    /// v1 controllers and `name=X` entries (empty for cgroup2).
    pub controllers: Vec<String>,
}

fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let oct = std::str::from_utf8(oct).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(oct, 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the cgroup mounts out of a mountinfo text.
pub(crate) fn cgroup_mounts(text: &str) -> Result<Vec<CgroupMount>, CgroupError> {
    let mut mounts = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sep = fields
            .iter()
            .skip(6)
            .position(|f| *f == "-")
            .map(|p| p + 6)
            .filter(|&p| fields.len() > p + 1);
        let Some(sep) = sep else {
            return Err(CgroupError::MountinfoSyntax {
                line: idx + 1,
                text: line.to_string(),
            });
        };
        let fstype = fields[sep + 1];
        let v1 = match fstype {
            "cgroup" => true,
            "cgroup2" => false,
            _ => continue,
        };
        let super_opts = fields.get(sep + 3).copied().unwrap_or("");
        let controllers = if v1 {
            super_opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        mounts.push(CgroupMount {
            root: unescape(fields[3]),
            mount_point: PathBuf::from(unescape(fields[4])),
            v1,
            controllers,
        });
    }
    Ok(mounts)
}

/// Decide the host's cgroup layout from its mounts.
pub(crate) fn hierarchy_from_mounts(
    mounts: &[CgroupMount],
    source: &str,
) -> Result<Hierarchy, CgroupError> {
    // Prefer a mount of the whole hierarchy (root "/") over a bind mount of a
    // sub-cgroup, and for cgroup2 the usual places; ties: first listed wins.
    let rank = |m: &CgroupMount| {
        let canonical = m.mount_point == Path::new("/sys/fs/cgroup")
            || m.mount_point == Path::new("/sys/fs/cgroup/unified");
        (m.root == "/", canonical)
    };
    let mut controllers: BTreeMap<String, &CgroupMount> = BTreeMap::new();
    let mut unified: Option<&CgroupMount> = None;
    for m in mounts {
        if m.v1 {
            for c in &m.controllers {
                let take = match controllers.get(c) {
                    None => true,
                    Some(old) => rank(m).0 && !rank(old).0,
                };
                if take {
                    controllers.insert(c.clone(), m);
                }
            }
        } else if unified.is_none_or(|u| rank(m) > rank(u)) {
            unified = Some(m);
        }
    }

    let has_core_v1 = controllers.keys().any(|c| V1_CORE.contains(&c.as_str()));
    if has_core_v1 {
        let controllers = controllers
            .into_iter()
            .map(|(k, m)| (k, m.mount_point.clone()))
            .collect();
        return Ok(Hierarchy::V1 {
            controllers,
            unified: unified.map(|u| u.mount_point.clone()),
        });
    }
    if let Some(u) = unified {
        return Ok(Hierarchy::V2 {
            root: u.mount_point.clone(),
        });
    }
    let reason = if controllers.is_empty() {
        "no cgroup or cgroup2 filesystem is mounted".to_string()
    } else {
        format!(
            "only cgroup v1 hierarchies without resource controllers are mounted ({})",
            controllers.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    Err(CgroupError::NoCgroupFs {
        mountinfo: source.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 11 / CentOS 7 style legacy host (systemd "legacy" mode), with
    /// co-mounted cpu,cpuacct and net_cls,net_prio.
    const V1: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 23 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,net_cls,net_prio
31 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
32 25 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,blkio
33 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
34 25 0:32 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpuset
35 25 0:33 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
36 25 0:34 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,devices
37 25 0:35 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,hugetlb
38 25 0:36 / /sys/fs/cgroup/perf_event rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,perf_event
";

    /// Ubuntu 20.04 default (systemd "hybrid" mode).
    const HYBRID_UBUNTU: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
34 24 0:29 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
39 34 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
40 34 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
41 34 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
";

    /// This project's development machines (Debian 12, hybrid, separate cpu
    /// and cpuacct mounts, cgroup2 at /sys/fs/cgroup/unified).
    const HYBRID_DEV: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Debian 12 / Fedora / Ubuntu 22.04+ (systemd "unified" mode).
    const V2: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:26 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
";

    #[test]
    fn v1_host() {
        let h = Hierarchy::from_mountinfo(V1).unwrap();
        let Hierarchy::V1 {
            controllers,
            unified,
        } = &h
        else {
            panic!("expected v1: {h:?}")
        };
        assert_eq!(unified, &None);
        assert_eq!(controllers["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            controllers["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            controllers["net_prio"],
            Path::new("/sys/fs/cgroup/net_cls,net_prio")
        );
        assert_eq!(
            controllers["name=systemd"],
            Path::new("/sys/fs/cgroup/systemd")
        );
        // mount options are not controllers
        assert!(!controllers.contains_key("xattr"));
        assert!(!controllers.contains_key("rw"));
        assert!(!controllers.keys().any(|k| k.starts_with("release_agent")));
        assert_eq!(controllers.len(), 13);
    }

    #[test]
    fn hybrid_hosts() {
        for (text, n) in [(HYBRID_UBUNTU, 5), (HYBRID_DEV, 9)] {
            let h = Hierarchy::from_mountinfo(text).unwrap();
            let Hierarchy::V1 {
                controllers,
                unified,
            } = &h
            else {
                panic!("expected hybrid: {h:?}")
            };
            assert_eq!(
                unified.as_deref(),
                Some(Path::new("/sys/fs/cgroup/unified"))
            );
            assert_eq!(controllers.len(), n, "{controllers:?}");
            assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory"));
            assert!(h.is_hybrid());
        }
        let h = Hierarchy::from_mountinfo(HYBRID_DEV).unwrap();
        assert_eq!(
            h.controller_root("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
    }

    #[test]
    fn v2_host() {
        let h = Hierarchy::from_mountinfo(V2).unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert!(!h.is_hybrid());
    }

    #[test]
    fn v2_host_with_stray_named_v1_hierarchy_is_v2() {
        // v2 host that mounts a name=systemd v1 hierarchy for old containers.
        let text = format!(
            "{V2}50 26 0:40 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,name=systemd\n\
             51 26 0:41 / /sys/fs/cgroup/net_cls rw,relatime - cgroup cgroup rw,net_cls\n"
        );
        assert!(matches!(
            Hierarchy::from_mountinfo(&text).unwrap(),
            Hierarchy::V2 { .. }
        ));
    }

    #[test]
    fn container_view_and_escapes() {
        // Inside a Docker container on a v1 host without cgroupns: the mount
        // roots are the container's own cgroup; a later bind of the full
        // hierarchy (root "/") is preferred.
        let text = "\
1131 1127 0:29 /docker/ab12 /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:15 - cgroup cgroup rw,memory
1132 1127 0:30 /docker/ab12 /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime master:16 - cgroup cgroup rw,pids
1133 1127 0:30 / /mnt/all\\040pids rw,relatime - cgroup cgroup rw,pids
";
        let h = Hierarchy::from_mountinfo(text).unwrap();
        assert_eq!(
            h.controller_root("memory"),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(h.controller_root("pids"), Some(Path::new("/mnt/all pids")));
    }

    #[test]
    fn no_cgroups_or_garbage() {
        let err =
            Hierarchy::from_mountinfo("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
                .unwrap_err();
        assert!(err.to_string().contains("mount cgroup2"), "{err}");
        let err = Hierarchy::from_mountinfo("garbage line\n").unwrap_err();
        assert!(err.to_string().contains("garbage line"), "{err}");
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trail\\04"), "/trail\\04");
    }
}
