//! Tests against the real cgroup hierarchy of the machine running them.
//!
//! They need root and skip (pass, with a note on stderr) otherwise. Every
//! cgroup they make is named `husk-test-<pid>-<nanos>` and removed by a drop
//! guard, even when an assertion fails.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{SystemTime, UNIX_EPOCH};

use super::testutil::resources;
use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("husk-test-{}-{nanos}", std::process::id())
}

fn skip(why: &str) -> bool {
    eprintln!("skipping real-cgroup test: {why}");
    true
}

/// Kills the child and removes the cgroups when dropped.
struct Guard {
    child: Option<Child>,
    cgroups: Vec<Cgroup>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        for cg in self.cgroups.iter().rev() {
            let _ = cg.destroy();
        }
    }
}

fn leftovers(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut scan = |d: &Path| {
        if d.join(name).exists() {
            out.push(d.join(name));
        }
    };
    scan(Path::new("/sys/fs/cgroup"));
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            scan(&e.path());
        }
    }
    out
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep")
}

#[test]
fn host_detect() {
    match Hierarchy::detect() {
        Ok(h) => eprintln!("host cgroup hierarchy: {h:?}"),
        Err(e) => {
            // Containers without cgroupfs: nothing to test, but the error must be clear.
            assert!(e.to_string().contains("cgroup"), "{e}");
        }
    }
}

#[test]
fn host_lifecycle() {
    if !is_root() && skip("not root") {
        return;
    }
    let Ok(h) = Hierarchy::detect() else {
        skip("no cgroup filesystem");
        return;
    };
    let name = unique_name();
    let parent = Cgroup::new(h.clone(), &name).unwrap();
    let cg = Cgroup::new(h.clone(), &format!("/{name}/ctr")).unwrap();
    let mut guard = Guard {
        child: None,
        cgroups: vec![parent.clone(), cg.clone()],
    };

    if let Err(e) = cg.create() {
        if matches!(&e, CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
        {
            skip(&format!("cgroup root has processes of its own: {e}"));
            return;
        }
        panic!("create: {e}");
    }
    assert!(cg.exists());

    // Limits: only those this host can take.
    let swap_ok = match &h {
        Hierarchy::V1 { controllers, .. } => controllers
            .get("memory")
            .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists()),
        Hierarchy::V2 { .. } => cg.controller_dirs()[0].1.join("memory.swap.max").exists(),
    };
    let swap = if swap_ok {
        r#", "swap": 134217728"#
    } else {
        ""
    };
    let r = resources(&format!(
        r#"{{"memory": {{"limit": 67108864{swap}}},
            "cpu": {{"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"}},
            "pids": {{"limit": 32}}}}"#
    ));
    cg.apply(&r).expect("apply");
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    match &h {
        Hierarchy::V1 { .. } => {
            let d = |c: &str| cg.hierarchy().controller_root(c).map(|r| r.join(cg.path()));
            if let Some(m) = d("memory") {
                assert_eq!(read(m.join("memory.limit_in_bytes")), "67108864");
                if swap_ok {
                    assert_eq!(read(m.join("memory.memsw.limit_in_bytes")), "134217728");
                }
            }
            if let Some(c) = d("cpu") {
                assert_eq!(read(c.join("cpu.shares")), "512");
                assert_eq!(read(c.join("cpu.cfs_quota_us")), "50000");
            }
            if let Some(c) = d("cpuset") {
                assert_eq!(read(c.join("cpuset.cpus")), "0");
                // the intermediate level got a copy of the root's cpus
                assert!(!read(c.parent().unwrap().join("cpuset.cpus")).is_empty());
            }
            if let Some(p) = d("pids") {
                assert_eq!(read(p.join("pids.max")), "32");
            }
        }
        Hierarchy::V2 { root } => {
            let d = root.join(cg.path());
            assert_eq!(read(d.join("memory.max")), "67108864");
            assert_eq!(
                read(d.join("cpu.weight")),
                shares_to_weight(512).to_string()
            );
            assert_eq!(read(d.join("cpu.max")), "50000 100000");
            assert_eq!(read(d.join("pids.max")), "32");
        }
    }

    // A process in it.
    guard.child = Some(sleeper());
    let pid = guard.child.as_ref().map(|c| c.id() as i32).unwrap();
    cg.add_process(pid).expect("add_process");
    assert!(cg.pids().unwrap().contains(&pid));
    assert!(
        parent.pids().unwrap().contains(&pid),
        "pids() includes sub-cgroups"
    );
    if h.is_hybrid() {
        let u = h
            .unified_root()
            .unwrap()
            .join(cg.path())
            .join("cgroup.procs");
        assert!(
            read(u).lines().any(|l| l == pid.to_string()),
            "joined the unified tree"
        );
    }

    let s = cg.stats().expect("stats");
    eprintln!("stats: {}", serde_json::to_string(&s).unwrap());
    if h.is_v2() || h.controller_root("pids").is_some() {
        assert!(s.pids.current.unwrap_or(0) >= 1);
        assert_eq!(s.pids.limit, Some(32));
    }
    if h.is_v2() || h.controller_root("memory").is_some() {
        assert_eq!(s.memory.limit, Some(67108864));
        assert!(s.memory.usage.is_some());
    }
    assert_eq!(cg.oom_kills().unwrap(), 0);

    if h.is_v2() || h.controller_root("freezer").is_some() {
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().unwrap());
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().unwrap());
    }

    // Busy: destroy waits about a second, then says why.
    let e = cg.destroy().unwrap_err();
    assert!(
        matches!(&e, CgroupError::Busy { pids, .. } if pids.contains(&pid)),
        "{e}"
    );

    if let Some(mut c) = guard.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    cg.destroy().expect("destroy");
    assert!(!cg.exists());
    parent.destroy().expect("destroy parent");
    assert!(!parent.exists());
    cg.destroy().expect("destroy is idempotent");
    assert_eq!(leftovers(&name), Vec::<PathBuf>::new());
}

