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
//! daemon starts the wait at once, in a child process of its own, and repeats the
//! no-op migration every few milliseconds until the first create is done,
//! when the runtime's writes have found the lock warm. A shim whose Create
//! does not come soon (a spare shim started ahead by huskd) stops after
//! [`MAX`]: each write briefly blocks every fork and exit on the host.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use husk_runtime::cgroups::Hierarchy;
use nix::fcntl::OFlag;

/// Well inside the one grace period the lock stays fast after a writer.
const INTERVAL: Duration = Duration::from_millis(5);
/// The longest a shim waits for its first Create with the lock warm.
pub const MAX: Duration = Duration::from_millis(200);

/// Keeps the lock warm until dropped (or [`MAX`] has passed).
///
/// The migrations run in a short-lived child process, not a thread of the
/// daemon: the lock is global, so any process's write keeps it warm, and
/// the cgroup code stays out of the long-lived daemon's memory (see
/// `worker.rs`). Dropping the write end of a pipe stops it; the orphan
/// sweep reaps it.
pub struct Warm {
    _stop: OwnedFd,
}

impl Warm {
    /// Forks the warm-up child. Called before the daemon has a thread or
    /// a tokio runtime. `None` if there is no child; the child exits at
    /// once if there is no cgroup hierarchy: creates then pay the wait
    /// themselves.
    pub fn start() -> Option<Warm> {
        let (stop_r, stop_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).ok()?;
        // The child says when it no longer looks like a shim (retitled).
        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
        let daemon = std::process::id();
        // SAFETY: the daemon is single-threaded here (see above); the
        // child only migrates itself, sleeps and `_exit`s.
        match unsafe { nix::unistd::fork() }.ok()? {
            nix::unistd::ForkResult::Child => {
                drop((stop_w, ready_r));
                crate::start::retitle("husk-shim-warmup");
                drop(ready_w);
                crate::worker::close_fds_except(&[std::os::fd::AsRawFd::as_raw_fd(&stop_r)]);
                let orphaned = husk_runtime::sys::set_parent_death_signal(libc::SIGKILL).is_err()
                    || std::os::unix::process::parent_id() != daemon;
                // Detected here: the daemon never runs the cgroup code.
                if let (false, Ok(hierarchy)) = (orphaned, Hierarchy::detect()) {
                    let began = Instant::now();
                    let mut byte = [0u8; 1];
                    // Until the daemon closes its end (EOF) or MAX.
                    while began.elapsed() < MAX
                        && nix::unistd::read(&stop_r, &mut byte) == Err(nix::errno::Errno::EAGAIN)
                    {
                        hierarchy.prewarm_migration();
                        std::thread::sleep(INTERVAL);
                    }
                }
                // SAFETY: ends the child; nothing of the daemon's runs.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { .. } => {
                // EOF once the child has retitled itself (or died).
                drop(ready_w);
                let _ = nix::unistd::read(&ready_r, &mut [0u8; 1]);
                Some(Warm { _stop: stop_w })
            }
        }
    }
}
