//! The container's init, in two processes.
//!
//! The runtime starts its own sealed binary with [`INIT_ARG`]; that
//! *intermediate* process enters or creates the namespaces (asking the
//! runtime to write the user namespace's id maps), then forks the
//! *container init*, which is PID 1 of a new pid namespace. The init
//! builds the rootfs, reports ready, waits on the exec fifo for `start`,
//! and execs the container's program. Both talk to the runtime over one
//! [`Channel`].
//!
//! [`INIT_ARG`]: crate::sealed_exe::INIT_ARG

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, LinuxNamespaceType, LinuxTimeOffset, Process};
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::console;
use crate::error::{Context, Error, Result};
use crate::hooks::{self, HookKind};
use crate::landlock;
use crate::namespaces::{self, Plan};
use crate::process;
use crate::rootfs::{self, RootfsPlan};
use crate::sealed_exe::{INIT_FD_ENV, INIT_PROCESS_NAME};
use crate::seccomp;
use crate::sys;

/// What the runtime tells the intermediate process to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub namespaces: Plan,
    pub time_offsets: Option<HashMap<String, LinuxTimeOffset>>,
    pub process: Process,
    /// Present for a new container, absent for exec into a running one.
    pub create: Option<CreateConfig>,
    /// Allocate a pty and send its master to the runtime.
    pub console: bool,
    /// Descriptors 3..3+N stay open for the container's process.
    pub preserve_fds: i32,
    /// `linux.seccomp`, compiled by the runtime, for the container's
    /// process and every exec.
    #[serde(default)]
    pub seccomp: Option<seccomp::Program>,
    /// Confine the process to its root with Landlock where the kernel can
    /// (the `io.husk.landlock` annotation; see `landlock.rs`).
    #[serde(default)]
    pub landlock: bool,
    /// In a user namespace: the host uid/gid the process's stdio FIFOs,
    /// pipes and sockets are given to, so it can reopen them (/dev/stdout).
    #[serde(default)]
    pub stdio_owner: Option<(u32, u32)>,
    /// Joining a user namespace whose maps the spec states: the text of
    /// the uid_map and gid_map it must have, checked once inside (the
    /// process named by its path may have been replaced since).
    #[serde(default)]
    pub joined_user_maps: Option<(String, String)>,
}

/// The host ids that `uid`/`gid` are under these maps (the text of
/// /proc/PID/uid_map and gid_map): who must own the stdio of a process
/// in that user namespace. `None` if either id is unmapped.
pub fn stdio_owner(uid_map: &str, gid_map: &str, uid: u32, gid: u32) -> Option<(u32, u32)> {
    fn host(map: &str, id: u32) -> Option<u32> {
        map.lines().find_map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            let (inside, outside, count) = (*f.first()?, *f.get(1)?, *f.get(2)?);
            let id = u64::from(id);
            (id >= inside && id < inside + count)
                .then(|| u32::try_from(outside + id - inside).ok())
                .flatten()
        })
    }
    Some((host(uid_map, uid)?, host(gid_map, gid)?))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateConfig {
    pub rootfs: RootfsPlan,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: HashMap<String, String>,
    pub exec_fifo: PathBuf,
    pub hooks: Option<Hooks>,
}

/// Messages on the init channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// runtime → intermediate: the whole job.
    Config(Box<InitConfig>),
    /// intermediate → runtime: a user namespace exists, map its ids.
    UserNamespaceCreated,
    /// runtime → intermediate: the maps are written.
    UserNamespaceMapped,
    /// intermediate → runtime: the host pid of the container init.
    InitPid { pid: i32 },
    /// runtime → init: the intermediate is gone, the channel is the init's alone.
    Proceed,
    /// init → runtime: the rootfs is mounted, run createRuntime hooks.
    RunCreateRuntimeHooks,
    /// runtime → init: hooks done; the OCI state for the init's own hooks.
    CreateRuntimeHooksDone { state: String },
    /// init → runtime, carrying the pty master.
    ConsoleMaster,
    /// init → runtime: about to wait for start (or exec, for exec).
    Ready,
    /// intermediate or init → runtime.
    Failed { message: String },
}