/// On hybrid hosts, drive the v2 code (freezer, procs, rmdir) against the
/// real cgroup2 tree mounted at the unified mount point.
#[test]
fn host_v2_code_on_unified_tree() {
    if !is_root() && skip("not root") {
        return;
    }
    let Ok(h) = Hierarchy::detect() else {
        skip("no cgroup filesystem");
        return;
    };
    let Some(unified) = h.unified_root().filter(|_| h.is_hybrid()) else {
        skip("not a hybrid host (the v2 path is covered by host_lifecycle on v2 hosts)");
        return;
    };
    if !unified.join("cgroup.freeze").exists() && !unified.join("cgroup.procs").exists() {
        skip("unified tree not usable");
        return;
    }
    let name = unique_name();
    let v2 = Hierarchy::V2 {
        root: unified.to_path_buf(),
    };
    let cg = Cgroup::new(v2, &name).unwrap();
    let mut guard = Guard {
        child: None,
        cgroups: vec![cg.clone()],
    };
    cg.create().expect("create");
    guard.child = Some(sleeper());
    let pid = guard.child.as_ref().map(|c| c.id() as i32).unwrap();
    cg.add_process(pid).expect("add_process");
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().unwrap());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    eprintln!("frozen sleeper: {state}");
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().unwrap());
    let s = cg.stats().expect("stats");
    assert!(s.cpu.usage_ns.is_some(), "cpu.stat is always there on v2");
    if let Some(mut c) = guard.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    cg.destroy().expect("destroy");
    assert!(!cg.exists());
    assert_eq!(leftovers(&name), Vec::<PathBuf>::new());
}

