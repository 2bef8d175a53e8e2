//! [`harden_spec`]: a spec rewritten to the hardened profile. Pure: no
//! file, process or kernel is touched, so every rule is unit-tested.
//!
//! Where the spec asks for less than the profile allows (fewer
//! capabilities, a tighter limit, more masked paths), the spec wins; where
//! it asks for more, the profile does. The report says what changed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxIdMapping, LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxPids, LinuxResources, Mount, Process, Spec,
};
use serde::{Deserialize, Serialize};

use super::{capability_name, seccomp_default, Error, IdRange, Profile, Result};
use crate::seccomp::STACKED_ANNOTATION;

/// Tells the runtime to confine the container's processes with Landlock
/// (see `landlock.rs`); the value is the only mode, `rootfs`.
pub const LANDLOCK_ANNOTATION: &str = "io.husk.landlock";
pub const LANDLOCK_ROOTFS: &str = "rootfs";

/// Masked whatever the spec says: each leaks host state or is a known
/// escape aid.
pub const ALWAYS_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
    "/sys/kernel/security",
];

/// Read-only whatever the spec says.
pub const ALWAYS_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The only device nodes a hardened container gets, by (major, minor):
/// null, zero, full, random, urandom, tty.
pub const SAFE_DEVICES: [(i64, i64); 6] = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)];

/// Sysctl prefixes that only change the container's own namespaces.
const NAMESPACED_SYSCTLS: [&str; 6] = [
    "net.",
    "kernel.shm",
    "kernel.msg",
    "kernel.sem",
    "fs.mqueue.",
    "kernel.domainname",
];

/// What the caller found out about the host for this container.
#[derive(Debug, Clone, Default)]
pub struct HardenContext {
    pub container_id: String,
    /// The container's host id range (required when the profile enables
    /// user namespaces; see [`super::IdAllocator`]).
    pub ids: Option<IdRange>,
    /// The host pid of the init of the pod sandbox this container belongs
    /// to, whose range `ids` is (the caller checked it). The container
    /// joins that init's user namespace, and its network, IPC and UTS
    /// namespaces where the spec would share the host's; `None` for a
    /// container on its own, which gets new ones.
    pub pod_sandbox_pid: Option<i32>,
}

/// What [`harden_spec`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardeningReport {
    /// The container's host id range, if it has a user namespace of ours.
    pub ids: Option<IdRange>,
    /// The bounding set the process ends with.
    pub bounding: Vec<String>,
    /// Capabilities the spec asked for and does not get.
    pub dropped_capabilities: Vec<String>,
    /// Device nodes of linux.devices that were removed.
    pub dropped_devices: Vec<PathBuf>,
    /// Namespaces added because the spec shared the host's.
    pub added_namespaces: Vec<String>,
    /// Of those, the ones joined from the pod sandbox (`user` always, for
    /// a pod's container).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_namespaces: Vec<String>,
    /// Seccomp filters the process loads: ours, then the spec's.
    pub seccomp_filters: usize,
    pub readonly_rootfs: bool,
    pub landlock: bool,
    pub pids_limit: i64,
    pub memory_limit: i64,
    /// Everything else, in words.
    pub notes: Vec<String>,
}