/// Entry point of the sealed binary run with `__husk_init`. Never returns.
pub fn main() -> ! {
    let fd = std::env::var(INIT_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let Some(fd) = fd else {
        eprintln!(
            "husk-runtime: {} is internal and only run by husk-runtime itself",
            crate::sealed_exe::INIT_ARG
        );
        std::process::exit(2);
    };
    std::env::remove_var(INIT_FD_ENV);
    // SAFETY: the runtime passed us this descriptor and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    std::process::exit(run(owned, &|| Ok(())))
}

/// The intermediate as a fork of a runtime that runs sealed (see
/// `sealed_exe`), with the channel's end `fd`: what `main` does after an
/// exec, after `join_cgroup` (the fork joins the container's cgroup v1
/// hierarchies itself, see `launch`). Returns the exit code.
pub fn run_forked(fd: RawFd, join_cgroup: &dyn Fn() -> Result<()>) -> i32 {
    // The runtime's log sink is its own: the exec'd intermediate has none.
    let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    if let Ok(name) = std::ffi::CString::new(INIT_PROCESS_NAME) {
        let _ = sys::set_process_name(&name);
    }
    // SAFETY: launch kept this descriptor for us; nothing else here owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    run(owned, join_cgroup)
}

fn run(fd: OwnedFd, before: &dyn Fn() -> Result<()>) -> i32 {
    let _ = sys::set_cloexec(fd.as_raw_fd(), true);
    let mut channel = Channel::from_fd(fd);
    match before().and_then(|()| intermediate(&mut channel)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = channel.send(&Message::Failed {
                message: failure_message(&e),
            });
            1
        }
    }
}

/// The runtime wraps the message as an init failure; don't say it twice.
fn failure_message(e: &Error) -> String {
    match e {
        Error::Init(m) => m.clone(),
        other => other.to_string(),
    }
}

fn expect(channel: &mut Channel, what: &str) -> Result<Message> {
    match channel.recv::<Message>()? {
        Some((msg, _)) => Ok(msg),
        None => Err(Error::Init(format!(
            "the runtime went away while the init waited for {what}"
        ))),
    }
}

fn intermediate(channel: &mut Channel) -> Result<()> {
    sys::unblock_all_signals().context(|| "reset signal mask".into())?;
    let Message::Config(config) = expect(channel, "its configuration")? else {
        return Err(Error::Init("expected the init configuration first".into()));
    };
    // Opened read-write before any namespace or id change: afterwards the
    // init may be an unprivileged host uid that cannot reach the state dir.
    // Read-write never blocks; the init's blocking read waits for `start`.
    let exec_fifo = match &config.create {
        Some(create) => Some(
            sys::open(&create.exec_fifo, libc::O_RDWR)
                .context(|| format!("open exec fifo {}", create.exec_fifo.display()))?,
        ),
        None => None,
    };
    if let Some((uid, gid)) = config.stdio_owner {
        // Still host root here: afterwards the process cannot chown them.
        for fd in 0..3 {
            let _ = sys::fchown_stream(fd, uid, gid);
        }
    }
    let plan = &config.namespaces;
    // Still host root in the host's mount namespace: see open_bind_sources.
    let bind_sources = match &config.create {
        Some(create) if plan.in_user_namespace() => rootfs::open_bind_sources(&create.rootfs)?,
        _ => Vec::new(),
    };
    namespaces::join(&plan.join)?;
    if let Some((uids, gids)) = &config.joined_user_maps {
        namespaces::check_own_id_maps(uids, gids)?;
    }
    if plan.creates(LinuxNamespaceType::User) {
        sys::unshare(libc::CLONE_NEWUSER).context(|| "create user namespace".into())?;
        channel.send(&Message::UserNamespaceCreated)?;
        match expect(channel, "id maps")? {
            Message::UserNamespaceMapped => {}
            other => return Err(Error::Init(format!("expected id maps, got {other:?}"))),
        }
    }
    if plan.in_user_namespace() {
        // Become root of the namespace when the maps include it, so the
        // init has full capabilities there. Unmapped root is not an error.
        let _ = sys::setresgid(0);
        let _ = sys::setresuid(0);
    }
    sys::unshare(plan.unshare_flags())
        .context(|| format!("unshare namespaces {:?}", plan.create))?;
    if let Some(offsets) = &config.time_offsets {
        namespaces::write_time_offsets(offsets)?;
    }
    // A new pid namespace applies to children only: fork its PID 1.
    match sys::fork().context(|| "fork the container init".into())? {
        sys::Fork::Parent(pid) => channel.send(&Message::InitPid { pid }),
        sys::Fork::Child => {
            let err = match container_init(channel, &config, exec_fifo, bind_sources) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = channel.send(&Message::Failed {
                message: failure_message(&err),
            });
            // After Ready the runtime is gone; the container's stderr is all we have.
            eprintln!("husk-runtime init: {err}");
            std::process::exit(127)
        }
    }
}

/// Whether `hooks` has any that the round trip before pivot_root is for:
/// prestart and createRuntime (run by the runtime), createContainer and
/// startContainer (run here with the state it answers).
fn needs_create_round_trip(hooks: Option<&oci_spec::runtime::Hooks>) -> bool {
    hooks.is_some_and(|h| {
        [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
        ]
        .into_iter()
        .any(|list| list.as_ref().is_some_and(|l| !l.is_empty()))
    })
}

