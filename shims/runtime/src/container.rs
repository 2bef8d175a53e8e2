//! The container lifecycle: create, start, state, kill, pause, resume,
//! delete, and exec into a running container.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

use crate::cgroups::{Cgroup, Hierarchy, Stats};
use crate::console;
use crate::devices;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookKind};
use crate::init::{CreateConfig, InitConfig};
use crate::launch::{self, LaunchHooks};
use crate::mounts;
use crate::namespaces::{self, Plan};
use crate::rootfs::{CgroupMountSource, RootfsPlan};
use crate::sealed_exe::SealedExe;
use crate::seccomp;
use crate::spec;
use crate::state::{self, ContainerState, StateDir, Status};
use crate::sys;

/// Where `husk-runtime` keeps state unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/husk-runtime";

/// Where the container's process reads and writes. `None` fields inherit
/// the caller's descriptor, as the CLI does; a shim passes its FIFOs or
/// pipes here.
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// Keep the pty master for the caller instead of sending it to a
    /// console socket (`husk-runtime run` on a terminal).
    pub keep_console: bool,
    pub io: ProcessIo,
}

#[derive(Debug, Default)]
pub struct ExecOptions {
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: i32,
    pub keep_console: bool,
    pub io: ProcessIo,
}

pub struct Started {
    pub pid: i32,
    pub console_master: Option<OwnedFd>,
    /// What the init's exit needs, known at create (`None` for an exec).
    pub init_exit: Option<InitExit>,
    /// The exec FIFO, when starting the init needs nothing but what
    /// [`start_through`] does (no poststart hooks): a caller may start it
    /// so (or with [`signal_start`] and its own wait) instead of through
    /// [`Runtime::start`]. `None` for an exec.
    pub start_fifo: Option<PathBuf>,
}

/// What a shim does when a container's init exits, without loading the
/// container's state again: processes that can outlive the init (with no
/// pid namespace of its own; in one, the kernel kills them with the init)
/// are killed, and the cgroup's OOM kills are counted from this file
/// (`oom_kill` line; see [`Cgroup::oom_kills_file`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitExit {
    pub kill_all: bool,
    pub oom_kills_file: Option<PathBuf>,
}