/// Rewrites `spec` to `profile`. Errors name what the spec asked for that
/// the profile cannot give, and what to do instead.
pub fn harden_spec(
    spec: &mut Spec,
    profile: &Profile,
    ctx: &HardenContext,
) -> Result<HardeningReport> {
    let mut report = HardeningReport::default();
    let process = spec.process_mut().as_mut().ok_or_else(|| {
        Error::Refused("process is missing: the container needs a process to run".into())
    })?;
    report.dropped_capabilities = harden_process(process, profile);
    report.bounding = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .map(|b| {
            let mut v: Vec<String> = b.iter().map(|c| capability_name(*c)).collect();
            v.sort();
            v
        })
        .unwrap_or_default();

    let writable = profile.filesystem.writable_rootfs;
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(!writable));
    }
    report.readonly_rootfs = !writable;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    harden_mounts(&mut mounts, profile, &mut report);
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    harden_paths(&mut linux, profile);
    harden_devices(&mut linux, &mut report);
    harden_namespaces(&mut linux, profile, ctx, &mut report)?;
    harden_resources(&mut linux, profile, &mut report);
    harden_sysctls(&linux)?;
    if linux
        .rootfs_propagation()
        .as_deref()
        .is_some_and(|p| p.contains("shared"))
    {
        linux.set_rootfs_propagation(Some("rslave".into()));
        report
            .notes
            .push("linux.rootfsPropagation shared became rslave".into());
    }
    let stacked = harden_seccomp(&mut linux, spec, profile)?;
    report.seccomp_filters = 1 + stacked.len();
    spec.set_linux(Some(linux));

    let mut annotations = spec.annotations().clone().unwrap_or_default();
    if stacked.is_empty() {
        annotations.remove(STACKED_ANNOTATION);
    } else {
        annotations.insert(
            STACKED_ANNOTATION.to_string(),
            serde_json::to_string(&stacked).expect("seccomp profiles serialize"),
        );
    }
    if profile.landlock.enabled {
        annotations.insert(LANDLOCK_ANNOTATION.into(), LANDLOCK_ROOTFS.into());
    }
    report.landlock = annotations.contains_key(LANDLOCK_ANNOTATION);
    spec.set_annotations(Some(annotations));
    Ok(report)
}

/// The process rules alone, for `exec` as much as for the init: every
/// capability set cut to the profile's allowed set, no_new_privs on.
/// Returns the capabilities the process asked for and does not get.
pub fn harden_process(process: &mut Process, profile: &Profile) -> Vec<String> {
    let allowed: HashSet<Capability> = profile.allowed_capabilities().into_iter().collect();
    process.set_no_new_privileges(Some(true));
    // No capabilities in the spec means none (LinuxCapabilities's
    // Default is not empty, so it is not used here).
    let old = process.capabilities().clone().unwrap_or_else(|| {
        let mut none = LinuxCapabilities::default();
        for set in [
            LinuxCapabilities::set_bounding,
            LinuxCapabilities::set_effective,
            LinuxCapabilities::set_permitted,
            LinuxCapabilities::set_inheritable,
            LinuxCapabilities::set_ambient,
        ] {
            set(&mut none, None);
        }
        none
    });
    let mut dropped = HashSet::new();
    let mut cut = |set: &Option<Capabilities>| -> Option<Capabilities> {
        let set = set.clone().unwrap_or_default();
        dropped.extend(set.difference(&allowed).copied());
        Some(set.intersection(&allowed).copied().collect())
    };
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(cut(old.bounding()));
    caps.set_effective(cut(old.effective()));
    caps.set_permitted(cut(old.permitted()));
    caps.set_inheritable(cut(old.inheritable()));
    caps.set_ambient(cut(old.ambient()));
    process.set_capabilities(Some(caps));
    let mut names: Vec<String> = dropped.into_iter().map(capability_name).collect();
    names.sort();
    names
}

fn has_option(m: &Mount, o: &str) -> bool {
    m.options().iter().flatten().any(|x| x == o)
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind") || has_option(m, "bind") || has_option(m, "rbind")
}

/// Whether `noexec` cannot break an image on this mount: kernel
/// interfaces and shared-memory dirs hold no programs.
fn noexec_is_safe(m: &Mount) -> bool {
    let typ = m.typ().as_deref().unwrap_or("");
    matches!(
        typ,
        "proc" | "sysfs" | "cgroup" | "cgroup2" | "mqueue" | "devpts"
    ) || (!is_bind(m)
        && matches!(
            m.destination().to_str(),
            Some("/dev" | "/dev/shm" | "/dev/mqueue")
        ))
}

/// Mounts that hold device nodes: `nodev` there would break /dev/null and
/// ptys (device nodes bind-mounted into a user namespace are separate
/// mounts and keep working).
fn holds_devices(m: &Mount) -> bool {
    m.typ().as_deref() == Some("devpts") || (m.destination() == Path::new("/dev") && !is_bind(m))
}

fn tmpfs(dest: &str, mode: &str, size_mib: u64) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some(PathBuf::from("tmpfs")));
    m.set_options(Some(vec![
        "nosuid".into(),
        "nodev".into(),
        format!("mode={mode}"),
        format!("size={size_mib}m"),
    ]));
    m
}

