//! Must show: a container survives `kill -9` of containerd (after the
//! restart `ctr task ls` shows it running, and it can be killed and
//! deleted); a shim killed with `kill -9` leaves no mount, cgroup or
//! process once containerd has run `delete`.

#[path = "shim_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use husk_tests::leaks::{assert_no_leaks, Leaks};
use husk_tests::{require_root, unique_id};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn container_survives_kill_9_of_containerd() {
    require_root!();
    let mut env = containerd();
    let id = unique_id("shim-survive");
    run_sleeper(&env.ctd, NATIVE, &id);
    wait_task_status(&env.ctd, &id, "RUNNING");
    let before = tasks(&env.ctd).into_iter().find(|t| t.0 == id).unwrap().1;
    let shims = shim_pids(&env.ctd);
    assert_eq!(shims.len(), 1);
    env.ctd.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shim_pids(&env.ctd),
        shims,
        "the shim must outlive containerd"
    );
    env.ctd.restart();
    let after = tasks(&env.ctd)
        .into_iter()
        .find(|t| t.0 == id)
        .expect("task listed after restart");
    assert_eq!((after.1, after.2.as_str()), (before, "RUNNING"));
    kill_delete_and_check(&env.ctd, &id);
}

#[test]
fn kill_9_of_the_shim_leaves_nothing_after_delete() {
    require_root!();
    let env = containerd();
    let id = unique_id("shim-k9");
    run_sleeper(&env.ctd, NATIVE, &id);
    wait_task_status(&env.ctd, &id, "RUNNING");
    let shims = shim_pids(&env.ctd);
    assert_eq!(shims.len(), 1);
    kill(Pid::from_raw(shims[0] as i32), Signal::SIGKILL).unwrap();
    // containerd notices the dead shim, runs `delete`, and the task goes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = env.ctd.ctr(&["task", "delete", "--force", &id]);
        if task_status(&env.ctd, &id).is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task still listed: {:?}",
            tasks(&env.ctd)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ctd.ctr_ok(&["container", "delete", &id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Leaks::find(&id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_leaks(&id);
    assert!(shim_pids(&env.ctd).is_empty());
}
