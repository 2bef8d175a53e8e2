//! Linux namespaces: which to create, which to join by path, and the user
//! namespace id maps.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, LinuxTimeOffset, Spec};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::sys;

/// Every namespace type, in the order they are listed and created. [`join`]
/// enters the user namespace after the others (see there).
pub const ALL: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::Mount,
];

pub fn clone_flag(t: LinuxNamespaceType) -> libc::c_int {
    match t {
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => libc::CLONE_NEWTIME,
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
    }
}

/// The entry name under /proc/PID/ns/.
pub fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
        LinuxNamespaceType::Mount => "mnt",
    }
}

/// What the init must do with namespaces, derived from the spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Existing namespaces to enter, in [`ALL`] order.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
    /// New namespaces to create.
    pub create: Vec<LinuxNamespaceType>,
}

impl Plan {
    pub fn from_spec(spec: &Spec) -> Plan {
        let listed: HashMap<LinuxNamespaceType, Option<PathBuf>> = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .map(|ns| (ns.typ(), ns.path().clone()))
            .collect();
        let mut plan = Plan::default();
        for t in ALL {
            match listed.get(&t) {
                Some(Some(path)) => plan.join.push((t, path.clone())),
                Some(None) => plan.create.push(t),
                None => {}
            }
        }
        plan
    }

    pub fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.create.contains(&t)
    }

    pub fn joins(&self, t: LinuxNamespaceType) -> bool {
        self.join.iter().any(|(j, _)| *j == t)
    }

    /// Whether the container runs in a user namespace other than the host's.
    pub fn in_user_namespace(&self) -> bool {
        self.creates(LinuxNamespaceType::User) || self.joins(LinuxNamespaceType::User)
    }

    /// unshare(2) flags for every new namespace except the user namespace,
    /// which is created on its own so the runtime can map ids first.
    pub fn unshare_flags(&self) -> libc::c_int {
        self.create
            .iter()
            .filter(|t| **t != LinuxNamespaceType::User)
            .fold(0, |acc, t| acc | clone_flag(*t))
    }
}

/// Opens every namespace first, then enters them: once the mount
/// namespace is entered, host paths no longer resolve.
///
/// The user namespace comes after the others: entering it gives up every
/// capability over namespaces that its ancestors own, such as a pod's
/// network namespace made by CNI (owned by the host's user namespace),
/// which the caller, still privileged there, can join before. A namespace
/// that refuses the caller with EPERM before (a runtime without privilege
/// over it) is tried again from inside the user namespace.
pub fn join(targets: &[(LinuxNamespaceType, PathBuf)]) -> Result<()> {
    let fds: Vec<(LinuxNamespaceType, OwnedFd, &Path)> = targets
        .iter()
        .map(|(t, path)| {
            let fd = sys::open(path, libc::O_RDONLY)
                .context(|| format!("open {} namespace {}", proc_name(*t), path.display()))?;
            Ok((*t, fd, path.as_path()))
        })
        .collect::<Result<_>>()?;
    let what = |t: LinuxNamespaceType, path: &Path| {
        format!("join {} namespace {}", proc_name(t), path.display())
    };
    let (user, others): (Vec<_>, Vec<_>) = fds
        .iter()
        .partition(|(t, _, _)| *t == LinuxNamespaceType::User);
    let mut later = Vec::new();
    for ns @ (t, fd, path) in others {
        match sys::setns(fd.as_fd(), clone_flag(*t)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && !user.is_empty() => later.push(ns),
            r => r.context(|| what(*t, path))?,
        }
    }
    for (t, fd, path) in user.into_iter().chain(later) {
        sys::setns(fd.as_fd(), clone_flag(*t)).context(|| what(*t, path))?;
    }
    Ok(())
}

/// The namespaces of a running process that differ from ours: what `exec`
/// must enter. Joining one's own user namespace is an error, so equal ones
/// are skipped.
pub fn of_process(pid: libc::pid_t) -> Result<Vec<(LinuxNamespaceType, PathBuf)>> {
    let mut out = Vec::new();
    for t in ALL {
        let theirs = PathBuf::from(format!("/proc/{pid}/ns/{}", proc_name(t)));
        let ours = PathBuf::from(format!("/proc/self/ns/{}", proc_name(t)));
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            // The kernel lacks this namespace type (e.g. time before 5.6).
            continue;
        };
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            out.push((t, theirs));
        }
    }
    Ok(out)
}

