//! cgroup v1 (one hierarchy per controller, or per co-mounted group), and
//! the v1 side of hybrid hosts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};

use super::stats::{get, read_keyed, read_limit_u64, read_u64};
use super::{check_swap, fs, pids_value, v2, Cgroup, CgroupError, Hierarchy, Stats};

/// The cgroup's directory in `controller`'s hierarchy, if it is mounted.
fn opt_dir(cg: &Cgroup, controller: &str) -> Option<PathBuf> {
    cg.hierarchy
        .controller_root(controller)
        .map(|r| cg.dir_in(r))
}

/// Like [`opt_dir`], but a missing controller is an error naming what needs it.
fn dir(cg: &Cgroup, controller: &str, needed_for: &str) -> Result<PathBuf, CgroupError> {
    opt_dir(cg, controller).ok_or_else(|| missing(controller, needed_for))
}

fn missing(controller: &str, needed_for: &str) -> CgroupError {
    CgroupError::ControllerMissing {
        controller: controller.to_string(),
        needed_for: needed_for.to_string(),
        alternative: if needed_for.starts_with("linux.resources") {
            format!(" or drop {needed_for} from the spec")
        } else {
            String::new()
        },
    }
}

fn unified_root(cg: &Cgroup) -> Option<&Path> {
    match &cg.hierarchy {
        Hierarchy::V1 { unified, .. } => unified.as_deref(),
        Hierarchy::V2 { .. } => None,
    }
}

pub(super) fn create(cg: &Cgroup) -> Result<(), CgroupError> {
    for (names, root) in cg.hierarchy.v1_mounts() {
        if names.split(',').any(|n| n == "cpuset") {
            create_cpuset(root, &cg.path)?;
        } else {
            fs::mkdir_p(&cg.dir_in(root))?;
        }
    }
    if let Some(u) = unified_root(cg) {
        if let Err(e) = fs::mkdir_p(&cg.dir_in(u)) {
            tracing::warn!(error = %e, "hybrid host: cannot create the cgroup in the unified tree");
        }
    }
    Ok(())
}

/// mkdir each level of `rel` under the cpuset root; a new cpuset has empty
/// cpus/mems (unless cgroup.clone_children is set), and no process can join
/// it, so empty ones are copied down from the parent.
fn create_cpuset(root: &Path, rel: &str) -> Result<(), CgroupError> {
    let mut cpus = read_nonempty(&root.join("cpuset.cpus"))?;
    let mut mems = read_nonempty(&root.join("cpuset.mems"))?;
    let mut dir = root.to_path_buf();
    for comp in rel.split('/') {
        dir.push(comp);
        fs::mkdir_p(&dir)?;
        cpus = inherit(&dir.join("cpuset.cpus"), cpus)?;
        mems = inherit(&dir.join("cpuset.mems"), mems)?;
    }
    Ok(())
}

fn read_nonempty(path: &Path) -> Result<Option<String>, CgroupError> {
    Ok(fs::read_opt(path)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

fn inherit(file: &Path, parent: Option<String>) -> Result<Option<String>, CgroupError> {
    match read_nonempty(file)? {
        Some(own) => Ok(Some(own)),
        None => {
            if let Some(v) = &parent {
                fs::write(file, v)?;
            }
            Ok(parent)
        }
    }
}

pub(super) fn add_process(cg: &Cgroup, pid: i32) -> Result<(), CgroupError> {
    let pid = pid.to_string();
    for (_, root) in cg.hierarchy.v1_mounts() {
        fs::write(&cg.dir_in(root).join("cgroup.procs"), &pid)?;
    }
    if let Some(u) = unified_root(cg) {
        let d = cg.dir_in(u);
        if let Err(e) = fs::mkdir_p(&d).and_then(|()| fs::write(&d.join("cgroup.procs"), &pid)) {
            tracing::warn!(error = %e, "hybrid host: cannot join the cgroup in the unified tree");
        }
    }
    Ok(())
}

/// Moves the calling thread, and only it, into the cgroup in every v1
/// hierarchy, by writing "0" to each `tasks` file. The kernel takes its
/// global threadgroup lock (and its RCU grace period) only to move whole
/// processes or other threads, not the caller alone. Returns the
/// directories the thread was in, for [`leave_thread`]. On failure the
/// thread is put back where it was.
pub(super) fn enter_thread(cg: &Cgroup) -> Result<Vec<PathBuf>, CgroupError> {
    let own = fs::read(Path::new("/proc/thread-self/cgroup"))?;
    let mut previous = Vec::new();
    for (names, root) in cg.hierarchy.v1_mounts() {
        let here = root.join(own_path(&own, &names).trim_start_matches('/'));
        if let Err(e) = fs::write(&cg.dir_in(root).join("tasks"), "0") {
            leave_thread(&previous);
            return Err(e);
        }
        previous.push(here);
    }
    Ok(previous)
}

/// Puts the calling thread back into `dirs` (from [`enter_thread`]). Best
/// effort: a thread that cannot go back leaves the cgroup when it exits.
pub(super) fn leave_thread(dirs: &[PathBuf]) {
    for d in dirs {
        if let Err(e) = fs::write(&d.join("tasks"), "0") {
            tracing::debug!(error = %e, "moving a thread back to its cgroup");
        }
    }
}

/// The calling thread's path in the v1 hierarchy of `names` (a mount's
/// comma-joined controllers), from /proc/thread-self/cgroup lines
/// "ID:CONTROLLERS:PATH"; "/" if not listed.
fn own_path<'a>(proc_cgroup: &'a str, names: &str) -> &'a str {
    proc_cgroup
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let listed = |n: &str| controllers.split(',').any(|c| c == n);
            names.split(',').any(listed).then_some(path)
        })
        .unwrap_or("/")
}