pub struct Runtime {
    states: StateDir,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime {
            states: StateDir::new(root),
        }
    }

    pub fn states(&self) -> &StateDir {
        &self.states
    }

    /// Creates the container: namespaces, cgroup, rootfs, and an init that
    /// waits for [`Runtime::start`]. Nothing is left behind on failure.
    pub fn create(&self, id: &str, opts: CreateOptions) -> Result<Started> {
        spec::validate_id(id)?;
        let bundle = std::path::absolute(&opts.bundle)
            .context(|| format!("resolve bundle path {}", opts.bundle.display()))?;
        let spec = spec::load(&bundle)?;
        spec::validate(&spec)?;
        let rootfs = spec::rootfs(&spec, &bundle)?;
        let process = spec.process().clone().unwrap_or_default();
        let terminal = process.terminal().unwrap_or(false);
        if terminal && opts.console_socket.is_none() && !opts.keep_console {
            return Err(Error::invalid_spec(
                "process.terminal is true but no --console-socket was given to receive the pty",
            ));
        }
        let hierarchy = Hierarchy::detect()?;
        // Slow where a handle is made, and independent of what follows:
        // start it now.
        let sealed_exe = SealedExe::prepare_in_background();
        // libseccomp takes milliseconds for Docker's profile (spec::validate
        // checked it already): compile it meanwhile too.
        // (No thread without a profile: a thread's start and exit cost
        // more than nothing, and on a busy machine a wait for a CPU.)
        let profiles = seccomp::profiles(&spec)?;
        let seccomp_compiling = (!profiles.is_empty())
            .then(|| std::thread::spawn(move || seccomp::compile_all(&profiles)));
        self.states.claim(id)?;
        let mut cleanup = CreateCleanup {
            states: &self.states,
            id,
            cgroup: None,
            armed: true,
        };
        let linux = spec.linux().clone().unwrap_or_default();
        let cgroup_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("/husk-{id}"));
        let cgroup = Cgroup::new(hierarchy, &cgroup_path)?;
        cgroup.create()?;
        cleanup.cgroup = Some(cgroup.clone());
        let device_nodes = devices::plan(linux.devices().as_deref().unwrap_or_default())?;
        let mut resources = linux.resources().clone().unwrap_or_default();
        resources.set_devices(Some(devices::cgroup_rules(
            resources.devices().as_deref().unwrap_or_default(),
            &device_nodes,
        )));
        cgroup.apply(&resources)?;
        let mut record = ContainerState {
            id: id.to_string(),
            pid: 0,
            pid_start_time: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: state::now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: cgroup.clone(),
            hooks: spec.hooks().clone(),
            process: Some(process.clone()),
            seccomp: linux.seccomp().clone(),
            seccomp_program: None,
            owner: String::new(),
        };
        // Saved before any process exists, so `delete` can always clean up.
        self.states.save(&record)?;
        let fifo = self.states.exec_fifo(id);
        sys::mkfifo(&fifo, 0o600).context(|| format!("create exec fifo {}", fifo.display()))?;
        let no_poststart = spec
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().as_ref())
            .is_none_or(|h| h.is_empty());
        let start_fifo = no_poststart.then(|| fifo.clone());

        let namespaces = Plan::from_spec(&spec);
        let init_exit = InitExit {
            kill_all: !namespaces.creates(LinuxNamespaceType::Pid),
            oom_kills_file: cgroup.oom_kills_file(),
        };
        let uid_map =
            namespaces::format_id_map(linux.uid_mappings().as_deref().unwrap_or_default());
        let gid_map =
            namespaces::format_id_map(linux.gid_mappings().as_deref().unwrap_or_default());
        // A joined user namespace with maps in the spec (a hardened pod's
        // container) is checked against them, and they give stdio's owner.
        let stdio_owner = namespaces
            .in_user_namespace()
            .then(|| {
                crate::init::stdio_owner(
                    &uid_map,
                    &gid_map,
                    process.user().uid(),
                    process.user().gid(),
                )
            })
            .flatten();
        let joined_user_maps = (namespaces.joins(LinuxNamespaceType::User) && !uid_map.is_empty())
            .then(|| (uid_map.clone(), gid_map.clone()));
        let mut config = InitConfig {
            time_offsets: linux.time_offsets().clone(),
            process: process.clone(),
            create: Some(CreateConfig {
                rootfs: rootfs_plan(
                    &spec,
                    &bundle,
                    &rootfs,
                    &namespaces,
                    &cgroup,
                    device_nodes,
                    opts.no_pivot,
                )?,
                hostname: spec.hostname().clone(),
                domainname: spec.domainname().clone(),
                sysctl: linux.sysctl().clone().unwrap_or_default(),
                exec_fifo: fifo,
                hooks: spec.hooks().clone(),
            }),
            namespaces,
            console: terminal,
            preserve_fds: opts.preserve_fds + listen_fds(),
            seccomp: None,
            landlock: crate::landlock::requested(spec.annotations().as_ref()),
            stdio_owner,
            joined_user_maps,
        };
        let uid_maps = linux.uid_mappings().clone().unwrap_or_default();
        let gid_maps = linux.gid_mappings().clone().unwrap_or_default();
        let mut run_create_runtime = |pid: i32| -> Result<String> {
            let mut creating = record.clone();
            creating.pid = pid;
            let json = creating.oci_json(Status::Creating);
            hooks::run(HookKind::Prestart, spec.hooks().as_ref(), &json)?;
            hooks::run(HookKind::CreateRuntime, spec.hooks().as_ref(), &json)?;
            Ok(creating.oci_json(Status::Created))
        };
        if let Some(preparing) = sealed_exe {
            preparing
                .join()
                .map_err(|_| Error::Init("copying the runtime binary panicked".into()))??;
        }
        config.seccomp = match seccomp_compiling {
            Some(t) => t
                .join()
                .map_err(|_| Error::Init("compiling the seccomp profile panicked".into()))??,
            None => None,
        };
        let seccomp_program = config.seccomp.clone();
        let launched = launch::launch(
            config,
            &cgroup,
            LaunchHooks {
                id_maps: Some((&uid_maps, &gid_maps)),
                oom_score_adj: process.oom_score_adj(),
                create_runtime: Some(&mut run_create_runtime),
            },
            opts.io,
        )?;
        let console_master =
            hand_over_console(launched.console_master, opts.console_socket.as_deref())?;
        record.pid = launched.pid;
        record.seccomp_program = seccomp_program;
        record.pid_start_time = sys::process_start_time(launched.pid)
            .context(|| format!("read start time of init {}", launched.pid))?
            .0;
        self.states.save(&record)?;
        if let Some(pid_file) = &opts.pid_file {
            state::replace_file(pid_file, launched.pid.to_string().as_bytes())?;
        }
        cleanup.armed = false;
        Ok(Started {
            pid: launched.pid,
            console_master,
            init_exit: Some(init_exit),
            start_fifo,
        })
    }

    /// Lets a created container's init exec the container's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let record = self.states.load(id)?;
        let status = self.states.status(&record);
        if status != Status::Created {
            return Err(wrong_state(
                id,
                status,
                "only a created container can be started",
            ));
        }
        start_through(&self.states.exec_fifo(id)).map_err(|e| match e {
            StartError::Exited => wrong_state(id, Status::Stopped, "its init exited before start"),
            StartError::Io(e) => e,
        })?;
        hooks::run_warn(
            HookKind::Poststart,
            record.hooks.as_ref(),
            &record.oci_json(Status::Running),
        );
        Ok(())
    }

    pub fn state(&self, id: &str) -> Result<(ContainerState, Status)> {
        let record = self.states.load(id)?;
        let status = self.states.status(&record);
        Ok((record, status))
    }

    pub fn list(&self) -> Result<Vec<(ContainerState, Status)>> {
        Ok(self
            .states
            .ids()?
            .into_iter()
            .filter_map(|id| self.state(&id).ok())
            .collect())
    }

    /// Sends `signal` to the init, or with `all` to every process in the
    /// container's cgroup.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        let (record, status) = self.state(id)?;
        if all {
            for pid in record.cgroup.pids()? {
                let _ = sys::kill(pid, signal);
            }
            return Ok(());
        }
        if status == Status::Stopped {
            return Err(wrong_state(id, status, "there is no process to signal"));
        }
        sys::kill(record.pid, signal)
            .context(|| format!("send signal {signal} to pid {}", record.pid))
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let (record, status) = self.state(id)?;
        if status != Status::Running && status != Status::Created {
            return Err(wrong_state(
                id,
                status,
                "only a running container can be paused",
            ));
        }
        Ok(record.cgroup.freeze()?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let (record, status) = self.state(id)?;
        if status != Status::Paused {
            return Err(wrong_state(
                id,
                status,
                "only a paused container can be resumed",
            ));
        }
        Ok(record.cgroup.thaw()?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        Ok(self.states.load(id)?.cgroup.pids()?)
    }

    pub fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.states.load(id)?.cgroup.stats()?)
    }

    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        Ok(self.states.load(id)?.cgroup.apply(resources)?)
    }

    /// Removes the container: kills what is left (running containers only
    /// with `force`), removes its cgroup, runs poststop hooks, and forgets
    /// it. Idempotent about half-created containers.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        spec::validate_id(id)?;
        let record = match self.states.load(id) {
            Ok(r) => r,
            Err(Error::NotFound { .. }) if self.states.dir(id).exists() => {
                // A create that died before writing any state: nothing to stop.
                return self.states.remove(id);
            }
            Err(e) => return Err(e),
        };
        let status = self.states.status(&record);
        match status {
            Status::Running | Status::Paused if !force => {
                return Err(wrong_state(
                    id,
                    status,
                    "stop it first, or delete it with --force to kill it",
                ))
            }
            _ => {}
        }
        if status == Status::Paused {
            let _ = record.cgroup.thaw();
        }
        if status != Status::Stopped {
            let _ = sys::kill(record.pid, libc::SIGKILL);
        }
        kill_cgroup(&record.cgroup)?;
        wait_gone(&record);
        record.cgroup.destroy()?;
        hooks::run_warn(
            HookKind::Poststop,
            record.hooks.as_ref(),
            &record.oci_json(Status::Stopped),
        );
        self.states.remove(id)
    }

    /// Starts `process` inside the running container `id`: same
    /// namespaces and cgroup, its own user, capabilities and environment.
    pub fn exec(&self, id: &str, process: &Process, opts: ExecOptions) -> Result<Started> {
        let (record, status) = self.state(id)?;
        match status {
            Status::Running | Status::Created => {}
            Status::Paused => return Err(wrong_state(id, status, "resume it before exec")),
            _ => return Err(wrong_state(id, status, "exec needs a running container")),
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal && opts.console_socket.is_none() && !opts.keep_console {
            return Err(Error::invalid_spec(
                "a terminal was requested but no --console-socket was given to receive the pty",
            ));
        }
        let args_ok = process.args().as_ref().is_some_and(|a| !a.is_empty());
        if !args_ok {
            return Err(Error::invalid_spec("exec needs a command to run"));
        }
        let joined = namespaces::of_process(record.pid)?;
        let config = InitConfig {
            namespaces: Plan {
                join: joined.clone(),
                create: Vec::new(),
            },
            time_offsets: None,
            process: process.clone(),
            create: None,
            console: terminal,
            preserve_fds: opts.preserve_fds,
            seccomp: match (&record.seccomp_program, &record.seccomp) {
                (Some(program), _) => Some(program.clone()),
                (None, Some(profile)) => Some(seccomp::compile(profile)?),
                (None, None) => None,
            },
            landlock: crate::landlock::requested(Some(&record.annotations)),
            stdio_owner: exec_stdio_owner(&joined, record.pid, process),
            joined_user_maps: None,
        };
        let launched = launch::launch(
            config,
            &record.cgroup,
            LaunchHooks {
                id_maps: None,
                oom_score_adj: None,
                create_runtime: None,
            },
            opts.io,
        )?;
        let console_master =
            hand_over_console(launched.console_master, opts.console_socket.as_deref())?;
        if let Some(pid_file) = &opts.pid_file {
            state::replace_file(pid_file, launched.pid.to_string().as_bytes())?;
        }
        Ok(Started {
            pid: launched.pid,
            console_master,
            init_exit: None,
            start_fifo: None,
        })
    }
}