fn harden_mounts(mounts: &mut Vec<Mount>, profile: &Profile, report: &mut HardeningReport) {
    for m in mounts.iter_mut() {
        let mut options: Vec<String> = m.options().clone().unwrap_or_default();
        let mut want = vec!["nosuid"];
        if !holds_devices(m) {
            want.push("nodev");
        }
        if noexec_is_safe(m) {
            want.push("noexec");
        }
        let typ = m.typ().as_deref().unwrap_or("");
        if matches!(typ, "sysfs" | "cgroup" | "cgroup2") {
            want.push("ro");
        }
        // The opposite options would undo ours; propagation back to the
        // host is never wanted.
        let undo: HashSet<&str> = want
            .iter()
            .map(|w| match *w {
                "ro" => "rw",
                w => w.trim_start_matches("no"),
            })
            .chain(["shared", "rshared"])
            .collect();
        let before = options.len();
        options.retain(|o| !undo.contains(o.as_str()));
        if options.len() != before {
            report.notes.push(format!(
                "mount {}: options that undo the profile were removed",
                m.destination().display()
            ));
        }
        for w in want {
            if !options.iter().any(|o| o == w) {
                options.push(w.to_string());
            }
        }
        m.set_options(Some(options));
    }
    if !profile.filesystem.writable_rootfs {
        for (dest, mode) in [("/tmp", "1777"), ("/run", "755")] {
            if !mounts.iter().any(|m| m.destination() == Path::new(dest)) {
                mounts.push(tmpfs(dest, mode, profile.filesystem.tmpfs_size_mib));
            }
        }
    }
}

fn union(existing: Option<Vec<String>>, builtin: &[&str], extra: &[String]) -> Vec<String> {
    let mut all = existing.unwrap_or_default();
    for p in builtin
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
    {
        if !all.contains(&p) {
            all.push(p);
        }
    }
    all
}

fn harden_paths(linux: &mut Linux, profile: &Profile) {
    let fs = &profile.filesystem;
    linux.set_masked_paths(Some(union(
        linux.masked_paths().clone(),
        ALWAYS_MASKED,
        &fs.extra_masked_paths,
    )));
    linux.set_readonly_paths(Some(union(
        linux.readonly_paths().clone(),
        ALWAYS_READONLY,
        &fs.extra_readonly_paths,
    )));
}

fn harden_devices(linux: &mut Linux, report: &mut HardeningReport) {
    let devices: Vec<LinuxDevice> = linux.devices().clone().unwrap_or_default();
    let (keep, drop): (Vec<_>, Vec<_>) = devices.into_iter().partition(|d| {
        matches!(d.typ(), LinuxDeviceType::C | LinuxDeviceType::U)
            && SAFE_DEVICES.contains(&(d.major(), d.minor()))
    });
    report.dropped_devices = drop.into_iter().map(|d| d.path().clone()).collect();
    linux.set_devices(Some(keep));
    // Deny all: the runtime adds the rules for the default nodes and ptys.
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false);
    deny.set_access(Some("rwm".into()));
    resources.set_devices(Some(vec![deny]));
    linux.set_resources(Some(resources));
}