/// The hierarchy used to list processes (every v1 hierarchy holds them all).
fn procs_dir(cg: &Cgroup) -> Option<PathBuf> {
    ["pids", "freezer", "memory", "cpu", "devices"]
        .iter()
        .find_map(|c| opt_dir(cg, c))
        .or_else(|| cg.hierarchy.v1_mounts().first().map(|(_, r)| cg.dir_in(r)))
}

pub(super) fn pids(cg: &Cgroup) -> Result<Vec<i32>, CgroupError> {
    match procs_dir(cg) {
        Some(d) => fs::read_procs_recursive(&d),
        None => Ok(Vec::new()),
    }
}

pub(super) fn apply(cg: &Cgroup, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        memory(cg, m)?;
    }
    if let Some(c) = r.cpu() {
        cpu(cg, c)?;
    }
    if let Some(p) = r.pids() {
        let d = dir(cg, "pids", "linux.resources.pids")?;
        fs::write(&d.join("pids.max"), &pids_value(p.limit()))?;
    }
    if let Some(b) = r.block_io() {
        blkio(cg, b)?;
    }
    if let Some(h) = r.hugepage_limits() {
        if !h.is_empty() {
            hugetlb(cg, h)?;
        }
    }
    if let Some(n) = r.network() {
        if let Some(id) = n.class_id() {
            let d = dir(cg, "net_cls", "linux.resources.network.classID")?;
            fs::write(&d.join("net_cls.classid"), &id.to_string())?;
        }
        for p in n.priorities().as_deref().unwrap_or(&[]) {
            let d = dir(cg, "net_prio", "linux.resources.network.priorities")?;
            fs::write(
                &d.join("net_prio.ifpriomap"),
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }
    if let Some(rd) = r.rdma() {
        if !rd.is_empty() {
            let d = dir(cg, "rdma", "linux.resources.rdma")?;
            v2::rdma(&d.join("rdma.max"), rd)?;
        }
    }
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::Unsupported {
            what: "linux.resources.unified".to_string(),
            on: "this cgroup v1 host",
            hint: "it names cgroup v2 files, and the controllers here are v1; \
                   drop it or run on a cgroup v2 host"
                .to_string(),
        });
    }
    if let Some(d) = r.devices() {
        devices(cg, d)?;
    }
    Ok(())
}

