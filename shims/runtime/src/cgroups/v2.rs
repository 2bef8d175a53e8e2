//! cgroup v2 (unified hierarchy).
//!
//! Device control: cgroup v2 has no devices.allow/deny files; the device
//! rules become an eBPF program attached to the cgroup (`device_filter`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxRdma, LinuxResources,
};

use super::stats::{get, read_keyed, read_u64};
use super::{
    blkio_weight_to_io_weight, fs, max_or, pids_value, shares_to_weight, swap_v2, CgroupError,
    Stats,
};

/// Controllers [`create`] enables for containers when the root offers them.
pub(crate) const DEFAULT_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

static NETWORK_WARNING: Once = Once::new();

fn errno(e: &CgroupError) -> Option<i32> {
    match e {
        CgroupError::Write { source, .. } | CgroupError::Read { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

/// Controller names in a space-separated list file (cgroup.controllers,
/// cgroup.subtree_control). Missing file => empty.
fn read_list(path: &Path) -> Result<Vec<String>, CgroupError> {
    Ok(fs::read_opt(path)?
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_string())
        .collect())
}

pub(super) fn create(root: &Path, rel: &str) -> Result<(), CgroupError> {
    enable_controllers(root, rel, DEFAULT_CONTROLLERS)?;
    fs::mkdir_p(&root.join(rel))
}

/// Make `wanted` controllers (those the root offers) available to the cgroup
/// `rel`: enable them in cgroup.subtree_control of the root and of every
/// ancestor of `rel`, creating the ancestors. Returns the controllers that
/// are available to `rel`. A controller the kernel refuses is dropped with a
/// warning (its settings will then fail with a clear error); EBUSY (parent
/// has processes of its own) is a hard error.
pub(crate) fn enable_controllers(
    root: &Path,
    rel: &str,
    wanted: &[&str],
) -> Result<Vec<String>, CgroupError> {
    let available = read_list(&root.join("cgroup.controllers"))?;
    let mut want: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| available.iter().any(|a| a == c))
        .collect();
    let comps: Vec<&str> = rel.split('/').collect();
    let mut dir = root.to_path_buf();
    for (i, comp) in comps.iter().enumerate() {
        if want.is_empty() {
            break;
        }
        if i > 0 {
            fs::mkdir_p(&dir)?;
        }
        let control = dir.join("cgroup.subtree_control");
        let enabled = read_list(&control)?;
        let missing: Vec<&str> = want
            .iter()
            .copied()
            .filter(|c| !enabled.iter().any(|e| e == c))
            .collect();
        if !missing.is_empty() {
            let line = missing
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Err(e) = fs::write(&control, &line) {
                if errno(&e) == Some(libc::EBUSY) {
                    return Err(e);
                }
                // One at a time, to keep the ones the kernel accepts.
                for c in missing {
                    if let Err(e) = fs::write(&control, &format!("+{c}")) {
                        if errno(&e) == Some(libc::EBUSY) {
                            return Err(e);
                        }
                        tracing::warn!(controller = c, error = %e, "cannot enable cgroup v2 controller");
                        want.retain(|w| *w != c);
                    }
                }
            }
        }
        dir.push(comp);
    }
    Ok(want.into_iter().map(str::to_string).collect())
}

pub(super) fn apply(root: &Path, rel: &str, r: &LinuxResources) -> Result<(), CgroupError> {
    let dir = root.join(rel);
    if let Some(m) = r.memory() {
        memory(&dir, m)?;
    }
    if let Some(c) = r.cpu() {
        cpu(&dir, c)?;
    }
    if let Some(p) = r.pids() {
        fs::write(&dir.join("pids.max"), &pids_value(p.limit()))?;
    }
    if let Some(b) = r.block_io() {
        io(&dir, b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        if !h.is_empty() {
            hugetlb(root, rel, h)?;
        }
    }
    if let Some(rd) = r.rdma() {
        rdma(&dir.join("rdma.max"), rd)?;
    }
    if let Some(u) = r.unified() {
        unified(&dir, u)?;
    }
    if let Some(devices) = r.devices().as_ref().filter(|d| !d.is_empty()) {
        super::device_filter::apply(&dir, devices)?;
    }
    if r.network().is_some() {
        NETWORK_WARNING.call_once(|| {
            tracing::warn!(
                "cgroup v2: linux.resources.network ignored (net_cls/net_prio exist only on cgroup v1)"
            )
        });
    }
    Ok(())
}

fn memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().filter(|&v| v != 0);
    if let Some(swap) = swap_v2(limit, m.swap())? {
        let v = max_or(swap);
        match fs::write(&dir.join("memory.swap.max"), &v) {
            // No swap accounting: "no swap limit" and "no swap" cannot be
            // enforced but are not worth failing the container (as runc).
            Err(CgroupError::MissingFile { .. }) if v == "max" || v == "0" => {
                tracing::debug!(value = %v, "memory.swap.max missing; swap setting ignored");
            }
            other => other?,
        }
    }
    if let Some(l) = limit {
        fs::write(&dir.join("memory.max"), &max_or(l))?;
    }
    if let Some(res) = m.reservation().filter(|&v| v != 0) {
        fs::write(&dir.join("memory.low"), &max_or(res))?;
    }
    if m.swappiness().is_some() {
        tracing::warn!(
            "cgroup v2 has no memory.swappiness: linux.resources.memory.swappiness ignored"
        );
    }
    if m.disable_oom_killer() == Some(true) {
        tracing::warn!("cgroup v2 cannot disable the OOM killer: linux.resources.memory.disableOOMKiller ignored");
    }
    if m.kernel_tcp().is_some_and(|v| v != 0) {
        tracing::warn!(
            "cgroup v2 has no kernel TCP memory limit: linux.resources.memory.kernelTCP ignored"
        );
    }
    Ok(())
}

fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(shares) = c.shares().filter(|&s| s != 0) {
        fs::write(
            &dir.join("cpu.weight"),
            &shares_to_weight(shares).to_string(),
        )?;
    }
    let quota = c.quota().filter(|&q| q != 0);
    let period = c.period().filter(|&p| p != 0);
    if quota.is_some() || period.is_some() {
        let q = match quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_string(),
        };
        let v = match period {
            Some(p) => format!("{q} {p}"),
            None => q,
        };
        fs::write(&dir.join("cpu.max"), &v)?;
    }
    if let Some(b) = c.burst() {
        fs::write(&dir.join("cpu.max.burst"), &b.to_string())?;
    }
    if let Some(idle) = c.idle() {
        fs::write(&dir.join("cpu.idle"), &idle.to_string())?;
    }
    if c.realtime_runtime().is_some_and(|v| v != 0) || c.realtime_period().is_some_and(|v| v != 0) {
        return Err(CgroupError::Unsupported {
            what: "linux.resources.cpu.realtimeRuntime/realtimePeriod".to_string(),
            on: "cgroup v2",
            hint: "the kernel has no real-time group scheduling on cgroup v2; drop them"
                .to_string(),
        });
    }
    cpuset(dir, c)
}

