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
            match start::run(&args).and_then(|a| start::print_address(&a)) {
                Ok(()) => std::process::exit(0),
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
            // included; a fresh daemon opens the `log` FIFO containerd reads
            // in the bundle (our working directory).
            let inherited = match handover::inherited() {
                Some(Ok(fd)) => Some(fd),
                Some(Err(e)) => fail(&e),
                None => None,
            };
            let log = match &inherited {
                Some(memfd) => handover::Handover::read(memfd)
                    .ok()
                    .and_then(|h| h.log)
                    .and_then(inherited_log),
                None => open_log_fifo(),
            };
            if let Some(f) = &log {
                handover::set_log_fd(std::os::fd::AsRawFd::as_raw_fd(f));
            }
            init_logging(&args, log);
            match server::serve(&args, profile, inherited) {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    tracing::error!("{e}");
                    std::process::exit(1)
                }
            }
        }
    }
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

fn init_logging(args: &Args, file: Option<std::fs::File>) {
    let level = if args.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match file {
        Some(f) => {
            let f = std::sync::Mutex::new(f);
            let _ = builder.with_writer(f).try_init();
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
