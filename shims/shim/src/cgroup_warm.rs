//! A fresh shim keeps the kernel's cgroup migration lock warm until its
//! first container is created.
//!
//! Every write to a `cgroup.procs` file takes the global cgroup
//! threadgroup rwsem for writing, which waits for an RCU grace period
//! (13-16 ms on this project's machines) unless another writer took it
//! within about one grace period before (docs/architecture.md, "Speed").
//! The runtime's create writes `cgroup.procs`, and starts that wait itself
//! only once Create has arrived and the spec is parsed. Under containerd,
//! Create comes a few milliseconds after `start` forked the daemon: so the
//! daemon starts the wait at once, on a thread of its own, and repeats the
//! no-op migration every few milliseconds until the first create is done,
//! when the runtime's writes have found the lock warm. A shim whose Create
//! does not come soon (a spare shim started ahead by huskd) stops after
//! [`MAX`]: each write briefly blocks every fork and exit on the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_runtime::cgroups::Hierarchy;

/// Well inside the one grace period the lock stays fast after a writer.
const INTERVAL: Duration = Duration::from_millis(5);
/// The longest a shim waits for its first Create with the lock warm.
pub const MAX: Duration = Duration::from_millis(200);

/// Keeps the lock warm until dropped (or [`MAX`] has passed).
pub struct Warm {
    stop: Arc<AtomicBool>,
}

impl Warm {
    /// Starts the warm-up thread. `None` if there is no cgroup hierarchy
    /// or no thread: creates then pay the wait themselves.
    pub fn start() -> Option<Warm> {
        let hierarchy = Hierarchy::detect().ok()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("cgroup-warm".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let began = Instant::now();
                while !flag.load(Ordering::Relaxed) && began.elapsed() < MAX {
                    hierarchy.prewarm_migration();
                    std::thread::sleep(INTERVAL);
                }
            })
            .ok()?;
        Some(Warm { stop })
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