/// cpuset.cpus / cpuset.mems (same file names on v1 and v2).
pub(crate) fn cpuset(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(cpus) = c.cpus().as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        fs::write(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        fs::write(&dir.join("cpuset.mems"), mems)?;
    }
    Ok(())
}

fn io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().filter(|&w| w != 0);
    let devs = b.weight_device().as_deref().unwrap_or(&[]);
    if weight.is_some() || !devs.is_empty() {
        // BFQ takes the v1 scale (1..1000) in io.bfq.weight; io.weight is
        // io.cost's 1..10000 scale.
        let bfq = dir.join("io.bfq.weight").exists();
        let (file, conv): (&str, fn(u16) -> u64) = if bfq {
            ("io.bfq.weight", u64::from)
        } else {
            ("io.weight", blkio_weight_to_io_weight)
        };
        if let Some(w) = weight {
            fs::write(&dir.join(file), &conv(w).to_string())?;
        }
        for d in devs {
            if let Some(w) = d.weight() {
                let line = format!("{}:{} {}", d.major(), d.minor(), conv(w));
                fs::write(&dir.join(file), &line)?;
            }
        }
    }
    if b.leaf_weight().is_some() {
        tracing::warn!("cgroup v2 has no leaf weight: linux.resources.blockIO.leafWeight ignored");
    }
    let throttles = [
        (b.throttle_read_bps_device(), "rbps"),
        (b.throttle_write_bps_device(), "wbps"),
        (b.throttle_read_iops_device(), "riops"),
        (b.throttle_write_iops_device(), "wiops"),
    ];
    for (list, key) in throttles {
        for d in list.as_deref().unwrap_or(&[]) {
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            let line = format!("{}:{} {key}={rate}", d.major(), d.minor());
            fs::write(&dir.join("io.max"), &line)?;
        }
    }
    Ok(())
}