fn container_init(
    channel: &mut Channel,
    config: &InitConfig,
    fifo: Option<OwnedFd>,
    bind_sources: Vec<Option<OwnedFd>>,
) -> Result<std::convert::Infallible> {
    // The mounts write nothing to the channel: they go on while the
    // runtime reads the intermediate's last message and answers, rather
    // than after that round trip.
    let prepared = (|| -> Result<()> {
        sys::setsid().context(|| "setsid".into())?;
        if let Some(create) = &config.create {
            rootfs::prepare(&create.rootfs, &bind_sources)?;
        }
        Ok(())
    })();
    drop(bind_sources);
    // Until the runtime has read the intermediate's last message, writing
    // here (a failure included) could interleave with it.
    match expect(channel, "the go-ahead")? {
        Message::Proceed => {}
        other => return Err(Error::Init(format!("expected the go-ahead, got {other:?}"))),
    }
    prepared?;
    let process = &config.process;
    let mut state_json = String::new();
    if let Some(create) = &config.create {
        // Without hooks to run there and here, no state is needed: no
        // round trip.
        if needs_create_round_trip(create.hooks.as_ref()) {
            channel.send(&Message::RunCreateRuntimeHooks)?;
            match expect(channel, "createRuntime hooks")? {
                Message::CreateRuntimeHooksDone { state } => state_json = state,
                other => return Err(Error::Init(format!("expected hooks done, got {other:?}"))),
            }
            hooks::run(
                HookKind::CreateContainer,
                create.hooks.as_ref(),
                &state_json,
            )?;
        }
        rootfs::pivot(&create.rootfs)?;
        // Before finish: /proc/sys is usually among the read-only paths.
        for (key, value) in &create.sysctl {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value).context(|| format!("set sysctl {key}={value}"))?;
        }
        rootfs::finish(&create.rootfs)?;
        if let Some(h) = create.hostname.as_deref().filter(|h| !h.is_empty()) {
            sys::sethostname(h).context(|| format!("set hostname {h:?}"))?;
        }
        if let Some(d) = create.domainname.as_deref().filter(|d| !d.is_empty()) {
            sys::setdomainname(d).context(|| format!("set domainname {d:?}"))?;
        }
    }
    let cwd = process.cwd();
    sys::chdir(cwd).context(|| format!("chdir to process.cwd {}", cwd.display()))?;
    if config.console {
        let (master, slave) = console::open_pty()?;
        if let Some(size) = process.console_size() {
            console::set_size(
                master.as_raw_fd(),
                size.height() as u16,
                size.width() as u16,
            )?;
        }
        if config.create.is_some() {
            rootfs::mount_console(&console::slave_path(&slave)?)?;
        }
        console::attach_stdio(&slave)?;
        channel.send_with_fd(&Message::ConsoleMaster, Some(master.as_raw_fd()))?;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let env = process::environment(process, || process::home_of(&passwd, process.user().uid()));
    let args = process.args().clone().unwrap_or_default();
    let program = process::find_executable(&args[0], &env, cwd)?;
    // The program starts with every signal at its default action, as on
    // runc (before a seccomp filter could refuse sigaction).
    sys::default_ignored_signals();
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the
    // credentials may drop: load it first, as runc does (the profile must
    // then allow what follows: setgroups, setresuid, capset, prctl, execve).
    let no_new_privs = process.no_new_privileges() == Some(true);
    if let Some(filter) = config.seccomp.as_ref().filter(|_| !no_new_privs) {
        filter.load()?;
    }
    process::apply_credentials(process)?;
    channel.send(&Message::Ready)?;

    if let Some(fifo) = fifo {
        let mut byte = [0u8; 1];
        let mut f = std::fs::File::from(fifo);
        match f.read(&mut byte) {
            Ok(1) => {}
            other => {
                return Err(Error::Init(format!(
                    "waiting for start on the exec fifo: {other:?}"
                )))
            }
        }
        let hooks = config.create.as_ref().and_then(|c| c.hooks.as_ref());
        hooks::run(HookKind::StartContainer, hooks, &state_json)?;
    }
    sys::cloexec_from(3 + config.preserve_fds)
        .context(|| "mark runtime descriptors close-on-exec".into())?;
    let exec = process::Exec::prepare(&program, &args, &env)?;
    if config.landlock {
        landlock::confine_to_root(3 + config.preserve_fds)?;
    }
    // With no_new_privs, as late as possible: only execve follows, so the
    // profile need not allow the runtime's own syscalls.
    if let Some(filter) = config.seccomp.as_ref().filter(|_| no_new_privs) {
        filter.load()?;
    }
    Err(exec.run())
}

#[cfg(test)]
mod tests {
    #[test]
    fn stdio_owner_maps_through_the_ranges() {
        let map = "0 1048576 65536\n";
        assert_eq!(super::stdio_owner(map, map, 0, 0), Some((1048576, 1048576)));
        assert_eq!(
            super::stdio_owner(map, map, 1000, 5),
            Some((1049576, 1048581))
        );
        assert_eq!(super::stdio_owner(map, map, 70000, 0), None);
        assert_eq!(super::stdio_owner("", map, 0, 0), None);
    }
}