/// cgroup v2 device rules are an eBPF program: a process in the cgroup may
/// open the allowed /dev/null and not /dev/zero. Driven against the real
/// cgroup2 tree (the unified mount on hybrid hosts, the root on v2 hosts).
#[test]
fn host_v2_device_rules_are_enforced() {
    if !is_root() && skip("not root") {
        return;
    }
    let Ok(h) = Hierarchy::detect() else {
        skip("no cgroup filesystem");
        return;
    };
    let Some(unified) = h.unified_root() else {
        skip("no cgroup2 tree on this host");
        return;
    };
    let name = unique_name();
    let v2 = Hierarchy::V2 {
        root: unified.to_path_buf(),
    };
    let cg = Cgroup::new(v2, &name).unwrap();
    let _guard = Guard {
        child: None,
        cgroups: vec![cg.clone()],
    };
    cg.create().expect("create");
    cg.apply(&resources(
        r#"{"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ]}"#,
    ))
    .expect("apply device rules");
    // Apply again: the old program is replaced, not stacked.
    cg.apply(&resources(
        r#"{"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
        ]}"#,
    ))
    .expect("re-apply device rules");
    let dir = unified.join(&name);
    let fd = crate::sys::open_dir(&dir).unwrap();
    assert_eq!(
        crate::sys::bpf_cgroup_device_programs(std::os::fd::AsFd::as_fd(&fd))
            .unwrap()
            .len(),
        1
    );
    // The shell moves itself into the cgroup, then tries both devices.
    let script = format!(
        "echo $$ > {}/cgroup.procs && (cat /dev/null && echo null-ok); (head -c1 /dev/zero >/dev/null && echo zero-ok) 2>&1",
        dir.display()
    );
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("null-ok"), "{text}");
    assert!(!text.contains("zero-ok"), "/dev/zero was allowed: {text}");
    assert!(text.contains("Operation not permitted"), "{text}");
}

/// A thread that entered the cgroup forks a process born in the whole
/// cgroup (v1 hierarchies through the thread, the cgroup2 tree through
/// clone3's CLONE_INTO_CGROUP), without any `cgroup.procs` write, and goes
/// back where it came from.
#[test]
fn host_thread_entry_spawns_inside_the_cgroup() {
    if !is_root() && skip("not root") {
        return;
    }
    let Ok(h) = Hierarchy::detect() else {
        skip("no cgroup filesystem");
        return;
    };
    let name = unique_name();
    let cg = Cgroup::new(h.clone(), &name).unwrap();
    let guard = Guard {
        child: None,
        cgroups: vec![cg.clone()],
    };
    if let Err(e) = cg.create() {
        skip(&format!("cannot create a cgroup here: {e}"));
        return;
    }
    let own = |file: &str| std::fs::read_to_string(file).unwrap();
    let before = own("/proc/thread-self/cgroup");
    let unified = cg.unified_dir().map(|d| crate::sys::open_dir(&d).unwrap());
    let plan = crate::sys::ExecPlan::new(
        Path::new("/bin/sleep"),
        &["sleep".as_ref(), "60".as_ref()],
        &[],
        crate::sys::ChildFds::default(),
    )
    .unwrap();
    let (pid, inside, after) = std::thread::scope(|s| {
        s.spawn(|| {
            let entered = cg.enter_thread().expect("enter_thread");
            let inside = own("/proc/thread-self/cgroup");
            let pid = crate::sys::spawn(&plan, unified.as_ref().map(|f| f.as_fd()))
                .expect("spawn into the cgroup");
            entered.leave();
            (pid, inside, own("/proc/thread-self/cgroup"))
        })
        .join()
        .unwrap()
    });
    let child = own(&format!("/proc/{pid}/cgroup"));
    let kill = || {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
        let _ = crate::sys::waitpid(pid, false);
    };
    // Every hierarchy line names the cgroup (v1 through the thread, the
    // unified line through CLONE_INTO_CGROUP).
    let wanted = format!("/{name}");
    let lines: Vec<&str> = child.lines().collect();
    let missing: Vec<&&str> = lines
        .iter()
        .filter(|l| !l.ends_with(&wanted))
        .filter(|l| cg.unified_dir().is_some() || !l.starts_with("0::"))
        .collect();
    kill();
    assert!(
        missing.is_empty(),
        "child not in {wanted}: {missing:?} (all: {child})"
    );
    if h.is_v2() {
        assert_eq!(inside, before, "v2 moves no thread");
    } else {
        assert!(inside.contains(&wanted), "thread not moved: {inside}");
    }
    assert_eq!(after, before, "the thread did not go back");
    assert!(cg.pids().unwrap().is_empty(), "{:?}", cg.pids());
    drop(guard);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}