fn memory(cg: &Cgroup, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().filter(|&v| v != 0);
    let mut swap = m.swap().filter(|&v| v != 0);
    let needs_dir = limit.is_some()
        || swap.is_some()
        || m.reservation().is_some_and(|v| v != 0)
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true)
        || m.kernel_tcp().is_some_and(|v| v != 0);
    if !needs_dir {
        return Ok(());
    }
    let d = dir(cg, "memory", "linux.resources.memory")?;
    let limit_file = d.join("memory.limit_in_bytes");
    let memsw_file = d.join("memory.memsw.limit_in_bytes");

    // Unlimited memory with swap unset means unlimited swap too (runc),
    // where the kernel accounts swap at all.
    if limit == Some(-1) && swap.is_none() && memsw_file.exists() {
        swap = Some(-1);
    }
    if let (Some(l), Some(s)) = (limit, swap) {
        if s > 0 {
            check_swap(l, s)?;
        }
    }
    let v = |x: i64| {
        if x < 0 {
            "-1".to_string()
        } else {
            x.to_string()
        }
    };
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // memsw must stay >= limit at every step: raise memsw first when
            // growing, lower the limit first when shrinking.
            // (Unlimited reads as a huge number: memory first, as runc.)
            let cur = read_u64(&limit_file)?;
            let grow_swap_first = s == -1 || cur.is_some_and(|c| c < s as u64);
            if grow_swap_first {
                fs::write(&memsw_file, &v(s))?;
                fs::write(&limit_file, &v(l))?;
            } else {
                fs::write(&limit_file, &v(l))?;
                fs::write(&memsw_file, &v(s))?;
            }
        }
        (Some(l), None) => fs::write(&limit_file, &v(l))?,
        (None, Some(s)) => fs::write(&memsw_file, &v(s))?,
        (None, None) => {}
    }
    if let Some(res) = m.reservation().filter(|&v| v != 0) {
        fs::write(&d.join("memory.soft_limit_in_bytes"), &v(res))?;
    }
    if let Some(sw) = m.swappiness() {
        if sw > 100 {
            return Err(CgroupError::InvalidResources(format!(
                "memory.swappiness {sw} is out of range; use 0..100"
            )));
        }
        fs::write(&d.join("memory.swappiness"), &sw.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        fs::write(&d.join("memory.oom_control"), "1")?;
    }
    if let Some(tcp) = m.kernel_tcp().filter(|&v| v != 0) {
        fs::write(&d.join("memory.kmem.tcp.limit_in_bytes"), &v(tcp))?;
    }
    Ok(())
}

fn cpu(cg: &Cgroup, c: &LinuxCpu) -> Result<(), CgroupError> {
    let shares = c.shares().filter(|&s| s != 0);
    let quota = c.quota().filter(|&q| q != 0);
    let period = c.period().filter(|&p| p != 0);
    let rt_period = c.realtime_period().filter(|&p| p != 0);
    let rt_runtime = c.realtime_runtime().filter(|&r| r != 0);
    if shares.is_some()
        || quota.is_some()
        || period.is_some()
        || rt_period.is_some()
        || rt_runtime.is_some()
        || c.burst().is_some()
        || c.idle().is_some()
    {
        let d = dir(cg, "cpu", "linux.resources.cpu")?;
        if let Some(s) = shares {
            fs::write(&d.join("cpu.shares"), &s.to_string())?;
        }
        let quota_s = quota.map(|q| {
            if q < 0 {
                "-1".to_string()
            } else {
                q.to_string()
            }
        });
        let mut quota_done = false;
        if let Some(p) = period {
            let pf = d.join("cpu.cfs_period_us");
            if let Err(e) = fs::write(&pf, &p.to_string()) {
                // A shorter period can be refused while the old quota is
                // larger than it allows: set the quota first, then retry.
                match (&quota_s, &e) {
                    (Some(q), CgroupError::Write { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        fs::write(&d.join("cpu.cfs_quota_us"), q)?;
                        quota_done = true;
                        fs::write(&pf, &p.to_string())?;
                    }
                    _ => return Err(e),
                }
            }
        }
        if let (Some(q), false) = (&quota_s, quota_done) {
            fs::write(&d.join("cpu.cfs_quota_us"), q)?;
        }
        if let Some(b) = c.burst() {
            fs::write(&d.join("cpu.cfs_burst_us"), &b.to_string())?;
        }
        if let Some(p) = rt_period {
            fs::write(&d.join("cpu.rt_period_us"), &p.to_string())?;
        }
        if let Some(r) = rt_runtime {
            fs::write(&d.join("cpu.rt_runtime_us"), &r.to_string())?;
        }
        if let Some(i) = c.idle() {
            fs::write(&d.join("cpu.idle"), &i.to_string())?;
        }
    }
    let has_cpuset = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.trim().is_empty());
    if has_cpuset(c.cpus()) || has_cpuset(c.mems()) {
        let d = dir(cg, "cpuset", "linux.resources.cpu.cpus/mems")?;
        v2::cpuset(&d, c)?;
    }
    Ok(())
}