fn harden_namespaces(
    linux: &mut Linux,
    profile: &Profile,
    ctx: &HardenContext,
    report: &mut HardeningReport,
) -> Result<()> {
    use LinuxNamespaceType as T;
    let mut namespaces: Vec<LinuxNamespace> = linux.namespaces().clone().unwrap_or_default();
    let mut private = vec![T::Pid, T::Ipc, T::Uts, T::Mount, T::Network, T::Cgroup];
    if profile.user_namespace.enabled {
        private.push(T::User);
    }
    // A pod's container lives in its sandbox's user namespace (which owns
    // the sandbox's other namespaces: procfs of a shared pid namespace can
    // only be mounted from there), and shares the sandbox's network, IPC
    // and UTS namespaces where the spec would share the host's.
    let pod_path = |t: T| {
        ctx.pod_sandbox_pid
            .filter(|_| matches!(t, T::User | T::Network | T::Ipc | T::Uts))
            .map(|pid| {
                PathBuf::from(format!(
                    "/proc/{pid}/ns/{}",
                    crate::namespaces::proc_name(t)
                ))
            })
    };
    for t in private {
        if !namespaces.iter().any(|n| n.typ() == t) {
            let mut n = LinuxNamespace::default();
            n.set_typ(t);
            if let Some(path) = pod_path(t) {
                n.set_path(Some(path));
                report.pod_namespaces.push(t.to_string());
            }
            namespaces.push(n);
            report.added_namespaces.push(t.to_string());
        }
    }
    if profile.user_namespace.enabled {
        let pod_user = pod_path(T::User);
        let user = namespaces
            .iter_mut()
            .find(|n| n.typ() == T::User)
            .expect("added above");
        match (user.path().clone(), &pod_user) {
            (Some(path), _) if Some(&path) != pod_user.as_ref() => {
                return Err(Error::Refused(format!(
                    "linux.namespaces joins the user namespace {}; hardened containers get their own, mapped to a range of their own \
                     (or their pod sandbox's, found by the shim): remove the path",
                    path.display()
                )));
            }
            (None, Some(path)) => {
                // Listed as new: a pod's container joins its sandbox's all the same.
                user.set_path(Some(path.clone()));
                report.pod_namespaces.push(T::User.to_string());
            }
            _ => {}
        }
        let ids = ctx.ids.ok_or_else(|| {
            Error::Ids(format!(
                "no host id range was allocated for container {:?}",
                ctx.container_id
            ))
        })?;
        // For a joined namespace, the maps it must have: the runtime
        // checks them after joining.
        let map = id_map(0, ids.start, ids.size);
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            report.notes.push(
                "linux.uidMappings/gidMappings were replaced by the container's own range".into(),
            );
        }
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
        report.ids = Some(ids);
    } else {
        let maps_host_root = |maps: &Option<Vec<LinuxIdMapping>>| {
            maps.iter()
                .flatten()
                .any(|m| m.host_id() == 0 || (m.host_id() as u64) + (m.size() as u64) == 0)
        };
        if maps_host_root(linux.uid_mappings()) || maps_host_root(linux.gid_mappings()) {
            return Err(Error::Refused(
                "linux.uidMappings/gidMappings map host id 0 into the container; map an unprivileged range".into(),
            ));
        }
    }
    linux.set_namespaces(Some(namespaces));
    Ok(())
}

fn id_map(container: u32, host: u32, size: u32) -> LinuxIdMapping {
    LinuxIdMappingBuilder::default()
        .container_id(container)
        .host_id(host)
        .size(size)
        .build()
        .expect("an id mapping builds")
}

fn harden_resources(linux: &mut Linux, profile: &Profile, report: &mut HardeningReport) {
    let r = &profile.resources;
    let mut resources: LinuxResources = linux.resources().clone().unwrap_or_default();
    let tighter = |spec: Option<i64>, ours: i64| match spec {
        Some(v) if v > 0 && v < ours => v,
        _ => ours,
    };
    let pids = tighter(resources.pids().as_ref().map(|p| p.limit()), r.pids_limit);
    let mut p = LinuxPids::default();
    p.set_limit(pids);
    resources.set_pids(Some(p));
    report.pids_limit = pids;

    let mut memory: LinuxMemory = resources.memory().unwrap_or_default();
    let ours = (r.memory_limit_mib as i64).saturating_mul(1 << 20);
    let limit = tighter(memory.limit(), ours);
    memory.set_limit(Some(limit));
    if r.no_swap {
        memory.set_swap(Some(limit));
        memory.set_swappiness(None);
    }
    resources.set_memory(Some(memory));
    report.memory_limit = limit;
    linux.set_resources(Some(resources));
}

fn harden_sysctls(linux: &Linux) -> Result<()> {
    let sysctls: HashMap<String, String> = linux.sysctl().clone().unwrap_or_default();
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        if !NAMESPACED_SYSCTLS.iter().any(|p| key.starts_with(p)) {
            return Err(Error::Refused(format!(
                "linux.sysctl {key} is not namespaced: it would change the host; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* are allowed"
            )));
        }
    }
    Ok(())
}

