//! Detached containers through huskd: logs, stop, kill, wait, rm, and
//! that rm -f leaves nothing behind; the events endpoint receives the
//! shims' events.

mod core_common;

use std::time::{Duration, Instant};

use core_common::{Huskd, IMAGE};
use husk_tests::require_root;

fn run_d(d: &Huskd, extra: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    d.husk_ok(&args).trim().to_string()
}

fn wait_for_log(d: &Huskd, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = d.husk_ok(&["logs", id]);
        if logs.contains(want) {
            return logs;
        }
        assert!(
            Instant::now() < deadline,
            "logs of {id} never showed {want:?}: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detached_logs_and_stop(runtime: &str) {
    let d = Huskd::start();
    d.import_busybox();
    let name = husk_tests::unique_id("logs");
    let id = run_d(
        &d,
        &["--name", &name, "--runtime", runtime],
        &[
            "sh",
            "-c",
            "echo started; trap 'echo got TERM; exit 3' TERM; while true; do sleep 0.1; done",
        ],
    );
    assert_eq!(id.len(), 32, "{id}");
    wait_for_log(&d, &name, "started\n");
    let ps = d.husk_ok(&["ps"]);
    assert!(ps.contains(&name) && ps.contains("running"), "{ps}");
    let started = Instant::now();
    d.husk_ok(&["stop", "-t", "10", &name]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop waited for the timeout"
    );
    assert_eq!(d.status(&id), "stopped");
    assert_eq!(d.inspect(&id)["exit_code"], 3);
    // Logs outlive the container's process.
    assert_eq!(d.husk_ok(&["logs", &id]), "started\ngot TERM\n");
    assert_eq!(d.husk_ok(&["wait", &id]).trim(), "3");
    d.husk_ok(&["rm", &name]);
    husk_tests::leaks::assert_no_leaks(&id);
    assert!(!d.bundle(&id).exists());
}

#[test]
fn detached_run_logs_and_stop_with_the_native_shim() {
    require_root!();
    detached_logs_and_stop("native");
}

#[test]
fn detached_run_logs_and_stop_with_debians_runc_shim() {
    require_root!();
    husk_tests::host::require_command("containerd-shim-runc-v2");
    detached_logs_and_stop("runc");
}

#[test]
fn stop_kills_a_container_that_ignores_sigterm() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = run_d(
        &d,
        &[],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    wait_for_log(&d, &id, "ready");
    let t = Instant::now();
    d.husk_ok(&["stop", "-t", "1", &id]);
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(d.inspect(&id)["exit_code"], 137);
}

#[test]
fn kill_sends_the_signal() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = run_d(
        &d,
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 42' USR1; echo ready; while true; do sleep 0.1; done",
        ],
    );
    wait_for_log(&d, &id, "ready");
    d.husk_ok(&["kill", "-s", "USR1", &id]);
    assert_eq!(d.husk_ok(&["wait", &id]).trim(), "42");
}

#[test]
fn rm_f_of_a_running_container_leaves_no_mount_cgroup_process_or_shim() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = run_d(
        &d,
        &["--memory", "64m", "--pids-limit", "20"],
        &["sleep", "1000"],
    );
    d.wait_status(&id, "running");
    let pid = d.inspect(&id)["pid"].as_u64().unwrap() as u32;
    assert!(core_common::alive(pid));
    assert!(
        !husk_tests::leaks::mounts_matching(&id).is_empty(),
        "the rootfs is mounted"
    );
    assert!(
        !husk_tests::leaks::processes_matching(&id).is_empty(),
        "a shim serves the container"
    );
    // rm without -f is refused and changes nothing.
    let out = d.husk(&["rm", &id]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is running") && err.contains("rm -f"), "{err}");
    assert_eq!(d.status(&id), "running");
    d.husk_ok(&["rm", "-f", &id]);
    assert!(!core_common::alive(pid));
    husk_tests::leaks::assert_no_leaks(&id);
    assert!(!d.bundle(&id).exists());
    assert!(!d.root.join("containers").join(&id).exists());
    let out = d.husk(&["inspect", &id]);
    assert!(!out.status.success());
}

#[test]
fn create_then_start_attached() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = d
        .husk_ok(&["create", IMAGE, "echo", "created first"])
        .trim()
        .to_string();
    assert_eq!(d.status(&id), "created");
    let out = d.husk(&["start", "-a", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "created first\n");
    d.husk_ok(&["rm", &id]);
    husk_tests::leaks::assert_no_leaks(&id);
}

#[test]
fn shims_publish_events_to_huskds_endpoint() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    d.husk_ok(&["run", "--rm", IMAGE, "true"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().contains("/tasks/exit") {
        assert!(
            Instant::now() < deadline,
            "no /tasks/exit event reached huskd:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_follow_streams_until_the_container_exits() {
    require_root!();
    let d = Huskd::start();
    d.import_busybox();
    let id = run_d(
        &d,
        &[],
        &[
            "sh",
            "-c",
            "echo a; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo b >&2; echo c",
        ],
    );
    wait_for_log(&d, &id, "a\n");
    let child = d
        .husk_cmd(&["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(d.bundle(&id).join("rootfs/tmp/go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nc\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "b\n");
}