fn blkio(cg: &Cgroup, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    let weight = b.weight().filter(|&w| w != 0);
    let leaf = b.leaf_weight().filter(|&w| w != 0);
    let wdevs = b.weight_device().as_deref().unwrap_or(&[]);
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ];
    let any_throttle = throttles
        .iter()
        .any(|(l, _)| l.as_ref().is_some_and(|l| !l.is_empty()));
    if weight.is_none() && leaf.is_none() && wdevs.is_empty() && !any_throttle {
        return Ok(());
    }
    let d = dir(cg, "blkio", "linux.resources.blockIO")?;
    if weight.is_some() || !wdevs.is_empty() {
        // CFQ's blkio.weight, or BFQ's blkio.bfq.weight (same 10..1000 scale).
        let prefix = if !d.join("blkio.weight").exists() && d.join("blkio.bfq.weight").exists() {
            "blkio.bfq."
        } else {
            "blkio."
        };
        if let Some(w) = weight {
            fs::write(&d.join(format!("{prefix}weight")), &w.to_string())?;
        }
        for dev in wdevs {
            if let Some(w) = dev.weight() {
                let line = format!("{}:{} {w}", dev.major(), dev.minor());
                fs::write(&d.join(format!("{prefix}weight_device")), &line)?;
            }
            if let Some(w) = dev.leaf_weight() {
                let line = format!("{}:{} {w}", dev.major(), dev.minor());
                fs::write(&d.join("blkio.leaf_weight_device"), &line)?;
            }
        }
    }
    if let Some(w) = leaf {
        fs::write(&d.join("blkio.leaf_weight"), &w.to_string())?;
    }
    for (list, file) in throttles {
        for dev in list.as_deref().unwrap_or(&[]) {
            let line = format!("{}:{} {}", dev.major(), dev.minor(), dev.rate());
            fs::write(&d.join(file), &line)?;
        }
    }
    Ok(())
}

fn hugetlb(
    cg: &Cgroup,
    limits: &[oci_spec::runtime::LinuxHugepageLimit],
) -> Result<(), CgroupError> {
    let Some(d) = opt_dir(cg, "hugetlb") else {
        // Hybrid hosts may give hugetlb to the unified tree.
        if let Some(u) = unified_root(cg) {
            return v2::hugetlb(u, &cg.path, limits);
        }
        return Err(missing("hugetlb", "linux.resources.hugepageLimits"));
    };
    for l in limits {
        v2::check_page_size(l.page_size())?;
        let v = if l.limit() < 0 {
            "-1".to_string()
        } else {
            l.limit().to_string()
        };
        fs::write(
            &d.join(format!("hugetlb.{}.limit_in_bytes", l.page_size())),
            &v,
        )?;
        let rsvd = d.join(format!("hugetlb.{}.rsvd.limit_in_bytes", l.page_size()));
        if rsvd.exists() {
            fs::write(&rsvd, &v)?;
        }
    }
    Ok(())
}

/// One devices.allow / devices.deny line: "c 1:3 rwm", '*' for any number.
pub(crate) fn device_rule(d: &LinuxDeviceCgroup) -> String {
    let num = |n: Option<i64>| {
        n.filter(|&n| n >= 0)
            .map_or("*".to_string(), |n| n.to_string())
    };
    let access = d
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    format!(
        "{} {}:{} {}",
        d.typ().unwrap_or(LinuxDeviceType::A).as_str(),
        num(d.major()),
        num(d.minor()),
        access
    )
}

fn is_deny_all(d: &LinuxDeviceCgroup) -> bool {
    !d.allow()
        && matches!(d.typ(), None | Some(LinuxDeviceType::A))
        && d.major().is_none_or(|m| m < 0)
        && d.minor().is_none_or(|m| m < 0)
}

/// Deny everything, then apply the rules in order (the OCI list is an
/// ordered allow/deny list starting from "deny all").
fn devices(cg: &Cgroup, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let d = dir(cg, "devices", "linux.resources.devices")?;
    fs::write(&d.join("devices.deny"), "a")?;
    let skip = rules.iter().take_while(|r| is_deny_all(r)).count();
    for rule in &rules[skip..] {
        let file = if rule.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        fs::write(&d.join(file), &device_rule(rule))?;
    }
    Ok(())
}