/// Puts the profile's filter in `linux.seccomp` and returns the profiles
/// to stack on it: the spec's own, then any already stacked.
fn harden_seccomp(
    linux: &mut Linux,
    spec: &Spec,
    profile: &Profile,
) -> Result<Vec<oci_spec::runtime::LinuxSeccomp>> {
    let ours = seccomp_default::profile(&profile.seccomp.extra_allow);
    let mut stacked = Vec::new();
    if let Some(theirs) = linux.seccomp().clone() {
        // Hardening twice must not stack ours on ours.
        if theirs != ours {
            stacked.push(theirs);
        }
    }
    stacked.extend(
        crate::seccomp::stacked_profiles(spec)
            .map_err(|e| Error::Refused(e.to_string()))?
            .into_iter()
            .filter(|p| *p != ours),
    );
    linux.set_seccomp(Some(ours));
    Ok(stacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: IdRange = IdRange {
        start: 1 << 20,
        size: 65536,
    };

    fn ctx() -> HardenContext {
        HardenContext {
            container_id: "c1".into(),
            ids: Some(RANGE),
            pod_sandbox_pid: None,
        }
    }

    /// Roughly what `ctr run` hands a shim: Docker's capabilities, the
    /// default mounts, host-shared nothing but the user namespace.
    fn ctr_spec() -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {
                "args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                                 "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                                 "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
                                 "CAP_SYS_ADMIN"],
                    "effective": ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_RAW"],
                    "permitted": ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_RAW"],
                    "ambient": ["CAP_SYS_PTRACE"]
                }
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "rw"]},
                {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "suid", "dev", "rshared"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/x"}],
                "maskedPaths": ["/proc/custom"],
                "devices": [
                    {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
                    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
                    {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11}
                ],
                "resources": {
                    "devices": [{"allow": true, "access": "rwm"}],
                    "pids": {"limit": 100},
                    "memory": {"limit": 8589934592u64, "swap": 17179869184u64}
                },
                "rootfsPropagation": "rshared"
            }
        }))
        .unwrap()
    }

    fn hardened(spec: &mut Spec) -> HardeningReport {
        harden_spec(spec, &Profile::default(), &ctx()).unwrap()
    }

    fn set(c: &Option<Capabilities>) -> Vec<String> {
        let mut v: Vec<String> = c.iter().flatten().map(|c| capability_name(*c)).collect();
        v.sort();
        v
    }

    #[test]
    fn capabilities_are_cut_and_forbidden_ones_never_granted() {
        let mut spec = ctr_spec();
        let report = hardened(&mut spec);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        let bounding = set(caps.bounding());
        for forbidden in super::super::FORBIDDEN_CAPABILITIES {
            let name = capability_name(forbidden);
            for s in [
                caps.bounding(),
                caps.effective(),
                caps.permitted(),
                caps.ambient(),
            ] {
                assert!(!set(s).contains(&name), "{name} kept");
            }
        }
        assert!(bounding.contains(&"CAP_CHOWN".to_string()));
        assert!(!bounding.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(set(caps.effective()), ["CAP_CHOWN"]);
        assert!(set(caps.ambient()).is_empty());
        assert!(set(caps.inheritable()).is_empty());
        assert_eq!(report.bounding, bounding);
        for d in [
            "CAP_SYS_ADMIN",
            "CAP_NET_RAW",
            "CAP_SYS_PTRACE",
            "CAP_MKNOD",
        ] {
            assert!(report.dropped_capabilities.contains(&d.to_string()), "{d}");
        }
    }

    #[test]
    fn a_process_without_capabilities_gets_none_not_all() {
        let mut process = Process::default();
        process.set_capabilities(None);
        harden_process(&mut process, &Profile::default());
        let caps = process.capabilities().as_ref().unwrap();
        assert!(set(caps.bounding()).is_empty());
        assert!(set(caps.permitted()).is_empty());
    }

    #[test]
    fn the_operator_cannot_grant_sys_admin_even_by_editing_the_struct() {
        // validate() refuses it in a file; allowed_capabilities() is the
        // only way in, and harden_process intersects with it.
        let mut profile = Profile::default();
        profile.capabilities.allowed.push("CAP_SYS_ADMIN".into());
        assert!(profile.validate().is_err());
    }

    #[test]
    fn rootfs_is_read_only_with_tmpfs_on_tmp_and_run() {
        let mut spec = ctr_spec();
        hardened(&mut spec);
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let mounts = spec.mounts().as_ref().unwrap();
        for (dest, mode) in [("/tmp", "mode=1777"), ("/run", "mode=755")] {
            let m = mounts
                .iter()
                .find(|m| m.destination() == Path::new(dest))
                .unwrap_or_else(|| panic!("no {dest}"));
            assert_eq!(m.typ().as_deref(), Some("tmpfs"));
            for o in ["nosuid", "nodev", mode, "size=64m"] {
                assert!(has_option(m, o), "{dest} lacks {o}");
            }
        }
        let mut writable = Profile::default();
        writable.filesystem.writable_rootfs = true;
        let mut spec = ctr_spec();
        harden_spec(&mut spec, &writable, &ctx()).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        assert!(!spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.destination() == Path::new("/tmp")));
    }

    #[test]
    fn mounts_get_nosuid_nodev_and_noexec_where_safe() {
        let mut spec = ctr_spec();
        hardened(&mut spec);
        let mounts = spec.mounts().as_ref().unwrap();
        let get = |d: &str| {
            mounts
                .iter()
                .find(|m| m.destination() == Path::new(d))
                .unwrap()
        };
        for m in mounts {
            assert!(has_option(m, "nosuid"), "{:?}", m.destination());
        }
        // Device-holding mounts keep device access.
        assert!(!has_option(get("/dev"), "nodev"));
        assert!(!has_option(get("/dev/pts"), "nodev"));
        assert!(has_option(get("/dev"), "noexec"));
        assert!(has_option(get("/dev/shm"), "nodev"));
        // sysfs is read-only, its "rw" gone.
        assert!(has_option(get("/sys"), "ro") && !has_option(get("/sys"), "rw"));
        // A bind volume: nosuid,nodev win over suid,dev; no noexec (it may
        // hold programs); no propagation back to the host.
        let data = get("/data");
        for o in ["nosuid", "nodev", "rbind"] {
            assert!(has_option(data, o), "{o}");
        }
        for o in ["suid", "dev", "rshared", "noexec"] {
            assert!(!has_option(data, o), "{o}");
        }
    }

    #[test]
    fn masked_and_readonly_paths_are_a_union() {
        let mut spec = ctr_spec();
        let mut profile = Profile::default();
        profile.filesystem.extra_masked_paths = vec!["/proc/extra".into()];
        harden_spec(&mut spec, &profile, &ctx()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let masked = linux.masked_paths().as_ref().unwrap();
        for p in ALWAYS_MASKED.iter().chain(&["/proc/custom", "/proc/extra"]) {
            assert!(masked.contains(&p.to_string()), "{p}");
        }
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
            "/proc/acpi",
        ] {
            assert!(masked.contains(&p.to_string()), "{p}");
        }
        let ro = linux.readonly_paths().as_ref().unwrap();
        for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
            assert!(ro.contains(&p.to_string()), "{p}");
        }
    }

    #[test]
    fn only_safe_devices_survive_and_the_cgroup_denies_the_rest() {
        let mut spec = ctr_spec();
        let report = hardened(&mut spec);
        let linux = spec.linux().as_ref().unwrap();
        let kept: Vec<_> = linux
            .devices()
            .iter()
            .flatten()
            .map(|d| d.path().clone())
            .collect();
        assert_eq!(kept, [PathBuf::from("/dev/null")]);
        assert_eq!(
            report.dropped_devices,
            [PathBuf::from("/dev/sda"), PathBuf::from("/dev/kmsg")]
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(!rules[0].allow());
        assert_eq!(rules[0].typ(), None);
    }

    #[test]
    fn every_namespace_is_private_and_root_maps_to_the_range() {
        let mut spec = ctr_spec();
        let report = hardened(&mut spec);
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        use LinuxNamespaceType as T;
        for t in [
            T::Pid,
            T::Ipc,
            T::Uts,
            T::Mount,
            T::Network,
            T::Cgroup,
            T::User,
        ] {
            assert!(ns.iter().any(|n| n.typ() == t), "{t}");
        }
        // A joined network namespace (a pod's) stays joined.
        let net = ns.iter().find(|n| n.typ() == T::Network).unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/var/run/netns/x")));
        assert!(report.added_namespaces.contains(&"user".to_string()));
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let m = maps.as_ref().unwrap();
            assert_eq!(m.len(), 1);
            assert_eq!(
                (m[0].container_id(), m[0].host_id(), m[0].size()),
                (0, RANGE.start, RANGE.size)
            );
        }
        assert_eq!(report.ids, Some(RANGE));
        crate::spec::validate(&spec).unwrap();
    }

    #[test]
    fn user_namespace_rules() {
        // No range allocated: refused, not run as host root.
        let mut spec = ctr_spec();
        let err = harden_spec(&mut spec, &Profile::default(), &HardenContext::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no host id range"), "{err}");
        // Joining a user namespace by path is refused.
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        let mut user = LinuxNamespace::default();
        user.set_typ(LinuxNamespaceType::User);
        user.set_path(Some("/proc/1/ns/user".into()));
        ns.push(user);
        linux.set_namespaces(Some(ns));
        spec.set_linux(Some(linux));
        let err = harden_spec(&mut spec, &Profile::default(), &ctx())
            .unwrap_err()
            .to_string();
        assert!(err.contains("joins the user namespace"), "{err}");
        // With user namespaces off, a map of host root is still refused.
        let mut off = Profile::default();
        off.user_namespace.enabled = false;
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_uid_mappings(Some(vec![id_map(0, 0, 1)]));
        spec.set_linux(Some(linux));
        let err = harden_spec(&mut spec, &off, &HardenContext::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("host id 0"), "{err}");
    }

    #[test]
    fn a_pods_container_joins_its_sandbox_user_namespace_and_range() {
        use LinuxNamespaceType as T;
        let pod = HardenContext {
            container_id: "c2".into(),
            ids: Some(RANGE),
            pod_sandbox_pid: Some(4242),
        };
        let mut spec = ctr_spec();
        let report = harden_spec(&mut spec, &Profile::default(), &pod).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let path = |t: T| {
            linux
                .namespaces()
                .iter()
                .flatten()
                .find(|n| n.typ() == t)
                .unwrap_or_else(|| panic!("no {t}"))
                .path()
                .clone()
        };
        for (t, name) in [(T::User, "user"), (T::Ipc, "ipc"), (T::Uts, "uts")] {
            assert_eq!(
                path(t),
                Some(PathBuf::from(format!("/proc/4242/ns/{name}")))
            );
        }
        // The spec's own network namespace (a CNI one) stays; what the
        // container must own is new.
        assert_eq!(path(T::Network), Some(PathBuf::from("/var/run/netns/x")));
        for t in [T::Pid, T::Mount, T::Cgroup] {
            assert_eq!(path(t), None, "{t}");
        }
        assert_eq!(report.pod_namespaces, ["ipc", "uts", "user"]);
        // The maps the joined namespace must have: the pod's range.
        let m = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!((m.host_id(), m.size()), (RANGE.start, RANGE.size));
        assert_eq!(report.ids, Some(RANGE));
        crate::spec::validate(&spec).unwrap();
        // Hardening again changes no namespace.
        let before = linux.namespaces().clone();
        harden_spec(&mut spec, &Profile::default(), &pod).unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().namespaces(), &before);

        // Listed as a new user namespace: joined all the same.
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        let mut user = LinuxNamespace::default();
        user.set_typ(T::User);
        ns.push(user.clone());
        linux.set_namespaces(Some(ns.clone()));
        spec.set_linux(Some(linux.clone()));
        harden_spec(&mut spec, &Profile::default(), &pod).unwrap();
        let joined = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let joined = joined.iter().find(|n| n.typ() == T::User).unwrap();
        assert_eq!(
            joined.path().as_deref(),
            Some(Path::new("/proc/4242/ns/user"))
        );
        // Another process's user namespace: refused, pod or not.
        ns.pop();
        user.set_path(Some("/proc/1/ns/user".into()));
        ns.push(user);
        linux.set_namespaces(Some(ns));
        let mut spec = ctr_spec();
        spec.set_linux(Some(linux));
        let err = harden_spec(&mut spec, &Profile::default(), &pod)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("joins the user namespace /proc/1/ns/user"),
            "{err}"
        );
    }

    #[test]
    fn resources_keep_the_tighter_value_and_forbid_swap() {
        let mut spec = ctr_spec();
        let report = hardened(&mut spec);
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        // The spec's 100 pids is tighter than 1024; its 8 GiB is not.
        assert_eq!(r.pids().as_ref().unwrap().limit(), 100);
        let mem = r.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(1 << 30));
        assert_eq!(mem.swap(), Some(1 << 30));
        assert_eq!((report.pids_limit, report.memory_limit), (100, 1 << 30));
        // Unset or unlimited (-1, 0) become the defaults.
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        let mut res = LinuxResources::default();
        let mut p = LinuxPids::default();
        p.set_limit(-1);
        res.set_pids(Some(p));
        linux.set_resources(Some(res));
        spec.set_linux(Some(linux));
        let report = hardened(&mut spec);
        assert_eq!(report.pids_limit, 1024);
    }

    #[test]
    fn host_sysctls_are_refused_namespaced_ones_kept() {
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_sysctl(Some(HashMap::from([(
            "net.ipv4.ip_forward".to_string(),
            "1".to_string(),
        )])));
        spec.set_linux(Some(linux.clone()));
        hardened(&mut spec);
        linux.set_sysctl(Some(HashMap::from([(
            "kernel.core_pattern".to_string(),
            "|/evil".to_string(),
        )])));
        let mut spec = ctr_spec();
        spec.set_linux(Some(linux));
        let err = harden_spec(&mut spec, &Profile::default(), &ctx())
            .unwrap_err()
            .to_string();
        assert!(err.contains("kernel.core_pattern"), "{err}");
    }

    #[test]
    fn the_spec_seccomp_profile_is_stacked_on_ours_never_instead() {
        let theirs: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap();
        let mut spec = ctr_spec();
        let mut linux = spec.linux().clone().unwrap();
        linux.set_seccomp(Some(theirs.clone()));
        spec.set_linux(Some(linux));
        let report = hardened(&mut spec);
        assert_eq!(report.seccomp_filters, 2);
        let ours = seccomp_default::profile(&[]);
        assert_eq!(
            spec.linux().as_ref().unwrap().seccomp().as_ref(),
            Some(&ours)
        );
        let all = crate::seccomp::profiles(&spec).unwrap();
        assert_eq!(all, [ours.clone(), theirs.clone()]);
        // Hardening again changes nothing.
        let again = spec.clone();
        hardened(&mut spec);
        assert_eq!(
            crate::seccomp::profiles(&spec).unwrap(),
            crate::seccomp::profiles(&again).unwrap()
        );
        // Without a spec profile, only ours.
        let mut spec = ctr_spec();
        assert_eq!(hardened(&mut spec).seccomp_filters, 1);
        assert_eq!(crate::seccomp::profiles(&spec).unwrap(), [ours]);
    }

    #[test]
    fn landlock_is_requested_and_propagation_never_shared() {
        let mut spec = ctr_spec();
        let report = hardened(&mut spec);
        assert!(report.landlock);
        assert_eq!(
            spec.annotations().as_ref().unwrap()[LANDLOCK_ANNOTATION],
            LANDLOCK_ROOTFS
        );
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("rslave")
        );
        let mut off = Profile::default();
        off.landlock.enabled = false;
        let mut spec = ctr_spec();
        assert!(!harden_spec(&mut spec, &off, &ctx()).unwrap().landlock);
    }

    #[test]
    fn a_spec_without_process_is_refused() {
        let mut spec = ctr_spec();
        spec.set_process(None);
        let err = harden_spec(&mut spec, &Profile::default(), &ctx())
            .unwrap_err()
            .to_string();
        assert!(err.contains("process is missing"), "{err}");
    }
}
