//! The runtime's side of starting an init: spawn the sealed binary, put it
//! in the cgroup, answer its requests (id maps, createRuntime hooks, the
//! console), and hand back the container process's pid.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use oci_spec::runtime::LinuxIdMapping;

use crate::cgroups::Cgroup;
use crate::channel::Channel;
use crate::container::ProcessIo;
use crate::error::{Context, Error, Result};
use crate::init::{self, InitConfig, Message};
use crate::namespaces;
use crate::sealed_exe::{SealedExe, INIT_FD_ENV};
use crate::sys;

pub struct Launched {
    /// Host pid of the container's process (init, or the exec'd process).
    pub pid: i32,
    pub console_master: Option<OwnedFd>,
}

/// Runtime-side callbacks of the launch protocol.
pub struct LaunchHooks<'a> {
    pub id_maps: Option<(&'a [LinuxIdMapping], &'a [LinuxIdMapping])>,
    /// The process's oom_score_adj: in a user namespace the init has no
    /// CAP_SYS_RESOURCE over the host, so the runtime sets it (and with it
    /// the floor the init may write) on the intermediate, before anything
    /// is unshared or joined.
    pub oom_score_adj: Option<i32>,
    /// Runs the createRuntime hooks for the given init pid and returns the
    /// OCI state JSON the init passes to its own hooks.
    pub create_runtime: Option<&'a mut dyn FnMut(i32) -> Result<String>>,
}

/// Starts an init with `config` and drives it until it reports ready. On
/// failure every process it started is killed and reaped.
pub fn launch(
    config: InitConfig,
    cgroup: &Cgroup,
    hooks: LaunchHooks<'_>,
    io: ProcessIo,
) -> Result<Launched> {
    let began = std::time::Instant::now();
    let exe = SealedExe::current()?;
    let (mut channel, child_end) = Channel::pair()?;
    let child_fd = child_end.raw_fd();
    let mut fds = sys::ChildFds::default();
    for (fd, to) in [(&io.stdin, 0), (&io.stdout, 1), (&io.stderr, 2)] {
        if let Some(fd) = fd {
            fds.dup(fd.as_raw_fd(), to);
        }
    }
    fds.keep(child_fd);
    for fd in 3..3 + config.preserve_fds {
        fds.keep(fd);
    }
    let intermediate = match exe.init_argv() {
        Some((path, args)) => {
            let fd_value = child_fd.to_string();
            let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
                .filter(|(k, _)| k != INIT_FD_ENV)
                .collect();
            env.push((INIT_FD_ENV.into(), fd_value.into()));
            let env: Vec<(&OsStr, &OsStr)> = env
                .iter()
                .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
                .collect();
            let plan = sys::ExecPlan::new(&path, &args, &env, fds)
                .context(|| "prepare the container init's command line".into())?;
            spawn_in_cgroup(cgroup, V1Join::ThreadForks, |unified| {
                sys::spawn(&plan, unified)
            })?
        }
        None => {
            let join_v1 = || cgroup.enter_thread().map(drop).map_err(Error::from);
            let run = || init::run_forked(child_fd, &join_v1);
            spawn_in_cgroup(cgroup, V1Join::ChildJoins, |unified| {
                // SAFETY: this thread is the only one of this process that
                // runs: the create's other threads have been joined.
                unsafe { sys::spawn_running(&fds, unified, &run) }
            })?
        }
    };
    drop(io);
    drop(child_end);
    let mut init_pid = None;
    tracing::debug!(elapsed = ?began.elapsed(), "init spawned");
    let result = drive(
        &mut channel,
        config,
        intermediate,
        hooks,
        &mut init_pid,
        began,
    );
    if result.is_err() {
        if let Some(pid) = init_pid {
            let _ = sys::kill(pid, libc::SIGKILL);
            // Reap it if it was reparented to us (we are a subreaper in `run`).
            let _ = sys::waitpid(pid, false);
        }
        let _ = sys::kill(intermediate, libc::SIGKILL);
    }
    let _ = sys::waitpid(intermediate, false);
    result
}

/// How the intermediate joins the container's cgroup v1 hierarchies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum V1Join {
    /// A thread of the runtime joins them, forks, and goes back: for an
    /// intermediate that executes the sealed binary first.
    ThreadForks,
    /// The intermediate, a fork that runs our code at once, joins them
    /// itself (`init::run_forked`): no thread, and no way back to make.
    ChildJoins,
}