pub(crate) fn check_page_size(size: &str) -> Result<(), CgroupError> {
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CgroupError::InvalidResources(format!(
            "hugepageLimits pageSize {size:?} is not a size such as \"2MB\" or \"1GB\""
        )));
    }
    Ok(())
}

/// Hugepage limits in a cgroup2 tree (pure v2, or the unified tree of a
/// hybrid host whose kernel gave hugetlb to cgroup2).
pub(crate) fn hugetlb(
    root: &Path,
    rel: &str,
    limits: &[LinuxHugepageLimit],
) -> Result<(), CgroupError> {
    let enabled = enable_controllers(root, rel, &["hugetlb"])?;
    if enabled.is_empty() {
        return Err(CgroupError::Unsupported {
            what: "linux.resources.hugepageLimits".to_string(),
            on: "this host",
            hint: format!(
                "the hugetlb controller is not available in {} (kernel without \
                 CONFIG_CGROUP_HUGETLB?); drop the hugepage limits",
                root.join("cgroup.controllers").display()
            ),
        });
    }
    let dir = root.join(rel);
    fs::mkdir_p(&dir)?;
    for l in limits {
        check_page_size(l.page_size())?;
        let v = max_or(l.limit());
        fs::write(&dir.join(format!("hugetlb.{}.max", l.page_size())), &v)?;
        let rsvd = dir.join(format!("hugetlb.{}.rsvd.max", l.page_size()));
        if rsvd.exists() {
            fs::write(&rsvd, &v)?;
        }
    }
    Ok(())
}

/// rdma.max lines (same format on v1 and v2).
pub(crate) fn rdma(file: &Path, devs: &HashMap<String, LinuxRdma>) -> Result<(), CgroupError> {
    let sorted: BTreeMap<_, _> = devs.iter().collect();
    for (name, l) in sorted {
        let mut line = name.clone();
        if let Some(h) = l.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = l.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        if line.len() > name.len() {
            fs::write(file, &line)?;
        }
    }
    Ok(())
}

fn unified(dir: &Path, u: &HashMap<String, String>) -> Result<(), CgroupError> {
    let sorted: BTreeMap<_, _> = u.iter().collect();
    for (k, v) in sorted {
        if k.is_empty() || k.contains('/') || k == "." || k == ".." {
            return Err(CgroupError::InvalidResources(format!(
                "linux.resources.unified key {k:?} is not a cgroup file name"
            )));
        }
        fs::write(&dir.join(k), v)?;
    }
    Ok(())
}

/// Value of "frozen" in cgroup.events; falls back to cgroup.freeze.
fn frozen_state(dir: &Path) -> Result<(Option<bool>, String), CgroupError> {
    if let Some(text) = fs::read_opt(&dir.join("cgroup.events"))? {
        if let Some(v) = get(&super::stats::parse_keyed(&text), "frozen") {
            return Ok((Some(v == 1), format!("frozen {v}")));
        }
    }
    match fs::read_opt(&dir.join("cgroup.freeze"))? {
        Some(t) => Ok((Some(t.trim() == "1"), format!("cgroup.freeze {}", t.trim()))),
        None => Ok((None, "no cgroup.events".to_string())),
    }
}