fn wrong_state(id: &str, status: Status, action: &str) -> Error {
    Error::WrongState {
        id: id.into(),
        status: status.to_string(),
        action: action.into(),
    }
}

/// For `exec` into a container with its own user namespace: the host ids
/// the exec'd process's stdio must belong to (see `InitConfig`).
fn exec_stdio_owner(
    joined: &[(LinuxNamespaceType, PathBuf)],
    pid: i32,
    process: &Process,
) -> Option<(u32, u32)> {
    if !joined.iter().any(|(t, _)| *t == LinuxNamespaceType::User) {
        return None;
    }
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    crate::init::stdio_owner(
        &read("uid_map")?,
        &read("gid_map")?,
        process.user().uid(),
        process.user().gid(),
    )
}

/// Sends the pty master to the console socket, or returns it to the caller.
fn hand_over_console(master: Option<OwnedFd>, socket: Option<&Path>) -> Result<Option<OwnedFd>> {
    match (master, socket) {
        (Some(m), Some(sock)) => {
            use std::os::fd::AsRawFd;
            console::send_to_console_socket(sock, m.as_raw_fd())?;
            Ok(None)
        }
        (m, _) => Ok(m),
    }
}

/// Descriptors passed by systemd socket activation, kept like runc does.
fn listen_fds() -> i32 {
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the init has executed the container's program (or died):
/// poststart hooks must follow the exec, not race the init's
/// startContainer hooks. The init holds the fifo open, close-on-exec, until
/// then; once nothing has it open for reading, opening it for writing
/// without blocking fails with ENXIO.
/// Why [`start_through`] failed.
#[derive(Debug)]
pub enum StartError {
    /// The init is gone (nobody reads the FIFO).
    Exited,
    Io(Error),
}

/// Starts a created container's init through its exec FIFO, blocking
/// until it has exec'd the container's program (or died): [`signal_start`],
/// [`sys::wait_no_readers`], [`started`].
pub fn start_through(fifo: &Path) -> std::result::Result<(), StartError> {
    let f = signal_start(fifo)?;
    if let Err(e) = sys::wait_no_readers(std::os::fd::AsFd::as_fd(&f), -1) {
        tracing::warn!(
            "waiting for the container's exec through {}: {e}",
            fifo.display()
        );
    }
    drop(f);
    started(fifo);
    Ok(())
}

/// Writes the byte a created init waits for to its exec FIFO. Returns our
/// write end: the init's end is close-on-exec, so once it has exec'd the
/// container's program (or died) no reader is left and the write end
/// reports POLLERR. Waiting for that is one wake-up at the moment it
/// happens (polling by reopening the FIFO woke every 100 µs, and later on
/// a busy machine). Then [`started`].
pub fn signal_start(fifo: &Path) -> std::result::Result<std::fs::File, StartError> {
    let f = sys::open(fifo, libc::O_WRONLY | libc::O_NONBLOCK).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENXIO) {
            StartError::Exited
        } else {
            StartError::Io(Error::Io {
                context: format!("open exec fifo {}", fifo.display()),
                source: e,
            })
        }
    })?;
    let mut f = std::fs::File::from(f);
    std::io::Write::write_all(&mut f, b"0")
        .context(|| format!("signal start through {}", fifo.display()))
        .map_err(StartError::Io)?;
    Ok(f)
}