/// Starts the intermediate already inside the container's cgroup, without
/// writing its pid to any `cgroup.procs`: such a write takes the kernel's
/// global threadgroup lock, which waits for an RCU grace period when no
/// one took it moments before (10-20 ms here). Threads move alone without
/// that lock, by writing "0" to a v1 hierarchy's `tasks`: either a thread
/// of ours joins the v1 hierarchies, forks the intermediate and goes back
/// where it came from, or the forked intermediate joins them itself (see
/// [`V1Join`]). clone3's CLONE_INTO_CGROUP places it in the cgroup2 tree.
/// Either way, before the intermediate unshares anything, so its cgroup
/// namespace is rooted at the container's cgroup and every child inherits
/// it. Kernels without CLONE_INTO_CGROUP (before 5.7) get the cgroup2 part
/// through `cgroup.procs`.
fn spawn_in_cgroup(
    cgroup: &Cgroup,
    v1: V1Join,
    spawn: impl Fn(Option<BorrowedFd<'_>>) -> std::io::Result<i32> + Sync,
) -> Result<i32> {
    let unified = match cgroup.unified_dir() {
        Some(dir) => {
            Some(sys::open_dir(&dir).context(|| format!("open cgroup {}", dir.display()))?)
        }
        None => None,
    };
    let spawn_placed = || -> Result<i32> {
        let spawned = match spawn(unified.as_ref().map(|fd| fd.as_fd())) {
            Err(e) if unified.is_some() && clone_into_cgroup_unsupported(&e) => {
                tracing::debug!("clone3 into a cgroup unavailable ({e}); moving the init");
                spawn(None).map(|pid| (pid, true))
            }
            r => r.map(|pid| (pid, false)),
        };
        let (pid, move_unified) =
            spawned.context(|| "start the container init (the sealed runtime binary)".into())?;
        if move_unified {
            if let Err(e) = cgroup.add_process_unified(pid) {
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::waitpid(pid, false);
                return Err(e.into());
            }
        }
        Ok(pid)
    };
    if v1 == V1Join::ChildJoins {
        return spawn_placed();
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<i32> {
            let inside = cgroup.enter_thread()?;
            let spawned = spawn_placed();
            inside.leave();
            spawned
        })
        .join()
        .map_err(|_| Error::Init("starting the container init panicked".into()))?
    })
}

/// clone3 or CLONE_INTO_CGROUP unknown to the kernel.
fn clone_into_cgroup_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
    )
}

fn drive(
    channel: &mut Channel,
    config: InitConfig,
    intermediate: i32,
    mut hooks: LaunchHooks<'_>,
    init_pid: &mut Option<i32>,
    began: std::time::Instant,
) -> Result<Launched> {
    if let Some(adj) = hooks.oom_score_adj {
        let path = format!("/proc/{intermediate}/oom_score_adj");
        std::fs::write(&path, adj.to_string())
            .context(|| format!("set oom_score_adj to {adj} ({path})"))?;
    }
    channel.send(&Message::Config(Box::new(config)))?;
    let mut console_master = None;
    loop {
        let Some((msg, fd)) = channel.recv::<Message>()? else {
            return Err(Error::Init(
                "the init exited without reporting an error; see the container's stderr".into(),
            ));
        };
        tracing::debug!(elapsed = ?began.elapsed(), message = ?msg, "from init");
        match msg {
            Message::UserNamespaceCreated => {
                let (uids, gids) = hooks.id_maps.ok_or_else(|| {
                    Error::Init("init created a user namespace without id maps".into())
                })?;
                namespaces::write_id_maps(intermediate, uids, gids)?;
                channel.send(&Message::UserNamespaceMapped)?;
            }
            Message::InitPid { pid } => {
                *init_pid = Some(pid);
                channel.send(&Message::Proceed)?;
            }
            Message::RunCreateRuntimeHooks => {
                let pid = init_pid
                    .ok_or_else(|| Error::Init("hooks requested before the init pid".into()))?;
                let state = match hooks.create_runtime.as_mut() {
                    Some(run) => run(pid)?,
                    None => String::new(),
                };
                channel.send(&Message::CreateRuntimeHooksDone { state })?;
            }
            Message::ConsoleMaster => {
                console_master =
                    Some(fd.ok_or_else(|| Error::Init("console message without a pty".into()))?);
            }
            Message::Ready => {
                let pid =
                    init_pid.ok_or_else(|| Error::Init("ready before the init pid".into()))?;
                return Ok(Launched {
                    pid,
                    console_master,
                });
            }
            Message::Failed { message } => return Err(Error::Init(message)),
            other => {
                return Err(Error::Init(format!(
                    "unexpected message from init: {other:?}"
                )))
            }
        }
    }
}
