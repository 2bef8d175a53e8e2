//! Reaping. The shim is a child subreaper: a container's init is forked by
//! a short-lived intermediate, so it (and every exec'd process) is
//! reparented to the shim.
//!
//! There is no `waitpid(-1)`: it would also reap the runtime library's own
//! children (its intermediate, OCI hooks), which the library waits for by
//! pid. Instead, on every SIGCHLD the shim waits for each pid it knows by
//! pid. An exit is therefore never lost, not even one before the pid is
//! recorded (Start racing with a quick exit): the zombie waits for us.
//!
//! Orphans the shim does not know (descendants of a container without its
//! own pid namespace) are reaped by a sweep over the main thread's
//! children. The runtime library runs in worker processes (`worker.rs`),
//! which wait for their own children (intermediates, hooks); the workers
//! themselves are the main thread's children, reaped by the code waiting
//! for their answers, so the sweep skips them. The few children the shim
//! spawns on blocking-pool threads (the publish binary, a swap's probe)
//! are listed under those threads, so the sweep never touches them;
//! orphans are reparented to the thread-group leader, the main
//! thread. The sweep is skipped while a launch is in flight, because the
//! launched process can be reparented before its pid is recorded; the
//! launch sweeps once it has recorded the pid, so an orphan that died in
//! between is not left for the next SIGCHLD.

use husk_runtime::sys;

use crate::state::{ExitRecord, ShimState};

/// One exit found by [`reap_known`].
#[derive(Debug, Clone)]
pub struct Reaped {
    pub container: String,
    pub exec_id: String,
    pub pid: i32,
    pub exit: ExitRecord,
}

pub fn set_subreaper() -> std::io::Result<()> {
    sys::set_child_subreaper()
}

/// Waits (without blocking) for every process of `state` still running and
/// records the exits.
pub fn reap_known(state: &mut ShimState) -> Vec<Reaped> {
    let mut reaped = Vec::new();
    for (container, exec_id, pid) in state.live_pids() {
        let Some(exit) = try_wait(pid) else { continue };
        if let Ok(p) = state.process_mut(&container, &exec_id) {
            p.exit = Some(exit);
        }
        reaped.push(Reaped {
            container,
            exec_id,
            pid,
            exit,
        });
    }
    reaped
}

/// `waitpid(pid, WNOHANG)`. `None` while the process runs.
pub fn try_wait(pid: i32) -> Option<ExitRecord> {
    match sys::waitpid(pid, true) {
        Ok(Some((_, exit))) => Some(ExitRecord::now(exit.status() as u32)),
        Ok(None) => None,
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            // Not (or no longer) our child: someone else reaped it (the
            // runtime library's force delete does). Gone is gone.
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                None
            } else {
                tracing::warn!(pid, "process exited but its status was collected elsewhere");
                Some(ExitRecord::now(255))
            }
        }
        Err(e) => {
            tracing::warn!(pid, "waitpid: {e}");
            None
        }
    }
}

/// Reaps zombies among the main thread's children that the shim does not
/// know. See the module docs for why this is safe.
pub fn sweep_orphans(state: &ShimState) {
    if state.launches_in_flight > 0 {
        return;
    }
    let me = std::process::id();
    let path = format!("/proc/{me}/task/{me}/children");
    let Ok(list) = std::fs::read_to_string(&path) else {
        return;
    };
    for pid in list
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // A live worker is reaped by whoever waits for its answer.
        if state.knows_pid(pid) || crate::worker::is_worker(pid) {
            continue;
        }
        if matches!(sys::process_start_time(pid), Ok((_, 'Z'))) {
            let _ = sys::waitpid(pid, true);
            tracing::debug!(pid, "reaped an orphan");
        }
    }
}
