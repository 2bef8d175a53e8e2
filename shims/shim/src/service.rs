//! The Task service (`containerd.task.v2.Task`) over the husk runtime
//! library, in process: no runc, no runtime binary in between.
//!
//! Locking: one `std::sync::Mutex` around [`ShimState`], never held across
//! an `.await`. Runtime library calls (they fork, wait, read cgroupfs,
//! mount) run in short-lived worker processes (`worker.rs`), so the
//! library's code never stays resident in the long-lived daemon, and
//! the event loop waits for them without blocking. Stdio is opened by
//! the daemon (it keeps the readers and pumps) and inherited by the
//! worker, which hands it to the process.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use husk_runtime::{CreateOptions, ExecOptions, Runtime};
use ttrpc::r#async::TtrpcContext;

use crate::error::{Result, ShimError};
use crate::events::Publisher;
use crate::plugins::{self, Plugins};
use crate::reaper::{self, Reaped};
use crate::state::{Container, ExitRecord, Proc, ProcStatus, ShimState};
use crate::worker::{self, Reply};
use crate::{hardening, io, metrics, rootfs, Profile};

/// Exit status reported for a process the shim had to kill itself.
const KILLED: u32 = 128 + libc::SIGKILL as u32;

/// The shim: its state and what acts on it.
pub struct Shim {
    pub state: Mutex<ShimState>,
    pub runtime: Runtime,
    pub events: Publisher,
    /// The plugin service's client, and lifecycle hooks in flight.
    pub plugins: Arc<Plugins>,
    /// Woken on every recorded exit (Wait).
    pub exited: tokio::sync::Notify,
    /// Woken when Shutdown lets the shim exit.
    pub shutdown: tokio::sync::Notify,
}

