//! The runtime's side of starting an init: spawn the sealed binary, put it
//! in the cgroup, answer its requests (id maps, createRuntime hooks, the
//! console), and hand back the container process's pid.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;

use oci_spec::runtime::LinuxIdMapping;

use crate::cgroups::Cgroup;
use crate::channel::Channel;
use crate::container::ProcessIo;
use crate::error::{Context, Error, Result};
use crate::init::{InitConfig, Message};
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
    let preserve = config.preserve_fds;
    let mut cmd = exe.init_command();
    if let Some(fd) = io.stdin {
        cmd.stdin(fd);
    }
    if let Some(fd) = io.stdout {
        cmd.stdout(fd);
    }
    if let Some(fd) = io.stderr {
        cmd.stderr(fd);
    }
    cmd.env(INIT_FD_ENV, child_fd.to_string());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            sys::set_cloexec(child_fd, false)?;
            for fd in 3..3 + preserve {
                sys::set_cloexec(fd, false)?;
            }
            Ok(())
        });
    }
    let mut intermediate = cmd
        .spawn()
        .context(|| "start the container init (the sealed husk-runtime binary)".into())?;
    drop(child_end);
    let mut init_pid = None;
    tracing::debug!(elapsed = ?began.elapsed(), "init spawned");
    let result = drive(
        &mut channel,
        config,
        cgroup,
        intermediate.id() as i32,
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
        let _ = intermediate.kill();
    }
    let _ = intermediate.wait();
    result
}

fn drive(
    channel: &mut Channel,
    config: InitConfig,
    cgroup: &Cgroup,
    intermediate: i32,
    mut hooks: LaunchHooks<'_>,
    init_pid: &mut Option<i32>,
    began: std::time::Instant,
) -> Result<Launched> {
    // Before it unshares anything, so the cgroup namespace is rooted at the
    // container's cgroup and every child inherits it.
    cgroup.add_process(intermediate)?;
    tracing::debug!(elapsed = ?began.elapsed(), "init joined the cgroup");
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
