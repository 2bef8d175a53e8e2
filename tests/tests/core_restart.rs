//! huskd `kill -9`'d and restarted: running containers stay untouched and
//! manageable, exits during the downtime are picked up, and a shim that
//! died meanwhile is cleaned with `shim delete`.

mod core_common;

use std::time::{Duration, Instant};

use core_common::{alive, Huskd, IMAGE};
use husk_tests::require_root;

const WAIT_GO: &str = "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two";

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_logs(d: &Huskd, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = d.husk_ok(&["logs", id]);
        if l == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "logs {l:?}, want {want:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn restart_keeps_running(runtime: &str) {
    let mut d = Huskd::start();
    d.import_busybox();
    let cmd = format!("{WAIT_GO}; sleep 1000");
    let id = d
        .husk_ok(&["run", "-d", "--runtime", runtime, IMAGE, "sh", "-c", &cmd])
        .trim()
        .to_string();
    wait_logs(&d, &id, "one\n");
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    d.kill9();
    assert!(alive(pid), "the container died with huskd");
    // Output written while huskd is down is not lost.
    std::fs::write(d.bundle(&id).join("rootfs/tmp/go"), "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d.spawn();
    let ps = d.husk_ok(&["ps"]);
    assert!(ps.contains(&id[..12]) && ps.contains("running"), "{ps}");
    assert_eq!(d.inspect(&id)["pid"].as_u64().unwrap() as u32, pid);
    assert!(alive(pid));
    wait_logs(&d, &id, "one\ntwo\n");
    // Still manageable.
    d.husk_ok(&["stop", "-t", "1", &id]);
    wait_dead(pid);
    assert_eq!(d.status(&id), "stopped");
    d.husk_ok(&["rm", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn kill9_and_restart_keeps_a_native_container_running() {
    require_root!();
    restart_keeps_running("native");
}

#[test]
fn kill9_and_restart_keeps_a_runc_container_running() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    restart_keeps_running("runc");
}

#[test]
fn an_exit_during_the_downtime_is_reported_after_restart() {
    require_root!();
    let mut d = Huskd::start();
    d.import_busybox();
    let cmd = format!("{WAIT_GO}; exit 5");
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sh", "-c", &cmd])
        .trim()
        .to_string();
    wait_logs(&d, &id, "one\n");
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    d.kill9();
    std::fs::write(d.bundle(&id).join("rootfs/tmp/go"), "").unwrap();
    wait_dead(pid);
    d.spawn();
    d.wait_status(&id, "stopped");
    assert_eq!(d.inspect(&id)["exit_code"], 5);
    assert_eq!(d.husk_ok(&["wait", &id]).trim(), "5");
    // Output from before the downtime is kept. (What the process wrote
    // after huskd died and just before it exited is lost today: the
    // native shim drops its keep-alive reader on the output FIFOs at the
    // exit, so the pipe's buffer goes with the last descriptor.)
    assert!(d.husk_ok(&["logs", &id]).starts_with("one\n"));
    // The shim was shut down once the exit was collected.
    assert!(
        !d.bundle(&id).join("rootfs/bin").exists(),
        "the rootfs is still mounted"
    );
    d.husk_ok(&["rm", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

fn dead_shim_is_cleaned(runtime: &str) {
    let mut d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["run", "-d", "--runtime", runtime, IMAGE, "sleep", "1000"])
        .trim()
        .to_string();
    d.wait_status(&id, "running");
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    // The shim serving it: `-id <id>` on its command line.
    let shims: Vec<u32> = husk_tests::leaks::processes_matching(&id)
        .into_iter()
        .filter(|p| p.cmdline.contains("containerd-shim"))
        .map(|p| p.pid)
        .collect();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let shim = shims[0] as i32;
    d.kill9();
    unsafe { libc::kill(shim, libc::SIGKILL) };
    d.spawn();
    d.wait_status(&id, "stopped");
    wait_dead(pid);
    assert_eq!(d.inspect(&id)["exit_code"], 137);
    d.husk_ok(&["rm", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn a_native_shim_that_died_during_the_downtime_is_cleaned_with_shim_delete() {
    require_root!();
    dead_shim_is_cleaned("native");
}

#[test]
fn a_runc_shim_that_died_during_the_downtime_is_cleaned_with_shim_delete() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    dead_shim_is_cleaned("runc");
}

#[test]
fn restart_finishes_interrupted_creates_and_removals() {
    require_root!();
    let mut d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["run", "-d", IMAGE, "sleep", "1000"])
        .trim()
        .to_string();
    d.wait_status(&id, "running");
    d.husk_ok(&["stop", "-t", "0", &id]);
    d.kill9();
    // As if huskd died in `rm` after the record went, and in a create
    // before the first record write.
    let cdir = d.root.join("containers").join(&id);
    std::fs::rename(&cdir, d.root.join("containers").join(format!(".rm-{id}"))).unwrap();
    std::fs::create_dir_all(d.root.join("containers/0123456789abcdef0123456789abcdef")).unwrap();
    d.spawn();
    assert_eq!(d.husk_ok(&["ps", "-a", "--format", "json"]).trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(d.root.join("containers"))
        .unwrap()
        .chain(std::fs::read_dir(d.state.join("bundles")).unwrap())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    husk_tests::leaks::assert_no_leaks(&id);
}

/// A `--rm` container's record is not saved again after its start: the
/// restarted huskd takes its status and pid from the shim, and still
/// removes it at its exit.
#[test]
fn a_running_rm_container_survives_a_restart_and_goes_at_its_exit() {
    require_root!();
    let mut d = Huskd::start();
    d.import_busybox();
    let mut client = d
        .husk_cmd(&[
            "run", "--rm", "--name", "rmkeep", IMAGE, "sh", "-c", WAIT_GO,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.husk(&["inspect", "rmkeep"]).status.success() {
        assert!(Instant::now() < deadline, "the container was not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.wait_status("rmkeep", "running");
    let rec = d.inspect("rmkeep");
    let (id, pid) = (
        rec["id"].as_str().unwrap().to_string(),
        rec["pid"].as_u64().unwrap() as u32,
    );
    d.kill9();
    // The attached client loses huskd (as `docker run` loses dockerd).
    let _ = client.wait();
    d.spawn();
    assert_eq!(d.status("rmkeep"), "running");
    assert_eq!(d.inspect("rmkeep")["pid"].as_u64(), Some(pid as u64));
    assert!(alive(pid));
    d.husk_ok(&["exec", "rmkeep", "touch", "/tmp/go"]);
    wait_dead(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.container_ids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the --rm container was not removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    husk_tests::leaks::assert_no_leaks(&id);
}
