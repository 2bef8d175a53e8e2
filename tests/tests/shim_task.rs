//! Must show: `ctr run -d`, then `ctr task exec`, `ps`, `metrics`,
//! `pause`/`resume`, `kill` (SIGTERM and SIGKILL), then delete; `ctr run
//! -t` with a tty; twenty containers at once.

#[path = "shim_common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{command, require_root, unique_id};

#[test]
fn detached_task_exec_ps_metrics_pause_resume_kill_delete() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    // SIGTERM: the init traps it and exits 7.
    let id = unique_id("shim-task");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        NATIVE,
        IMAGE,
        &id,
        "/bin/sh",
        "-c",
        "trap 'exit 7' TERM; while true; do sleep 0.1; done",
    ]);
    wait_task_status(ctd, &id, "RUNNING");
    let out = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo from-exec; exit 0",
    ]);
    assert_eq!(out, "from-exec\n");
    let out = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        &id,
        "/bin/sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    let ps = ctd.ctr_ok(&["task", "ps", &id]);
    assert!(ps.lines().count() >= 2, "{ps}");
    let metrics = ctd.ctr_ok(&["task", "metrics", &id]);
    assert!(
        metrics.contains("memory") || metrics.contains("pids"),
        "{metrics}"
    );
    ctd.ctr_ok(&["task", "pause", &id]);
    wait_task_status(ctd, &id, "PAUSED");
    ctd.ctr_ok(&["task", "resume", &id]);
    wait_task_status(ctd, &id, "RUNNING");
    ctd.ctr_ok(&["task", "kill", "--signal", "SIGTERM", &id]);
    wait_task_status(ctd, &id, "STOPPED");
    let del = ctd.ctr_ok(&["task", "delete", &id]);
    assert!(del.contains("7") || del.is_empty(), "{del}");
    ctd.ctr_ok(&["container", "delete", &id]);
    assert_no_leaks(&id);

    // SIGKILL.
    let id = unique_id("shim-kill");
    run_sleeper(ctd, HARDENED, &id);
    wait_task_status(ctd, &id, "RUNNING");
    kill_delete_and_check(ctd, &id);
}

#[test]
fn ctr_run_with_a_tty() {
    require_root!();
    require_script();
    let env = containerd();
    let id = unique_id("shim-tty");
    // ctr -t needs a terminal on its side too: script(1) gives it one.
    let ctr = format!(
        "{} -a {} run -t --rm --runtime {NATIVE} {IMAGE} {id} /bin/sh -c 'tty; echo cols=$(stty size)'",
        husk_tests::require_command("ctr").display(),
        env.ctd.address().display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qefc", &ctr, "/dev/null"]).stdin(Stdio::null());
    let out = command::output_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", command::format_output(&out));
    assert!(
        text.contains("/dev/pts/") || text.contains("/dev/console"),
        "{text}"
    );
    wait_no_shims(&env.ctd);
    assert_no_leaks(&id);
}

fn require_script() {
    husk_tests::require_command("script");
}

#[test]
fn twenty_containers_at_once() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let ids: Vec<String> = (0..20).map(|_| unique_id("shim-many")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            s.spawn(move || {
                run_sleeper(ctd, NATIVE, id);
            });
        }
    });
    for id in &ids {
        wait_task_status(ctd, id, "RUNNING");
    }
    assert_eq!(shim_pids(ctd).len(), 20);
    for id in &ids {
        ctd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    }
    for id in &ids {
        wait_task_status(ctd, id, "STOPPED");
        ctd.ctr_ok(&["task", "delete", id]);
        ctd.ctr_ok(&["container", "delete", id]);
    }
    wait_no_shims(ctd);
    for id in &ids {
        assert_no_leaks(id);
    }
}