pub(super) fn set_frozen(cg: &Cgroup, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let d = dir(cg, "freezer", "pausing and resuming containers")?;
    let file = d.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    fs::write(&file, want)?;
    let start = Instant::now();
    let mut last = String::new();
    let settled = fs::wait_until(
        timeout,
        || {
            last = fs::read(&file)?.trim().to_string();
            Ok(last == want)
        },
        // A freeze can stall on tasks forking meanwhile; asking again helps.
        || fs::write(&file, want),
    )?;
    if settled {
        return Ok(());
    }
    let hint = if frozen {
        let _ = fs::write(&file, "THAWED");
        "the cgroup was thawed again; processes in uninterruptible sleep (D state, \
         e.g. blocked on NFS or FUSE) delay freezing: check /proc/<pid>/stat and retry"
    } else {
        "check the parent cgroups: a frozen ancestor keeps its children frozen"
    };
    Err(CgroupError::Timeout {
        path: file,
        want: want.to_string(),
        last,
        waited_ms: start.elapsed().as_millis() as u64,
        hint: hint.to_string(),
    })
}

pub(super) fn is_frozen(cg: &Cgroup) -> Result<bool, CgroupError> {
    let Some(d) = opt_dir(cg, "freezer") else {
        return Ok(false);
    };
    Ok(fs::read_opt(&d.join("freezer.state"))?.is_some_and(|s| s.trim() == "FROZEN"))
}