impl Shim {
    pub fn new(state: ShimState, events: Publisher) -> Shim {
        let runtime = Runtime::new(state.runtime_root.clone());
        Shim {
            state: Mutex::new(state),
            runtime,
            events,
            plugins: Arc::default(),
            exited: tokio::sync::Notify::new(),
            shutdown: tokio::sync::Notify::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ShimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGCHLD: reap what exited, report it, sweep orphans.
    pub fn on_sigchld(&self) {
        let mut st = self.lock();
        let reaped = reaper::reap_known(&mut st);
        for r in &reaped {
            self.after_exit(&mut st, r);
        }
        reaper::sweep_orphans(&st);
        drop(st);
        if !reaped.is_empty() {
            self.exited.notify_waiters();
        }
    }

    /// Records a process found exited outside the SIGCHLD path (right
    /// after a launch returns).
    fn check_exited(&self, st: &mut ShimState, container: &str, exec_id: &str) {
        let Ok(p) = st.process_mut(container, exec_id) else {
            return;
        };
        if !p.is_running() {
            return;
        }
        let pid = p.pid;
        if let Some(exit) = reaper::try_wait(pid) {
            p.exit = Some(exit);
            let r = Reaped {
                container: container.into(),
                exec_id: exec_id.into(),
                pid,
                exit,
            };
            self.after_exit(st, &r);
            self.exited.notify_waiters();
        }
    }

    fn after_exit(&self, st: &mut ShimState, r: &Reaped) {
        tracing::info!(
            container = r.container,
            exec = r.exec_id,
            pid = r.pid,
            status = r.exit.status,
            "process exited"
        );
        let Ok(c) = st.container_mut(&r.container) else {
            return;
        };
        if r.exec_id.is_empty() {
            // The init is gone: so is the container. Processes that
            // outlived it (no private pid namespace) go too, as with runc.
            // Then its OOM kills so far. In a worker, waited for here (it
            // takes about a millisecond): the OOM event comes before the
            // exit event, which comes before Wait returns.
            // Known from the create, and with nothing to kill (a pid
            // namespace of its own), the count is one small read here:
            // no worker between the exit and its event.
            let id = r.container.clone();
            let oom_kills = match &c.init_exit {
                Some(x) if !x.kill_all => Ok(Reply::pid(
                    oom_kills_in(x.oom_kills_file.as_deref()).min(i32::MAX as u64) as i32,
                )),
                _ => worker::run_blocking("exit cleanup", || {
                    let _ = self.runtime.kill(&id, libc::SIGKILL, true);
                    let stats = self.runtime.stats(&id)?;
                    Ok(Reply::pid(stats.oom_kills.min(i32::MAX as u64) as i32))
                }),
            }
            .inspect_err(|e| tracing::warn!(container = id, "after the init's exit: {e}"));
            let mut oom_killed = false;
            if let Ok(Reply { pid: kills, .. }) = oom_kills {
                let kills = kills as u64;
                if kills > c.oom_kills_reported {
                    oom_killed = true;
                    c.oom_kills_reported = kills;
                    self.events.oom(ev::TaskOOM {
                        container_id: r.container.clone(),
                        ..Default::default()
                    });
                }
            }
            if let Some(b) = c.plugins.as_mut() {
                if b.started_at.is_some() {
                    let op = b.exit_op(&r.container, r.pid, &r.exit, oom_killed);
                    plugins::notify(&self.plugins, b, &r.container, vec![op]);
                } else {
                    // Start has not returned yet: its hook goes first.
                    b.exit_before_start = Some(oom_killed);
                }
            }
        }
        let p = if r.exec_id.is_empty() {
            &mut c.init
        } else {
            match c.execs.get_mut(&r.exec_id) {
                Some(p) => p,
                None => return,
            }
        };
        // The output keep-alive readers stay until Delete: what the process
        // wrote last must stay in the FIFO for a client that is away.
        p.io.stdin_stop = None;
        p.io.copier_stop = None;
        if p.started && !p.exit_published {
            p.exit_published = true;
            self.events.task_exit(exit_event(&r.container, p));
        }
    }

    /// Runs runtime library work in a worker process (see `worker.rs`).
    async fn work<F>(&self, what: &str, f: F) -> Result<Reply>
    where
        F: FnOnce(&Shim) -> Result<Reply>,
    {
        worker::run(what, &[], || f(self)).await
    }

    /// [`Shim::work`] for a launch: the worker keeps `keep` (the
    /// process's stdio, [`io_fds`]) open.
    async fn launch<F>(&self, what: &str, keep: &[RawFd], f: F) -> Result<Reply>
    where
        F: FnOnce(&Shim) -> Result<Reply>,
    {
        worker::run(what, keep, || f(self)).await
    }

    /// After a create whose worker died without answering (or whose
    /// terminal failed): what it may have left of container `id` goes
    /// (its state, cgroup and processes, a hardened uid range, the rootfs
    /// the shim mounted on `rootfs`).
    async fn clean_up_create(&self, id: &str, rootfs: Option<&Path>, profile: Profile) {
        let cleaned = self
            .work("cleanup", |shim| {
                match shim.runtime.delete(id, true) {
                    Ok(()) | Err(husk_runtime::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                hardening::release(profile, id);
                if let Some(rootfs) = rootfs {
                    rootfs::unmount(rootfs);
                }
                Ok(Reply::default())
            })
            .await;
        if let Err(e) = cleaned {
            tracing::warn!(id, "cleaning up after a failed create: {e}");
        }
    }
}

/// [`husk_runtime::start_through`] without blocking the event loop: the
/// wait for the init's exec is a wait for POLLERR on our end of the FIFO.
async fn start_through(id: &str, fifo: &Path) -> Result<()> {
    let f = husk_runtime::signal_start(fifo).map_err(|e| match e {
        husk_runtime::StartError::Exited => ShimError::FailedPrecondition(format!(
            "container {id:?} cannot be started: its init exited before start"
        )),
        husk_runtime::StartError::Io(e) => e.into(),
    })?;
    let fd = std::os::fd::OwnedFd::from(f);
    match io::watch(fd, tokio::io::Interest::ERROR) {
        Ok(afd) => {
            if let Err(e) = afd.ready(tokio::io::Interest::ERROR).await {
                tracing::warn!(container = id, "waiting for the init's exec: {e}");
            }
        }
        Err(e) => tracing::warn!(container = id, "waiting for the init's exec: {e}"),
    }
    husk_runtime::started(fifo);
    Ok(())
}

/// The `oom_kill` count in a cgroup's keyed file (v1
/// `memory.oom_control`, v2 `memory.events`); 0 when unknown.
fn oom_kills_in(file: Option<&Path>) -> u64 {
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// [`husk_runtime::InitExit`] as a worker's answer field: empty for none,
/// else the `kill_all` byte and the file's path.
fn encode_init_exit(x: Option<&husk_runtime::InitExit>) -> Vec<u8> {
    let Some(x) = x else { return Vec::new() };
    let mut out = vec![x.kill_all as u8];
    if let Some(f) = &x.oom_kills_file {
        out.extend_from_slice(f.as_os_str().as_encoded_bytes());
    }
    out
}

fn decode_init_exit(field: &[u8]) -> Option<husk_runtime::InitExit> {
    let (&kill_all, path) = field.split_first()?;
    Some(husk_runtime::InitExit {
        kill_all: kill_all != 0,
        oom_kills_file: (!path.is_empty())
            .then(|| PathBuf::from(std::ffi::OsString::from_vec(path.to_vec()))),
    })
}

/// The descriptors of a process's stdio, which its launch worker keeps.
fn io_fds(io: &husk_runtime::ProcessIo) -> Vec<RawFd> {
    [&io.stdin, &io.stdout, &io.stderr]
        .into_iter()
        .flatten()
        .map(AsRawFd::as_raw_fd)
        .collect()
}

fn exit_event(container: &str, p: &Proc) -> ev::TaskExit {
    let exit = p.exit.unwrap_or_else(|| ExitRecord::now(KILLED));
    ev::TaskExit {
        container_id: container.into(),
        id: if p.exec_id.is_empty() {
            container.into()
        } else {
            p.exec_id.clone()
        },
        pid: p.pid.max(0) as u32,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    }
}

/// Settles the spec the container is created with, before anything
/// exists: the policy plugins' verdict and edits, written back to the
/// bundle's config.json. A denial is returned as the error.
fn prepare_spec(
    shim: &Shim,
    plugin_call: Option<plugins::CreateCall>,
) -> Result<Option<plugins::Binding>> {
    let Some(call) = plugin_call else {
        return Ok(None);
    };
    plugins::on_create(&shim.plugins, call).map(Some)
}

fn need(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(ShimError::InvalidArgument(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}

/// The ttrpc face of [`Shim`].
pub struct TaskService {
    pub shim: Arc<Shim>,
    pub profile: Profile,
}

type TtrpcResult<T> = ttrpc::Result<T>;

impl TaskService {
    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        need("id", &req.id)?;
        need("bundle", &req.bundle)?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::NotImplemented("restoring from a checkpoint"));
        }
        if self.shim.lock().containers.contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {:?} already exists",
                req.id
            )));
        }
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let (stdin, stdout, stderr, terminal) = (
            req.stdin.clone(),
            req.stdout.clone(),
            req.stderr.clone(),
            req.terminal,
        );
        let mounts = req.rootfs.clone();
        let plugin_config = plugins::config_path(req.options.as_ref())?;
        let profile = self.profile;
        // The daemon keeps the readers and pumps; the worker inherits what
        // the process gets.
        let (pio, mut keep) = io::open(&stdin, &stdout, &stderr, terminal)?;
        // Sent before the fork: the plugin service runs the create hooks
        // while the worker starts; the worker reads the verdict.
        let plugin_call = plugin_config
            .map(|c| plugins::send_create(&self.shim.plugins, c, &id, profile, &bundle))
            .transpose()?;
        self.shim.lock().launches_in_flight += 1;
        let mut inherited = io_fds(&pio);
        inherited.extend(plugin_call.as_ref().and_then(plugins::CreateCall::fd));
        let result = self
            .shim
            .launch("create", &inherited, |shim| {
                let binding = prepare_spec(shim, plugin_call)?;
                let mounted = rootfs::mount(&bundle, &mounts)?;
                let created = (|| {
                    // After the plugins (which cannot undo it) and the
                    // rootfs mount (mount points are created in it).
                    hardening::apply_to_bundle(profile, &id, &bundle, &shim.runtime)?;
                    shim.runtime
                        .create(
                            &id,
                            CreateOptions {
                                bundle: bundle.clone(),
                                keep_console: terminal,
                                io: pio,
                                ..Default::default()
                            },
                        )
                        .inspect_err(|_| hardening::release(profile, &id))
                        .map_err(ShimError::from)
                })();
                match created {
                    Ok(started) => Ok(Reply {
                        pid: started.pid,
                        fd: started.console_master,
                        fields: vec![
                            mounted
                                .map(|m| m.into_os_string().into_vec())
                                .unwrap_or_default(),
                            match &binding {
                                Some(b) => serde_json::to_vec(b).map_err(|e| {
                                    ShimError::Internal(format!("encode the plugin binding: {e}"))
                                })?,
                                None => Vec::new(),
                            },
                            encode_init_exit(started.init_exit.as_ref()),
                            started
                                .start_fifo
                                .map(|f| f.into_os_string().into_vec())
                                .unwrap_or_default(),
                        ],
                    }),
                    Err(e) => {
                        if let Some(m) = &mounted {
                            rootfs::unmount(m);
                        }
                        Err(e)
                    }
                }
            })
            .await;
        let created = match result {
            Ok(reply) => {
                let terminal_up = match reply.fd {
                    Some(master) => io::start_terminal(master, &stdin, &stdout, &mut keep),
                    None => Ok(()),
                };
                terminal_up.map(|()| (reply.pid, reply.fields))
            }
            Err(e) => Err(e),
        };
        let (pid, fields) = match created {
            Ok(c) => c,
            Err(e) => {
                // A worker that answered cleaned up itself; one that died
                // (or a terminal that failed) leaves it to us.
                if matches!(e, ShimError::Internal(_) | ShimError::Io { .. }) {
                    let rootfs = (!mounts.is_empty()).then(|| bundle.join("rootfs"));
                    self.shim
                        .clean_up_create(&id, rootfs.as_deref(), profile)
                        .await;
                }
                self.shim.lock().launches_in_flight -= 1;
                return Err(e);
            }
        };
        let mounted = fields
            .first()
            .filter(|m| !m.is_empty())
            .map(|m| PathBuf::from(std::ffi::OsString::from_vec(m.clone())));
        let binding = match fields.get(1).filter(|b| !b.is_empty()) {
            Some(b) => Some(serde_json::from_slice::<plugins::Binding>(b).map_err(|e| {
                ShimError::Internal(format!("decode the create worker's plugin binding: {e}"))
            })?),
            None => None,
        };
        let init_exit = fields.get(2).and_then(|f| decode_init_exit(f));
        let start_fifo = fields
            .get(3)
            .filter(|f| !f.is_empty())
            .map(|f| PathBuf::from(std::ffi::OsString::from_vec(f.clone())));
        let mut st = self.shim.lock();
        st.launches_in_flight -= 1;
        let container = Container {
            id: id.clone(),
            bundle: bundle.clone(),
            rootfs_mount: mounted,
            plugins: binding,
            init_exit,
            start_fifo,
            init: Proc {
                pid,
                stdin: stdin.clone(),
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                terminal,
                io: keep,
                ..Default::default()
            },
            ..Default::default()
        };
        st.containers.insert(id.clone(), container);
        self.shim.check_exited(&mut st, &id, "");
        // Orphans that died while the launch held the sweep off.
        reaper::sweep_orphans(&st);
        drop(st);
        self.shim.events.task_create(ev::TaskCreate {
            container_id: id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            io: Some(ev::TaskIO {
                stdin,
                stdout,
                stderr,
                terminal,
                ..Default::default()
            })
            .into(),
            pid: pid as u32,
            ..Default::default()
        });
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start_task(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        need("id", &req.id)?;
        if req.exec_id.is_empty() {
            self.start_init(&req.id).await
        } else {
            self.start_exec(&req.id, &req.exec_id).await
        }
    }

    async fn start_init(&self, id: &str) -> Result<api::StartResponse> {
        let start_fifo = {
            let st = self.shim.lock();
            let c = st.container(id)?;
            if c.init.status(c.paused) != ProcStatus::Created {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id:?} cannot be started: it is not in the created state"
                )));
            }
            c.start_fifo.clone()
        };
        match start_fifo {
            // A byte to the FIFO and a wait for the exec: no worker.
            Some(fifo) => start_through(id, &fifo).await?,
            None => {
                self.shim
                    .work("start", |shim| {
                        shim.runtime.start(id)?;
                        Ok(Reply::default())
                    })
                    .await?;
            }
        }
        let mut st = self.shim.lock();
        let c = st.container_mut(id)?;
        c.init.started = true;
        let pid = c.init.pid;
        if let Some(b) = c.plugins.as_mut() {
            b.started_at = Some(std::time::SystemTime::now());
            let mut ops = vec![b.start_op(id, pid)];
            if let (Some(oom_killed), Some(exit)) = (b.exit_before_start.take(), &c.init.exit) {
                ops.push(b.exit_op(id, pid, exit, oom_killed));
            }
            plugins::notify(&self.shim.plugins, b, id, ops);
        }
        self.shim.events.task_start(ev::TaskStart {
            container_id: id.into(),
            pid: pid as u32,
            ..Default::default()
        });
        // An exit reaped before Start returned is reported now, after the
        // start event, exactly once.
        if c.init.exit.is_some() && !c.init.exit_published {
            c.init.exit_published = true;
            self.shim.events.task_exit(exit_event(id, &c.init));
        }
        self.shim.check_exited(&mut st, id, "");
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start_exec(&self, id: &str, exec_id: &str) -> Result<api::StartResponse> {
        let (spec, stdin, stdout, stderr, terminal) = {
            let mut st = self.shim.lock();
            let c = st.container(id)?;
            if !c.init.is_running() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id:?} is not running"
                )));
            }
            let p = st.process(id, exec_id)?;
            if p.pid != 0 || p.exit.is_some() {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {exec_id:?} was already started"
                )));
            }
            let out = (
                p.spec.clone().unwrap_or_default(),
                p.stdin.clone(),
                p.stdout.clone(),
                p.stderr.clone(),
                p.terminal,
            );
            st.launches_in_flight += 1;
            out
        };
        let profile = self.profile;
        let result = match io::open(&stdin, &stdout, &stderr, terminal) {
            Ok((pio, mut keep)) => self
                .shim
                .launch("exec", &io_fds(&pio), |shim| {
                    let mut spec: oci_spec::runtime::Process = serde_json::from_value(spec)
                        .map_err(|e| {
                            ShimError::InvalidArgument(format!(
                                "exec {exec_id:?}: process spec: {e}"
                            ))
                        })?;
                    hardening::apply_exec(profile, &mut spec)?;
                    let started = shim.runtime.exec(
                        id,
                        &spec,
                        ExecOptions {
                            keep_console: terminal,
                            io: pio,
                            ..Default::default()
                        },
                    )?;
                    Ok(Reply {
                        pid: started.pid,
                        fd: started.console_master,
                        fields: Vec::new(),
                    })
                })
                .await
                .and_then(|reply| {
                    if let Some(master) = reply.fd {
                        io::start_terminal(master, &stdin, &stdout, &mut keep).inspect_err(
                            |_| {
                                let _ = husk_runtime::sys::kill(reply.pid, libc::SIGKILL);
                            },
                        )?;
                    }
                    Ok((reply.pid, keep))
                }),
            Err(e) => Err(e),
        };
        let mut st = self.shim.lock();
        st.launches_in_flight -= 1;
        let (pid, keep) = result?;
        let p = st.process_mut(id, exec_id)?;
        p.pid = pid;
        p.io = keep;
        p.started = true;
        self.shim.events.exec_started(ev::TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid: pid as u32,
            ..Default::default()
        });
        self.shim.check_exited(&mut st, id, exec_id);
        reaper::sweep_orphans(&st);
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state_of(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        let st = self.shim.lock();
        let c = st.container(&req.id)?;
        let p = st.process(&req.id, &req.exec_id)?;
        let status = match p.status(c.paused) {
            ProcStatus::Created => TaskStatus::CREATED,
            ProcStatus::Running => TaskStatus::RUNNING,
            ProcStatus::Paused => TaskStatus::PAUSED,
            ProcStatus::Stopped => TaskStatus::STOPPED,
        };
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid.max(0) as u32,
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let Some(exit) = p.exit {
            resp.exit_status = exit.status;
            resp.exited_at = Some(exit.timestamp()).into();
        }
        Ok(resp)
    }

    async fn wait_for(&self, req: &api::WaitRequest) -> Result<api::WaitResponse> {
        loop {
            let notified = self.shim.exited.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shim.lock();
                if let Some(exit) = st.process(&req.id, &req.exec_id)?.exit {
                    return Ok(api::WaitResponse {
                        exit_status: exit.status,
                        exited_at: Some(exit.timestamp()).into(),
                        ..Default::default()
                    });
                }
            }
            notified.await;
        }
    }

    async fn kill_process(&self, req: api::KillRequest) -> Result<()> {
        let signal = req.signal as i32;
        let pid = {
            let st = self.shim.lock();
            let p = st.process(&req.id, &req.exec_id)?;
            if !req.all && !p.is_running() {
                return Err(ShimError::NotFound(format!(
                    "process {:?} of container {:?} has already finished",
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    },
                    req.id
                )));
            }
            p.pid
        };
        if req.exec_id.is_empty() {
            self.shim
                .work("kill", |shim| {
                    shim.runtime.kill(&req.id, signal, req.all)?;
                    Ok(Reply::default())
                })
                .await
                .map(drop)
        } else {
            husk_runtime::sys::kill(pid, signal)
                .map_err(ShimError::io(format!("signal {signal} to pid {pid}")))
        }
    }

    async fn delete_process(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        need("id", &req.id)?;
        if !req.exec_id.is_empty() {
            let mut st = self.shim.lock();
            let c = st.container_mut(&req.id)?;
            let p = c.execs.get(&req.exec_id).ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec {:?} does not exist in container {:?}",
                    req.exec_id, req.id
                ))
            })?;
            if p.is_running() {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec {:?} is still running; kill it first",
                    req.exec_id
                )));
            }
            let p = c.execs.remove(&req.exec_id).unwrap_or_default();
            let exit = p.exit.unwrap_or_else(|| ExitRecord::now(0));
            return Ok(api::DeleteResponse {
                pid: p.pid.max(0) as u32,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            });
        }
        let id = req.id.clone();
        let mount = {
            let mut st = self.shim.lock();
            let c = st.container_mut(&id)?;
            if c.init.started && c.init.exit.is_none() {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id:?} is running; kill it before deleting it"
                )));
            }
            if c.init.exit.is_none() {
                // Created, never started: delete kills it.
                c.init.exit = Some(ExitRecord::now(KILLED));
            }
            c.rootfs_mount.clone()
        };
        let profile = self.profile;
        self.shim
            .work("delete", |shim| {
                match shim.runtime.delete(&id, true) {
                    Ok(()) | Err(husk_runtime::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                hardening::release(profile, &id);
                if let Some(m) = &mount {
                    rootfs::unmount(m);
                }
                Ok(Reply::default())
            })
            .await?;
        let removed = self.shim.lock().containers.remove(&id);
        self.shim.exited.notify_waiters();
        let c = removed.ok_or_else(|| {
            ShimError::NotFound(format!("container {id:?} was deleted concurrently"))
        })?;
        let exit = c.init.exit.unwrap_or_else(|| ExitRecord::now(KILLED));
        self.shim.events.task_delete(ev::TaskDelete {
            container_id: id.clone(),
            pid: c.init.pid.max(0) as u32,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            id: id.clone(),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid: c.init.pid.max(0) as u32,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn exec_process(&self, req: api::ExecProcessRequest) -> Result<()> {
        need("id", &req.id)?;
        need("exec_id", &req.exec_id)?;
        let spec: serde_json::Value = serde_json::from_slice(&req.spec.value).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "exec {:?}: process spec is not JSON: {e}",
                req.exec_id
            ))
        })?;
        // Checked against the OCI schema in a worker: the spec's
        // deserializer is the runtime library's code.
        self.shim
            .work("exec check", |_| {
                serde_json::from_value::<oci_spec::runtime::Process>(spec.clone()).map_err(
                    |e| {
                        ShimError::InvalidArgument(format!(
                            "exec {:?}: process spec: {e}",
                            req.exec_id
                        ))
                    },
                )?;
                Ok(Reply::default())
            })
            .await?;
        let mut st = self.shim.lock();
        let c = st.container_mut(&req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!(
                "exec {:?} already exists in container {:?}",
                req.exec_id, req.id
            )));
        }
        if !c.init.is_running() {
            return Err(ShimError::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        c.execs.insert(
            req.exec_id.clone(),
            Proc {
                exec_id: req.exec_id.clone(),
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                spec: Some(spec),
                ..Default::default()
            },
        );
        drop(st);
        self.shim.events.exec_added(ev::TaskExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
            ..Default::default()
        });
        Ok(())
    }

    async fn pause_resume(&self, id: String, pause: bool) -> Result<()> {
        self.shim.lock().container(&id)?;
        self.shim
            .work(if pause { "pause" } else { "resume" }, |shim| {
                if pause {
                    shim.runtime.pause(&id)?;
                } else {
                    shim.runtime.resume(&id)?;
                }
                Ok(Reply::default())
            })
            .await?;
        self.shim.lock().container_mut(&id)?.paused = pause;
        if pause {
            self.shim.events.paused(ev::TaskPaused {
                container_id: id,
                ..Default::default()
            });
        } else {
            self.shim.events.resumed(ev::TaskResumed {
                container_id: id,
                ..Default::default()
            });
        }
        Ok(())
    }

    async fn stats_of(&self, id: String) -> Result<api::StatsResponse> {
        self.shim.lock().container(&id)?;
        let reply = self
            .shim
            .work("stats", |shim| {
                let (record, _) = shim.runtime.state(&id)?;
                let stats = shim.runtime.stats(&id)?;
                let any = metrics::to_any(&stats, record.cgroup.hierarchy().is_v2())?;
                Ok(Reply {
                    fields: vec![any.type_url.into_bytes(), any.value],
                    ..Default::default()
                })
            })
            .await?;
        let mut any = protobuf::well_known_types::any::Any::new();
        any.type_url = String::from_utf8_lossy(reply.field(0)).into_owned();
        any.value = reply.field(1).to_vec();
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.state_of(&req)?)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        self.create_task(req).await.map_err(|e| {
            tracing::warn!(id, "create failed: {e}");
            e.into()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Ok(self.start_task(req).await?)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.delete_process(req).await?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.shim
            .lock()
            .container(&req.id)
            .map_err(ttrpc::Error::from)?;
        let reply = self
            .shim
            .work("pids", |shim| {
                let pids = shim.runtime.pids(&req.id)?;
                Ok(Reply {
                    fields: vec![pids.iter().flat_map(|p| p.to_le_bytes()).collect()],
                    ..Default::default()
                })
            })
            .await?;
        Ok(api::PidsResponse {
            processes: reply
                .field(0)
                .chunks_exact(4)
                .map(|b| ProcessInfo {
                    pid: i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pause_resume(req.id, true).await?;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.pause_resume(req.id, false).await?;
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(ShimError::NotImplemented("Checkpoint").into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.kill_process(req).await?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        self.exec_process(req).await?;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let st = self.shim.lock();
        let p = st.process(&req.id, &req.exec_id)?;
        let Some(master) = &p.io.console else {
            return Err(ShimError::FailedPrecondition(format!(
                "process of {:?} has no terminal",
                req.id
            ))
            .into());
        };
        io::resize(master, req.width, req.height)?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let mut st = self.shim.lock();
        let p = st.process_mut(&req.id, &req.exec_id)?;
        if req.stdin {
            p.io.stdin_stop = None;
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.shim
            .lock()
            .container(&req.id)
            .map_err(ttrpc::Error::from)?;
        self.shim
            .work("update", |shim| {
                let resources: oci_spec::runtime::LinuxResources =
                    serde_json::from_slice(&req.resources.value).map_err(|e| {
                        ShimError::InvalidArgument(format!("update {:?}: resources: {e}", req.id))
                    })?;
                shim.runtime.update(&req.id, &resources)?;
                Ok(Reply::default())
            })
            .await?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.wait_for(&req).await?)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(self.stats_of(req.id).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let st = self.shim.lock();
        let task_pid = st
            .containers
            .get(&req.id)
            .map(|c| c.init.pid.max(0) as u32)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: format!(
                "husk-shim {} ({})",
                env!("CARGO_PKG_VERSION"),
                self.profile.name()
            ),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.shim.lock().containers.is_empty() {
            // Exit hooks of the containers just deleted may still run.
            let plugins = Arc::clone(&self.shim.plugins);
            let _ = tokio::task::spawn_blocking(move || {
                plugins.wait_for_hooks(std::time::Duration::from_secs(2))
            })
            .await;
            self.shim.shutdown.notify_one();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_either_keyed_file() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(oom_kills_in(Some(&v1)), 3);
        let v2 = dir.path().join("memory.events");
        std::fs::write(
            &v2,
            "low 0\nhigh 0\nmax 1\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills_in(Some(&v2)), 2);
        assert_eq!(oom_kills_in(Some(&dir.path().join("missing"))), 0);
        assert_eq!(oom_kills_in(None), 0);
    }

    #[test]
    fn init_exit_round_trips_through_an_answer_field() {
        for x in [
            husk_runtime::InitExit {
                kill_all: false,
                oom_kills_file: Some("/sys/fs/cgroup/memory/husk-x/memory.oom_control".into()),
            },
            husk_runtime::InitExit {
                kill_all: true,
                oom_kills_file: None,
            },
        ] {
            assert_eq!(decode_init_exit(&encode_init_exit(Some(&x))), Some(x));
        }
        assert!(encode_init_exit(None).is_empty());
        assert_eq!(decode_init_exit(&[]), None);
    }
}