pub(super) fn set_frozen(dir: &Path, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let want = if frozen { "1" } else { "0" };
    let control = dir.join("cgroup.freeze");
    fs::write(&control, want)?;
    let start = Instant::now();
    let mut last = String::new();
    let settled = fs::wait_until(
        timeout,
        || {
            let (state, text) = frozen_state(dir)?;
            last = text;
            Ok(state == Some(frozen))
        },
        || Ok(()),
    )?;
    if settled {
        return Ok(());
    }
    let hint = if frozen {
        // Do not leave the container half frozen.
        let _ = fs::write(&control, "0");
        "the cgroup was thawed again; processes in uninterruptible sleep (D state, \
         e.g. blocked on NFS or FUSE) delay freezing: check /proc/<pid>/stat and retry"
    } else {
        "check the parent cgroups: a frozen ancestor keeps its children frozen"
    };
    Err(CgroupError::Timeout {
        path: dir.join("cgroup.events"),
        want: format!("frozen {want}"),
        last,
        waited_ms: start.elapsed().as_millis() as u64,
        hint: hint.to_string(),
    })
}

pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(frozen_state(dir)?.0.unwrap_or(false))
}

pub(super) fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    Ok(get(&read_keyed(&dir.join("memory.events"))?, "oom_kill").unwrap_or(0))
}