/// The text written to /proc/PID/uid_map or gid_map.
pub fn format_id_map(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// After joining a user namespace: fails unless its maps (as this process
/// reads them) are `uid_map` and `gid_map` (the text [`format_id_map`]
/// gives), so a spec never runs in a namespace other than the one it was
/// written for.
pub fn check_own_id_maps(uid_map: &str, gid_map: &str) -> Result<()> {
    let fields = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
            .collect()
    };
    for (file, want) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/self/{file}");
        let have = std::fs::read_to_string(&path).context(|| format!("read {path}"))?;
        if fields(&have) != fields(want) {
            return Err(Error::invalid_spec(format!(
                "the joined user namespace maps {:?} in its {file}, not {:?} as the spec's linux mappings say: \
                 it is not the namespace the spec was written for (did its process exit?)",
                have.trim(),
                want.trim()
            )));
        }
    }
    Ok(())
}

/// Writes the id maps of the user namespace `pid` just created. Runs in the
/// runtime (parent), which holds CAP_SETUID in the parent namespace.
pub fn write_id_maps(
    pid: libc::pid_t,
    uid_maps: &[LinuxIdMapping],
    gid_maps: &[LinuxIdMapping],
) -> Result<()> {
    let write = |file: &str, text: String| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text.as_bytes())
            .context(|| format!("write {path} ({:?})", text.trim()))
    };
    write("uid_map", format_id_map(uid_maps))?;
    write("gid_map", format_id_map(gid_maps))
}

/// The text written to /proc/self/timens_offsets.
pub fn format_time_offsets(offsets: &HashMap<String, LinuxTimeOffset>) -> Result<String> {
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by(|a, b| a.0.cmp(b.0));
    clocks
        .into_iter()
        .map(|(clock, off)| match clock.as_str() {
            "monotonic" | "boottime" => Ok(format!(
                "{clock} {} {}\n",
                off.secs().unwrap_or(0),
                off.nanosecs().unwrap_or(0)
            )),
            other => Err(Error::invalid_spec(format!(
                "linux.timeOffsets: unknown clock {other:?}; use monotonic or boottime"
            ))),
        })
        .collect()
}

pub fn write_time_offsets(offsets: &HashMap<String, LinuxTimeOffset>) -> Result<()> {
    let text = format_time_offsets(offsets)?;
    std::fs::write("/proc/self/timens_offsets", text.as_bytes())
        .context(|| format!("write /proc/self/timens_offsets ({:?})", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder, SpecBuilder,
    };

    fn spec_with(nss: Vec<(LinuxNamespaceType, Option<&str>)>) -> Spec {
        let nss = nss
            .into_iter()
            .map(|(t, p)| {
                let b = LinuxNamespaceBuilder::default().typ(t);
                match p {
                    Some(p) => b.path(p).build().unwrap(),
                    None => b.build().unwrap(),
                }
            })
            .collect::<Vec<_>>();
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(nss).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn plan_splits_create_and_join_in_join_order() {
        let spec = spec_with(vec![
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, Some("/var/run/netns/pod")),
            (LinuxNamespaceType::User, Some("/proc/1/ns/user")),
            (LinuxNamespaceType::Pid, None),
        ]);
        let plan = Plan::from_spec(&spec);
        assert_eq!(
            plan.join,
            vec![
                (LinuxNamespaceType::User, PathBuf::from("/proc/1/ns/user")),
                (
                    LinuxNamespaceType::Network,
                    PathBuf::from("/var/run/netns/pod")
                ),
            ]
        );
        assert_eq!(
            plan.create,
            vec![LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
        );
        assert!(plan.in_user_namespace());
        assert_eq!(plan.unshare_flags(), libc::CLONE_NEWPID | libc::CLONE_NEWNS);
    }

    #[test]
    fn user_namespace_is_not_in_unshare_flags() {
        let spec = spec_with(vec![
            (LinuxNamespaceType::User, None),
            (LinuxNamespaceType::Time, None),
        ]);
        let plan = Plan::from_spec(&spec);
        assert_eq!(plan.unshare_flags(), libc::CLONE_NEWTIME);
    }

    #[test]
    fn id_maps_format() {
        let m = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100000u32)
            .size(65536u32)
            .build()
            .unwrap();
        assert_eq!(format_id_map(&[m, m]), "0 100000 65536\n0 100000 65536\n");
    }

    #[test]
    fn time_offsets_format_and_reject_unknown_clocks() {
        let mut offs = HashMap::new();
        let mut o = LinuxTimeOffset::default();
        o.set_secs(Some(86400));
        offs.insert("boottime".to_string(), o.clone());
        assert_eq!(format_time_offsets(&offs).unwrap(), "boottime 86400 0\n");
        offs.insert("realtime".to_string(), o);
        assert!(format_time_offsets(&offs).is_err());
    }
}
