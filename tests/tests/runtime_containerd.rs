//! husk-runtime as the runtime binary of containerd's own runc shim:
//! real containerd 1.6 from Debian, on a private socket, drives
//! `containerd-shim-runc-v2 --runc-binary husk-runtime`.

use husk_tests::leaks::assert_no_leaks;
use husk_tests::{husk_runtime_bin, require_command, require_root, unique_id, Containerd};

const IMAGE: &str = "husk.test/busybox:latest";

fn containerd_with_image() -> (Containerd, tempfile::TempDir) {
    require_command("containerd-shim-runc-v2");
    let tmp = tempfile::Builder::new()
        .prefix("husk-ctr-")
        .tempdir()
        .unwrap();
    let ctd = Containerd::start();
    ctd.import_busybox(tmp.path());
    (ctd, tmp)
}

#[test]
fn ctr_run_with_husk_runtime_as_runc_binary() {
    require_root!();
    let (ctd, _tmp) = containerd_with_image();
    let bin = husk_runtime_bin();
    let bin = bin.to_str().unwrap();
    let id = unique_id("ctr-husk");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        IMAGE,
        &id,
        "/bin/echo",
        "hi",
    ]);
    assert_eq!(out, "hi\n");

    // Exit codes come back through the shim.
    let id2 = unique_id("ctr-exit");
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin,
        IMAGE,
        &id2,
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_leaks(&id);
    assert_no_leaks(&id2);
}

#[test]
fn ctr_detached_task_exec_ps_pause_kill_with_husk_runtime() {
    require_root!();
    let (ctd, _tmp) = containerd_with_image();
    let bin = husk_runtime_bin();
    let bin = bin.to_str().unwrap();
    let id = unique_id("ctr-task");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runc-binary",
        bin,
        IMAGE,
        &id,
        "/bin/sleep",
        "60",
    ]);
    let out = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo from-exec",
    ]);
    assert_eq!(out, "from-exec\n");
    let ps = ctd.ctr_ok(&["task", "ps", &id]);
    assert!(ps.lines().count() >= 2, "{ps}");
    ctd.ctr_ok(&["task", "pause", &id]);
    assert!(ctd.ctr_ok(&["task", "ls"]).contains("PAUSED"));
    ctd.ctr_ok(&["task", "resume", &id]);
    assert!(ctd.ctr_ok(&["task", "ls"]).contains("RUNNING"));
    ctd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ctd.ctr_ok(&["task", "ls"]).contains("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "task did not stop");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ctd.ctr_ok(&["task", "delete", &id]);
    ctd.ctr_ok(&["container", "delete", &id]);
    assert_no_leaks(&id);
}
