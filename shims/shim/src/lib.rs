//! husk's containerd shim v2: `containerd-shim-husk-v2` and
//! `containerd-shim-husk-hardened-v2`.
//!
//! containerd starts a shim binary with `start`, talks to the daemon it
//! leaves behind over ttrpc (the Task service), and runs `delete` when the
//! daemon died. The shim drives the husk runtime library in process.
//!
//! | module | protocol concept |
//! | --- | --- |
//! | [`args`] | containerd's shim flags |
//! | [`start`] | `start`: socket naming, grouping, daemonizing |
//! | [`delete`] | `delete`: cleanup after a dead shim |
//! | [`server`] | the daemon: startup (fresh or inherited), SIGCHLD, SIGUSR2, idle exit, shutdown |
//! | [`ttrpc_server`] | the ttrpc server: framing, dispatch, quiesce, adopting connections |
//! | [`swap`] | live shim swap: probe, quiesce, exec, take over, roll back; `husk.shim.v1.Shim` |
//! | [`handover`] | the state and descriptors passed across `execve` |
//! | [`upgrade`] | `upgrade`: asking a running shim to swap |
//! | [`worker`] | short-lived forked workers for the runtime library's calls |
//! | [`service`] | the Task service |
//! | [`state`] | all state, in one serializable struct |
//! | [`reaper`] | subreaper, reaping by pid, orphan sweep |
//! | [`io`] | stdio FIFOs and terminals |
//! | [`events`] | task events to containerd |
//! | [`rootfs`] | mounting `CreateTaskRequest.rootfs` |
//! | [`metrics`] | cgroup stats as containerd metrics |
//! | [`plugins`] | policy and lifecycle plugins at create, start and exit |

pub mod args;
pub mod delete;
pub mod error;
pub mod events;
pub mod handover;
pub mod hardening;
pub mod io;
pub mod metrics;
pub mod plugins;
pub mod reaper;
pub mod rootfs;
pub mod server;
pub mod service;
pub mod start;
pub mod state;
pub mod swap;
pub mod ttrpc_server;
pub mod upgrade;
pub mod worker;

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::args::{Action, Args};

/// Which binary is running. The hardened profile is recorded and reported
/// (Connect's version, logs, state); what it hardens comes later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    #[default]
    Native,
    Hardened,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Native => "native",
            Profile::Hardened => "hardened",
        }
    }
}

/// Where the runtime library keeps container state, per namespace.
pub fn runtime_root(namespace: &str) -> PathBuf {
    PathBuf::from("/run/containerd/husk").join(namespace)
}

/// The entry point of both binaries.
pub fn main(profile: Profile) -> ! {
    // The runtime library re-executes this binary as the container init.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == husk_runtime::sealed_exe::INIT_ARG)
    {
        husk_runtime::init::main();
    }
    // The probe a live swap runs before executing this binary.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == handover::CHECK_FLAG)
    {
        swap::answer_probe(profile, std::env::args().nth(2).as_deref());
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => fail(&e.to_string()),
    };
    if args.version {
        println!(
            "containerd-shim-husk{}-v2 {} (profile {})",
            if profile == Profile::Hardened {
                "-hardened"
            } else {
                ""
            },
            env!("CARGO_PKG_VERSION"),
            profile.name()
        );
        std::process::exit(0);
    }
    match args.action {
        Action::Start => {
            // containerd 1.6 reads `start`'s stdout and stderr together as
            // the address: log to the bundle's log FIFO, never to stderr.
            let sink = open_log_fifo().or_else(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/null")
                    .ok()
            });
            if sink.is_some() {
                init_logging(&args, sink);
            }
            run_sealed();
            match start::run(&args) {
                Ok(start::Outcome::Address(a)) => match start::print_address(&a) {
                    Ok(()) => std::process::exit(0),
                    Err(e) => fail(&format!("start: {e}")),
                },
                // The child `start` forked: the daemon.
                Ok(start::Outcome::Daemon(daemon, listener)) => {
                    serve(&daemon, profile, server::Origin::Forked(listener))
                }
                Err(e) => fail(&format!("start: {e}")),
            }
        }
        Action::Delete => {
            init_logging(&args, None);
            match delete::run(&args, profile) {
                Ok(bytes) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes).and_then(|_| out.flush());
                    std::process::exit(0)
                }
                Err(e) => fail(&format!("delete: {e}")),
            }
        }
        Action::Upgrade => {
            init_logging(&args, None);
            match upgrade::run(&args) {
                Ok(report) => {
                    println!("{report}");
                    std::process::exit(0)
                }
                Err(e) => fail(&format!("upgrade: {e}")),
            }
        }
        Action::Serve => {
            // A successor of a live swap inherits everything, its log FIFO
            // included.
            let origin = match handover::inherited() {
                Some(Ok(fd)) => server::Origin::Successor(fd),
                Some(Err(e)) => fail(&e),
                None => server::Origin::Executed,
            };
            serve(&args, profile, origin)
        }
    }
}