/// The init has exec'd: the FIFO goes, and the container counts as
/// running.
pub fn started(fifo: &Path) {
    let _ = std::fs::remove_file(fifo);
}

/// SIGKILLs everything in the cgroup, so nothing outlives delete.
fn kill_cgroup(cgroup: &Cgroup) -> Result<()> {
    if !cgroup.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup.pids()?;
        if pids.is_empty() || Instant::now() > deadline {
            return Ok(());
        }
        for pid in pids {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (bounded) until the init is gone, reaping it if it is our child.
fn wait_gone(record: &ContainerState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while record.init_alive() && Instant::now() < deadline {
        let _ = sys::waitpid(record.pid, true);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Undoes a failed create: cgroup and state directory.
struct CreateCleanup<'a> {
    states: &'a StateDir,
    id: &'a str,
    cgroup: Option<Cgroup>,
    armed: bool,
}

impl Drop for CreateCleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(cg) = &self.cgroup {
            let _ = kill_cgroup(cg);
            if let Err(e) = cg.destroy() {
                tracing::warn!("cleaning up after a failed create: {e}");
            }
        }
        let _ = self.states.remove(self.id);
    }
}

fn rootfs_plan(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    namespaces: &Plan,
    cgroup: &Cgroup,
    device_nodes: Vec<devices::DeviceNode>,
    no_pivot: bool,
) -> Result<RootfsPlan> {
    let linux = spec.linux().clone().unwrap_or_default();
    let mounts = spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| mounts::plan(m, bundle).map(Into::into))
        .collect::<Result<Vec<_>>>()?;
    let devices = device_nodes.into_iter().map(Into::into).collect();
    Ok(RootfsPlan {
        rootfs: rootfs.to_path_buf(),
        mounts,
        devices,
        in_user_namespace: namespaces.in_user_namespace(),
        // cgroup v1 hierarchies cannot be mounted from a user namespace.
        cgroup: cgroup_mount_source(
            cgroup,
            namespaces.creates(LinuxNamespaceType::Cgroup)
                && (cgroup.hierarchy().is_v2() || !namespaces.in_user_namespace()),
        ),
        propagation: mounts::rootfs_propagation(linux.rootfs_propagation().as_deref())?,
        masked_paths: linux
            .masked_paths()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_paths: linux
            .readonly_paths()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        no_pivot,
    })
}

/// Groups the container's cgroup directories by hierarchy: on v1 hosts
/// several controllers can share one (cpu,cpuacct).
fn cgroup_mount_source(cgroup: &Cgroup, own_namespace: bool) -> CgroupMountSource {
    let mut by_dir: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for (controller, dir) in cgroup.controller_dirs() {
        by_dir.entry(dir).or_default().push(controller);
    }
    let mut hierarchies: Vec<(String, PathBuf)> = by_dir
        .into_iter()
        .map(|(dir, mut controllers)| {
            controllers.sort();
            (controllers.join(","), dir)
        })
        .collect();
    hierarchies.sort();
    CgroupMountSource {
        hierarchies,
        own_namespace,
    }
}