pub(super) fn stats(dir: &Path) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    let f = |name: &str| -> PathBuf { dir.join(name) };

    let m = &mut s.memory;
    m.usage = read_u64(&f("memory.current"))?;
    m.max_usage = read_u64(&f("memory.peak"))?;
    m.limit = read_u64(&f("memory.max"))?;
    m.swap_usage = read_u64(&f("memory.swap.current"))?;
    m.swap_limit = read_u64(&f("memory.swap.max"))?;
    let ms = read_keyed(&f("memory.stat"))?;
    m.cache = get(&ms, "file");
    m.rss = get(&ms, "anon");

    let ev = read_keyed(&f("memory.events"))?;
    s.oom_kills = get(&ev, "oom_kill").unwrap_or(0);
    s.oom_events = get(&ev, "oom");

    let cs = read_keyed(&f("cpu.stat"))?;
    let us = |k: &str| get(&cs, k).map(|v| v.saturating_mul(1000));
    s.cpu.usage_ns = us("usage_usec");
    s.cpu.user_ns = us("user_usec");
    s.cpu.system_ns = us("system_usec");
    s.cpu.periods = get(&cs, "nr_periods");
    s.cpu.throttled_periods = get(&cs, "nr_throttled");
    s.cpu.throttled_ns = us("throttled_usec");

    s.pids.current = read_u64(&f("pids.current"))?;
    s.pids.limit = read_u64(&f("pids.max"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    #[test]
    fn create_enables_controllers_in_every_ancestor() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path(), "cpuset cpu io memory hugetlb pids rdma misc");
        let root = t.path().join("cg");
        // the kernel shows what is already on without '+'
        std::fs::write(root.join("cgroup.subtree_control"), "memory").unwrap();
        let cg = Cgroup::new(h, "/husk/pod/c1").unwrap();
        cg.create().unwrap();
        assert!(root.join("husk/pod/c1").is_dir());
        assert!(cg.exists());
        assert_eq!(
            cat(&root.join("cgroup.subtree_control")),
            "+cpu +cpuset +io +pids"
        );
        assert_eq!(
            cat(&root.join("husk/cgroup.subtree_control")),
            "+cpu +cpuset +io +memory +pids"
        );
        assert_eq!(
            cat(&root.join("husk/pod/cgroup.subtree_control")),
            "+cpu +cpuset +io +memory +pids"
        );
        // never in the leaf (it holds the processes)
        assert!(!root.join("husk/pod/c1/cgroup.subtree_control").exists());
    }

    #[test]
    fn create_only_enables_what_the_root_offers() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path(), "memory pids");
        let cg = Cgroup::new(h, "c1").unwrap();
        cg.create().unwrap();
        let root = t.path().join("cg");
        assert_eq!(cat(&root.join("cgroup.subtree_control")), "+memory +pids");
        // nothing offered: no subtree_control write at all
        let t2 = tempfile::tempdir().unwrap();
        let h = fake_v2(t2.path(), "");
        Cgroup::new(h, "a/b").unwrap().create().unwrap();
        assert!(!t2.path().join("cg/cgroup.subtree_control").exists());
        assert!(t2.path().join("cg/a/b").is_dir());
    }

    #[test]
    fn apply_writes_v2_values() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path(), "cpuset cpu io memory hugetlb pids");
        let cg = Cgroup::new(h, "/husk/c1").unwrap();
        cg.create().unwrap();
        let r = resources(
            r#"{
            "memory": {"limit": 268435456, "reservation": 134217728, "swap": 536870912},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 64},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "unified": {"memory.high": "200000000"}
        }"#,
        );
        cg.apply(&r).unwrap();
        let d = t.path().join("cg/husk/c1");
        assert_eq!(cat(&d.join("memory.max")), "268435456");
        assert_eq!(cat(&d.join("memory.low")), "134217728");
        assert_eq!(cat(&d.join("memory.swap.max")), "268435456"); // swap - limit
        assert_eq!(cat(&d.join("cpu.weight")), "39");
        assert_eq!(cat(&d.join("cpu.max")), "50000 100000");
        assert_eq!(cat(&d.join("cpuset.cpus")), "0-1");
        assert_eq!(cat(&d.join("cpuset.mems")), "0");
        assert_eq!(cat(&d.join("pids.max")), "64");
        assert_eq!(cat(&d.join("hugetlb.2MB.max")), "4194304");
        assert_eq!(cat(&d.join("memory.high")), "200000000");
        // hugetlb enabled on demand
        assert!(cat(&t.path().join("cg/husk/cgroup.subtree_control")).contains("+hugetlb"));
    }

    #[test]
    fn apply_unlimited_and_untouched() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v2(t.path(), "cpu memory pids");
        let cg = Cgroup::new(h, "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/c");
        cg.apply(&resources(
            r#"{"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 20000}, "pids": {"limit": 0}}"#,
        ))
        .unwrap();
        assert_eq!(cat(&d.join("memory.max")), "max");
        assert_eq!(cat(&d.join("memory.swap.max")), "max");
        assert_eq!(cat(&d.join("cpu.max")), "max 20000");
        assert_eq!(cat(&d.join("pids.max")), "max");
        // swap == limit: no swap
        cg.apply(&resources(r#"{"memory": {"limit": 1000, "swap": 1000}}"#))
            .unwrap();
        assert_eq!(cat(&d.join("memory.swap.max")), "0");
        // only what is set is touched
        let t2 = tempfile::tempdir().unwrap();
        let cg2 = Cgroup::new(fake_v2(t2.path(), "cpu memory pids"), "c").unwrap();
        cg2.create().unwrap();
        cg2.apply(&resources(r#"{"pids": {"limit": 5}}"#)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(t2.path().join("cg/c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, vec!["pids.max"]);
    }

    #[test]
    fn apply_rejects_bad_swap_and_realtime() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), "cpu memory"), "c").unwrap();
        cg.create().unwrap();
        let e = cg
            .apply(&resources(r#"{"memory": {"limit": 2000, "swap": 1000}}"#))
            .unwrap_err();
        assert!(e.to_string().contains("must be >= memory.limit"), "{e}");
        let e = cg
            .apply(&resources(r#"{"cpu": {"realtimeRuntime": 1000}}"#))
            .unwrap_err();
        assert!(e.to_string().contains("cgroup v2"), "{e}");
        // Device rules need a real cgroup2 directory to attach to; a fake
        // tree (or a runtime without CAP_BPF) gets an error, never silence.
        let e = cg
            .apply(&resources(
                r#"{"devices": [{"allow": false, "access": "rwm"}]}"#,
            ))
            .unwrap_err();
        assert!(e.to_string().contains("linux.resources.devices"), "{e}");
    }

    #[test]
    fn apply_io() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), "io"), "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/c");
        cg.apply(&resources(
            r#"{"blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}}"#,
        ))
        .unwrap();
        assert_eq!(cat(&d.join("io.weight")), "4950");
        assert_eq!(cat(&d.join("io.max")), "8:0 rbps=1048576");
        // with BFQ, the v1 scale goes to io.bfq.weight
        std::fs::write(d.join("io.bfq.weight"), "default 100").unwrap();
        cg.apply(&resources(r#"{"blockIO": {"weight": 500}}"#))
            .unwrap();
        assert_eq!(cat(&d.join("io.bfq.weight")), "500");
    }

    #[test]
    fn add_process_and_pids_recursive() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), ""), "c").unwrap();
        cg.create().unwrap();
        cg.add_process(4242).unwrap();
        let d = t.path().join("cg/c");
        assert_eq!(cat(&d.join("cgroup.procs")), "4242");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/cgroup.procs"), "7\n").unwrap();
        assert_eq!(cg.pids().unwrap(), vec![7, 4242]);
    }

    #[test]
    fn freeze_and_thaw_fake() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), ""), "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/c");
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        cg.freeze().unwrap();
        assert_eq!(cat(&d.join("cgroup.freeze")), "1");
        assert!(cg.is_frozen().unwrap());
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        cg.thaw().unwrap();
        assert_eq!(cat(&d.join("cgroup.freeze")), "0");
        assert!(!cg.is_frozen().unwrap());
    }

    #[test]
    fn freeze_times_out_and_thaws_back() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), ""), "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/c");
        std::fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let e = super::set_frozen(&d, true, std::time::Duration::from_millis(50)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cgroup.events") && msg.contains("frozen 1"),
            "{msg}"
        );
        assert!(msg.contains("thawed again"), "{msg}");
        assert_eq!(cat(&d.join("cgroup.freeze")), "0");
    }

    #[test]
    fn stats_from_fake_files() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), ""), "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/c");
        let w = |n: &str, v: &str| std::fs::write(d.join(n), v).unwrap();
        w("memory.current", "1048576\n");
        w("memory.peak", "2097152\n");
        w("memory.max", "max\n");
        w("memory.swap.current", "4096\n");
        w("memory.swap.max", "8192\n");
        w("memory.stat", "anon 700000\nfile 300000\nkernel 1000\n");
        w(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
        );
        w(
            "cpu.stat",
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 700\n",
        );
        w("pids.current", "3\n");
        w("pids.max", "max\n");
        let s = cg.stats().unwrap();
        assert_eq!(s.memory.usage, Some(1048576));
        assert_eq!(s.memory.max_usage, Some(2097152));
        assert_eq!(s.memory.limit, None);
        assert_eq!(s.memory.swap_usage, Some(4096));
        assert_eq!(s.memory.swap_limit, Some(8192));
        assert_eq!(s.memory.rss, Some(700000));
        assert_eq!(s.memory.cache, Some(300000));
        assert_eq!(s.oom_kills, 2);
        assert_eq!(s.oom_events, Some(3));
        assert_eq!(s.cpu.usage_ns, Some(5_000_000));
        assert_eq!(s.cpu.user_ns, Some(3_000_000));
        assert_eq!(s.cpu.system_ns, Some(2_000_000));
        assert_eq!(s.cpu.periods, Some(10));
        assert_eq!(s.cpu.throttled_periods, Some(4));
        assert_eq!(s.cpu.throttled_ns, Some(700_000));
        assert_eq!(s.pids.current, Some(3));
        assert_eq!(s.pids.limit, None);
        assert_eq!(cg.oom_kills().unwrap(), 2);
        // missing files are None/0, not errors
        let t2 = tempfile::tempdir().unwrap();
        let cg2 = Cgroup::new(fake_v2(t2.path(), ""), "c").unwrap();
        assert_eq!(cg2.stats().unwrap(), Stats::default());
        assert_eq!(cg2.oom_kills().unwrap(), 0);
    }

    #[test]
    fn destroy_removes_nested_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v2(t.path(), "memory"), "husk/c1").unwrap();
        cg.create().unwrap();
        let d = t.path().join("cg/husk/c1");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/cgroup.procs"), "").unwrap();
        std::fs::write(d.join("memory.max"), "max").unwrap();
        cg.destroy().unwrap();
        assert!(!d.exists());
        assert!(!cg.exists());
        // the shared parent stays
        assert!(t.path().join("cg/husk").is_dir());
        cg.destroy().unwrap();
    }
}