/// The daemon: a fresh one or the successor of a live swap. Logs go to
/// the `log` FIFO containerd reads in the bundle (our working directory),
/// or to the one the previous binary handed over.
fn serve(args: &Args, profile: Profile, origin: server::Origin) -> ! {
    let log = match &origin {
        server::Origin::Successor(memfd) => handover::Handover::read(memfd)
            .ok()
            .and_then(|h| h.log)
            .and_then(inherited_log),
        _ => open_log_fifo(),
    };
    if let Some(f) = &log {
        handover::set_log_fd(std::os::fd::AsRawFd::as_raw_fd(f));
    }
    init_logging(args, log);
    DAEMON_ARGV.get_or_init(|| args.daemon_argv());
    // Read once here, inherited by every worker that retitles itself.
    start::arg_area();
    match server::serve(args, profile, origin) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(1)
        }
    }
}

/// The daemon's arguments (without the program name), as a live swap
/// passes them to the next binary.
static DAEMON_ARGV: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// The arguments the daemon serves with (without the program name): not
/// the command line when `start` forked it, which ends in `start`.
pub fn daemon_argv() -> Vec<std::ffi::OsString> {
    DAEMON_ARGV
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().skip(1).collect())
}

fn fail(msg: &str) -> ! {
    eprintln!("containerd-shim-husk: {msg}");
    std::process::exit(1)
}

fn open_log_fifo() -> Option<std::fs::File> {
    let fd = husk_runtime::sys::open(
        std::path::Path::new("log"),
        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )
    .ok()?;
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    Some(std::fs::File::from(fd))
}

/// The log FIFO a previous binary handed over (left open by the takeover).
fn inherited_log(fd: std::os::fd::RawFd) -> Option<std::fs::File> {
    // SAFETY: checked open; the handover lists it once and the takeover
    // (`swap::take_over`) leaves it to this File.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: as above.
    Some(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Where log lines go: a file (the log FIFO, /dev/null), else stderr. A
/// forked daemon replaces `start`'s file with its own (the subscriber is
/// global and set once). A descriptor, not a locked `File`: a worker
/// (`worker.rs`) forked while another thread was writing a line must not
/// find a lock held forever.
static LOG_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let fd = LOG_FD.load(std::sync::atomic::Ordering::Acquire);
        if fd < 0 {
            return std::io::stderr().write(buf);
        }
        // SAFETY: LOG_FD holds a descriptor this process opened and never
        // closes while it is set (init_logging swaps it only before any
        // other thread exists).
        let f = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        Ok(nix::unistd::write(f, buf)?)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log's descriptor, if logging goes to a file.
pub(crate) fn log_fd() -> Option<std::os::fd::RawFd> {
    Some(LOG_FD.load(std::sync::atomic::Ordering::Acquire)).filter(|fd| *fd >= 0)
}

/// Makes `start`, and so the daemon it forks, run from an unwritable
/// handle on this binary (see husk_runtime::sealed_exe): the daemon's
/// workers then start each container's intermediate as a fork, with no
/// exec of this binary per container. Costs one exec per shim, before the
/// shim serves anything (huskd starts its spare shims ahead).
fn run_sealed() {
    husk_runtime::sealed_exe::reexec_sealed();
    // /proc/self/exe names the handle now ("/"): the plugin service, found
    // beside the binary by default, is beside the path on disk.
    let binary = husk_runtime::sealed_exe::binary_path();
    if std::env::var_os(husk_plugin_client::client::BINARY_ENV).is_none() {
        if let Some(dir) = binary.parent() {
            std::env::set_var(
                husk_plugin_client::client::BINARY_ENV,
                dir.join(husk_plugin_client::client::BINARY_NAME),
            );
        }
    }
}

fn init_logging(args: &Args, file: Option<std::fs::File>) {
    use std::os::fd::IntoRawFd;
    let fd = file.map(IntoRawFd::into_raw_fd).unwrap_or(-1);
    let old = LOG_FD.swap(fd, std::sync::atomic::Ordering::AcqRel);
    if old >= 0 {
        // SAFETY: the previous sink's descriptor, owned by LOG_FD until now.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(old) });
    }
    static SUBSCRIBER: std::sync::Once = std::sync::Once::new();
    SUBSCRIBER.call_once(|| set_subscriber(args));
}

fn set_subscriber(args: &Args) {
    let level = if args.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .try_init();
}