pub(super) fn oom_kills(cg: &Cgroup) -> Result<u64, CgroupError> {
    let Some(d) = opt_dir(cg, "memory") else {
        return Ok(0);
    };
    Ok(get(&read_keyed(&d.join("memory.oom_control"))?, "oom_kill").unwrap_or(0))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

pub(super) fn stats(cg: &Cgroup) -> Result<Stats, CgroupError> {
    let mut s = Stats::default();
    if let Some(d) = opt_dir(cg, "memory") {
        let m = &mut s.memory;
        m.usage = read_u64(&d.join("memory.usage_in_bytes"))?;
        m.max_usage = read_u64(&d.join("memory.max_usage_in_bytes"))?;
        m.limit = read_limit_u64(&d.join("memory.limit_in_bytes"))?;
        let sw_usage = read_u64(&d.join("memory.memsw.usage_in_bytes"))?;
        let sw_limit = read_limit_u64(&d.join("memory.memsw.limit_in_bytes"))?;
        m.swap_usage = sw_usage.zip(m.usage).map(|(a, b)| a.saturating_sub(b));
        m.swap_limit = sw_limit.zip(m.limit).map(|(a, b)| a.saturating_sub(b));
        let ms = read_keyed(&d.join("memory.stat"))?;
        m.cache = get(&ms, "total_cache").or_else(|| get(&ms, "cache"));
        m.rss = get(&ms, "total_rss").or_else(|| get(&ms, "rss"));
        s.oom_kills = get(&read_keyed(&d.join("memory.oom_control"))?, "oom_kill").unwrap_or(0);
    }
    if let Some(d) = opt_dir(cg, "cpuacct") {
        s.cpu.usage_ns = read_u64(&d.join("cpuacct.usage"))?;
        s.cpu.user_ns = read_u64(&d.join("cpuacct.usage_user"))?;
        s.cpu.system_ns = read_u64(&d.join("cpuacct.usage_sys"))?;
        if s.cpu.user_ns.is_none() || s.cpu.system_ns.is_none() {
            // Older kernels: cpuacct.stat in clock ticks.
            let st = read_keyed(&d.join("cpuacct.stat"))?;
            let ns = |t: u64| t.saturating_mul(1_000_000_000 / clock_ticks());
            s.cpu.user_ns = s.cpu.user_ns.or_else(|| get(&st, "user").map(ns));
            s.cpu.system_ns = s.cpu.system_ns.or_else(|| get(&st, "system").map(ns));
        }
    }
    if let Some(d) = opt_dir(cg, "cpu") {
        let cs = read_keyed(&d.join("cpu.stat"))?;
        s.cpu.periods = get(&cs, "nr_periods");
        s.cpu.throttled_periods = get(&cs, "nr_throttled");
        s.cpu.throttled_ns = get(&cs, "throttled_time");
    }
    if let Some(d) = opt_dir(cg, "pids") {
        s.pids.current = read_u64(&d.join("pids.current"))?;
        s.pids.limit = read_u64(&d.join("pids.max"))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    const ALL: &[&str] = &[
        "cpu,cpuacct",
        "cpuset",
        "memory",
        "pids",
        "freezer",
        "devices",
        "blkio",
        "name=systemd",
    ];

    #[test]
    fn create_makes_every_controller_dir_and_inherits_cpuset() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v1(t.path(), ALL, false);
        let cg = Cgroup::new(h, "/husk/pod/c1").unwrap();
        cg.create().unwrap();
        for m in ALL {
            assert!(t.path().join(m).join("husk/pod/c1").is_dir(), "{m}");
        }
        for lvl in ["husk", "husk/pod", "husk/pod/c1"] {
            let d = t.path().join("cpuset").join(lvl);
            assert_eq!(cat(&d.join("cpuset.cpus")), "0-3", "{lvl}");
            assert_eq!(cat(&d.join("cpuset.mems")), "0", "{lvl}");
        }
        assert!(cg.exists());
        // an existing, narrower parent is what children inherit
        std::fs::write(t.path().join("cpuset/husk/cpuset.cpus"), "1\n").unwrap();
        let cg2 = Cgroup::new(cg.hierarchy().clone(), "husk/c2").unwrap();
        cg2.create().unwrap();
        assert_eq!(cat(&t.path().join("cpuset/husk/c2/cpuset.cpus")), "1");
    }

    #[test]
    fn apply_writes_v1_values() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v1(t.path(), ALL, false);
        let cg = Cgroup::new(h, "husk/c1").unwrap();
        cg.create().unwrap();
        let r = resources(
            r#"{
            "memory": {"limit": 268435456, "reservation": 134217728, "swap": 536870912, "swappiness": 10},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "1-2", "mems": "0"},
            "pids": {"limit": 0},
            "blockIO": {"weight": 300, "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 100}]}
        }"#,
        );
        cg.apply(&r).unwrap();
        let p = |m: &str, f: &str| cat(&t.path().join(m).join("husk/c1").join(f));
        assert_eq!(p("memory", "memory.limit_in_bytes"), "268435456");
        assert_eq!(p("memory", "memory.memsw.limit_in_bytes"), "536870912");
        assert_eq!(p("memory", "memory.soft_limit_in_bytes"), "134217728");
        assert_eq!(p("memory", "memory.swappiness"), "10");
        assert_eq!(p("cpu,cpuacct", "cpu.shares"), "512");
        assert_eq!(p("cpu,cpuacct", "cpu.cfs_period_us"), "100000");
        assert_eq!(p("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        assert_eq!(p("cpuset", "cpuset.cpus"), "1-2");
        assert_eq!(p("cpuset", "cpuset.mems"), "0");
        assert_eq!(p("pids", "pids.max"), "max");
        assert_eq!(p("blkio", "blkio.weight"), "300");
        assert_eq!(p("blkio", "blkio.throttle.write_iops_device"), "8:16 100");
        // devices untouched when not given
        assert!(!t.path().join("devices/husk/c1/devices.deny").exists());
    }

    #[test]
    fn memsw_order_and_unlimited() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), &["memory"], false), "c").unwrap();
        cg.create().unwrap();
        let d = t.path().join("memory/c");
        // lowering: current limit (from a previous apply) is above the new swap
        std::fs::write(d.join("memory.limit_in_bytes"), "1000000\n").unwrap();
        cg.apply(&resources(r#"{"memory": {"limit": 1000, "swap": 2000}}"#))
            .unwrap();
        assert_eq!(cat(&d.join("memory.limit_in_bytes")), "1000");
        assert_eq!(cat(&d.join("memory.memsw.limit_in_bytes")), "2000");
        // unlimited memory, swap unset: memsw also unlimited (file present)
        cg.apply(&resources(r#"{"memory": {"limit": -1}}"#))
            .unwrap();
        assert_eq!(cat(&d.join("memory.limit_in_bytes")), "-1");
        assert_eq!(cat(&d.join("memory.memsw.limit_in_bytes")), "-1");
        // swap below limit is refused before touching anything
        let e = cg
            .apply(&resources(r#"{"memory": {"limit": 5000, "swap": 10}}"#))
            .unwrap_err();
        assert!(e.to_string().contains("must be >= memory.limit"), "{e}");
        assert_eq!(cat(&d.join("memory.limit_in_bytes")), "-1");
    }

    #[test]
    fn cpu_quota_unlimited() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), &["cpu"], false), "c").unwrap();
        cg.create().unwrap();
        cg.apply(&resources(r#"{"cpu": {"quota": -1}}"#)).unwrap();
        assert_eq!(cat(&t.path().join("cpu/c/cpu.cfs_quota_us")), "-1");
        assert!(!t.path().join("cpu/c/cpu.cfs_period_us").exists());
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), &["memory"], false), "c").unwrap();
        cg.create().unwrap();
        let e = cg
            .apply(&resources(r#"{"pids": {"limit": 3}}"#))
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"pids\" controller"), "{msg}");
        assert!(msg.contains("drop linux.resources.pids"), "{msg}");
        let e = cg.freeze().unwrap_err();
        assert!(e.to_string().contains("freezer"), "{e}");
        let e = cg
            .apply(&resources(r#"{"unified": {"memory.high": "1"}}"#))
            .unwrap_err();
        assert!(e.to_string().contains("cgroup v2"), "{e}");
    }

    #[test]
    fn devices_rules() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), &["devices"], false), "c").unwrap();
        cg.create().unwrap();
        cg.apply(&resources(
            r#"{"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 136, "access": "rw"},
                {"allow": false, "type": "b", "major": 8, "minor": 0}
            ]}"#,
        ))
        .unwrap();
        let d = t.path().join("devices/c");
        // a fake tree keeps only the last write per file
        assert_eq!(cat(&d.join("devices.allow")), "c 136:* rw");
        assert_eq!(cat(&d.join("devices.deny")), "b 8:0 rwm");
        let rule: oci_spec::runtime::LinuxDeviceCgroup = serde_json::from_str(
            r#"{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}"#,
        )
        .unwrap();
        assert_eq!(super::device_rule(&rule), "c 1:3 rwm");
        let all: oci_spec::runtime::LinuxDeviceCgroup =
            serde_json::from_str(r#"{"allow": true}"#).unwrap();
        assert_eq!(super::device_rule(&all), "a *:* rwm");
    }

    #[test]
    fn hybrid_joins_unified_and_hugetlb_goes_there() {
        let t = tempfile::tempdir().unwrap();
        let h = fake_v1(t.path(), &["memory", "pids"], true);
        std::fs::write(t.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let cg = Cgroup::new(h, "husk/c1").unwrap();
        cg.create().unwrap();
        assert!(t.path().join("unified/husk/c1").is_dir());
        cg.add_process(77).unwrap();
        assert_eq!(cat(&t.path().join("memory/husk/c1/cgroup.procs")), "77");
        assert_eq!(cat(&t.path().join("pids/husk/c1/cgroup.procs")), "77");
        assert_eq!(cat(&t.path().join("unified/husk/c1/cgroup.procs")), "77");
        assert_eq!(cg.pids().unwrap(), vec![77]);
        cg.apply(&resources(
            r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}]}"#,
        ))
        .unwrap();
        assert_eq!(
            cat(&t.path().join("unified/husk/c1/hugetlb.2MB.max")),
            "2097152"
        );
        assert_eq!(
            cat(&t.path().join("unified/cgroup.subtree_control")),
            "+hugetlb"
        );
        let dirs = cg.controller_dirs();
        assert_eq!(
            dirs.last().unwrap(),
            &(String::new(), t.path().join("unified/husk/c1"))
        );
        cg.destroy().unwrap();
        assert!(!cg.exists());
        assert!(!t.path().join("unified/husk/c1").exists());
        assert!(!t.path().join("memory/husk/c1").exists());
    }

    #[test]
    fn freeze_thaw_fake() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), &["freezer"], false), "c").unwrap();
        cg.create().unwrap();
        // a fake freezer.state reads back what was written
        cg.freeze().unwrap();
        assert!(cg.is_frozen().unwrap());
        cg.thaw().unwrap();
        assert!(!cg.is_frozen().unwrap());
    }

    #[test]
    fn stats_from_fake_files() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(
            fake_v1(t.path(), &["cpu", "cpuacct", "memory", "pids"], false),
            "c",
        )
        .unwrap();
        cg.create().unwrap();
        let w = |m: &str, n: &str, v: &str| {
            std::fs::write(t.path().join(m).join("c").join(n), v).unwrap()
        };
        w("memory", "memory.usage_in_bytes", "1000\n");
        w("memory", "memory.max_usage_in_bytes", "5000\n");
        w("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        w("memory", "memory.memsw.usage_in_bytes", "1500\n");
        w(
            "memory",
            "memory.memsw.limit_in_bytes",
            "9223372036854771712\n",
        );
        w(
            "memory",
            "memory.stat",
            "cache 10\nrss 20\ntotal_cache 100\ntotal_rss 200\n",
        );
        w(
            "memory",
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        );
        w("cpuacct", "cpuacct.usage", "123456789\n");
        w("cpuacct", "cpuacct.usage_user", "100000000\n");
        w("cpuacct", "cpuacct.usage_sys", "23456789\n");
        w(
            "cpu",
            "cpu.stat",
            "nr_periods 7\nnr_throttled 2\nthrottled_time 999\n",
        );
        w("pids", "pids.current", "2\n");
        w("pids", "pids.max", "50\n");
        let s = cg.stats().unwrap();
        assert_eq!(s.memory.usage, Some(1000));
        assert_eq!(s.memory.max_usage, Some(5000));
        assert_eq!(s.memory.limit, None);
        assert_eq!(s.memory.swap_usage, Some(500));
        assert_eq!(s.memory.swap_limit, None);
        assert_eq!(s.memory.cache, Some(100));
        assert_eq!(s.memory.rss, Some(200));
        assert_eq!(s.oom_kills, 4);
        assert_eq!(s.oom_events, None);
        assert_eq!(s.cpu.usage_ns, Some(123456789));
        assert_eq!(s.cpu.user_ns, Some(100000000));
        assert_eq!(s.cpu.system_ns, Some(23456789));
        assert_eq!(s.cpu.periods, Some(7));
        assert_eq!(s.cpu.throttled_periods, Some(2));
        assert_eq!(s.cpu.throttled_ns, Some(999));
        assert_eq!(s.pids.current, Some(2));
        assert_eq!(s.pids.limit, Some(50));
        assert_eq!(cg.oom_kills().unwrap(), 4);

        // finite limits: swap-only figures; old kernels: cpuacct.stat ticks
        w("memory", "memory.limit_in_bytes", "1000\n");
        w("memory", "memory.memsw.limit_in_bytes", "3000\n");
        std::fs::remove_file(t.path().join("cpuacct/c/cpuacct.usage_user")).unwrap();
        std::fs::remove_file(t.path().join("cpuacct/c/cpuacct.usage_sys")).unwrap();
        w("cpuacct", "cpuacct.stat", "user 5\nsystem 3\n");
        let s = cg.stats().unwrap();
        assert_eq!(s.memory.limit, Some(1000));
        assert_eq!(s.memory.swap_limit, Some(2000));
        let tick = 1_000_000_000 / super::clock_ticks();
        assert_eq!(s.cpu.user_ns, Some(5 * tick));
        assert_eq!(s.cpu.system_ns, Some(3 * tick));
    }

    #[test]
    fn own_path_finds_the_thread_per_mount() {
        let own = "9:name=systemd:/user.slice\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/u\n";
        assert_eq!(super::own_path(own, "memory"), "/a/b");
        assert_eq!(super::own_path(own, "cpu,cpuacct"), "/c");
        assert_eq!(super::own_path(own, "cpuacct"), "/c");
        assert_eq!(super::own_path(own, "name=systemd"), "/user.slice");
        assert_eq!(super::own_path(own, "pids"), "/");
    }

    #[test]
    fn destroy_removes_nested_in_every_hierarchy() {
        let t = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(fake_v1(t.path(), ALL, true), "husk/c1").unwrap();
        cg.create().unwrap();
        std::fs::create_dir_all(t.path().join("memory/husk/c1/sub/deeper")).unwrap();
        std::fs::write(
            t.path().join("memory/husk/c1/sub/memory.limit_in_bytes"),
            "1",
        )
        .unwrap();
        cg.destroy().unwrap();
        for m in ALL.iter().chain(&["unified"]) {
            assert!(!t.path().join(m).join("husk/c1").exists(), "{m}");
            assert!(t.path().join(m).join("husk").exists(), "{m}");
        }
        cg.destroy().unwrap();
        assert!(!cg.exists());
    }
}
