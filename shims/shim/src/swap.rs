//! Live shim swap: the shim execs a new binary in place (docs/live-swap.md).
//!
//! The PID stays, so containers stay the shim's children; the listening
//! socket, every accepted connection (containerd's included: containerd
//! 1.6 treats a closed connection as a dead shim), every stdio descriptor
//! and the state go to the successor through the handover
//! (`handover.rs`).
//!
//! A swap, in order:
//! 1. the new binary is opened (that descriptor is what gets executed) and
//!    probed: `NEW --check-handover VERSION` must print its identity and
//!    exit 0. Any failure: refused, nothing changed.
//! 2. quiesce: the ttrpc server stops at a frame boundary with every
//!    request answered (Wait parked), the reaper pauses (exits wait as
//!    zombies), the event sender stops between two events, the stdio pumps
//!    park.
//! 3. the handover is written to a memfd, descriptors are prepared
//!    (`prepare_fds`), and `execveat` runs the new binary. If the exec
//!    fails, everything resumes as it was and the error is returned.
//! 4. the successor ([`take_over`]) adopts everything, reaps what exited
//!    meanwhile, publishes it once, serves, answers the parked Waits and
//!    the `Upgrade` request. If it cannot take over, it executes the
//!    previous binary again with the same handover (rollback), which
//!    answers `Upgrade` with the reason.
//!
//! Triggers: the `Upgrade` call of `husk.shim.v1.Shim` (huskd, the
//! `upgrade` command), and SIGUSR2 (the binary now at the shim's path).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use husk_shim_api as api;
use protobuf::Message;
use ttrpc::r#async::TtrpcContext;

use crate::error::{Result, ShimError};
use crate::events::{Event, EventRecord};
use crate::handover::{
    self, ConnRecord, Handover, PendingUpgrade, ProbeReport, ProcIoRecord, HANDOVER_ENV,
    HANDOVER_VERSION, MIN_HANDOVER_VERSION, ROLLBACK_ENV,
};
use crate::io::IoHandover;
use crate::service::Shim;
use crate::state::{ProcIo, ShimState};
use crate::ttrpc_server::{self, Adopted, Server, CONN_ID_KEY};
use crate::Profile;

/// How long requests in flight may take to finish before a swap gives up.
pub const QUIESCE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the probe of a new binary may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// This binary's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What started a swap.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// An `Upgrade` call: the successor answers it on this connection.
    Call { conn: u64, stream_id: u32 },
    /// SIGUSR2: the result is logged.
    Signal,
}

/// Drives swaps; one at a time.
pub struct Swapper {
    pub shim: Arc<Shim>,
    pub profile: Profile,
    server: OnceLock<Arc<Server>>,
    reaper_paused: AtomicBool,
    lock: tokio::sync::Mutex<()>,
}

impl Swapper {
    pub fn new(shim: Arc<Shim>, profile: Profile) -> Arc<Swapper> {
        Arc::new(Swapper {
            shim,
            profile,
            server: OnceLock::new(),
            reaper_paused: AtomicBool::new(false),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn set_server(&self, server: Arc<Server>) {
        let _ = self.server.set(server);
    }

    /// Whether SIGCHLD must be left alone (a swap is handing over).
    pub fn reaper_paused(&self) -> bool {
        self.reaper_paused.load(Ordering::Acquire)
    }

    /// Swaps to `binary` (empty: the file now at the shim's own path).
    /// Returns only if the swap did not happen; the shim then serves on
    /// unchanged.
    pub async fn swap(&self, binary: &str, trigger: Trigger) -> ShimError {
        let Ok(_one) = self.lock.try_lock() else {
            return ShimError::FailedPrecondition(
                "a swap of this shim is already under way; try again when it is done".into(),
            );
        };
        match self.try_swap(binary, trigger).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn try_swap(&self, binary: &str, trigger: Trigger) -> Result<std::convert::Infallible> {
        let started = handover::monotonic_us();
        let (current, namespace) = {
            let st = self.shim.lock();
            (st.binary.clone(), st.namespace.clone())
        };
        let target = if binary.is_empty() {
            current.clone()
        } else {
            PathBuf::from(binary)
        };
        let target = std::fs::canonicalize(&target).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "the new shim binary {} cannot be used: {e}",
                target.display()
            ))
        })?;
        let exe = open_binary(&target)?;
        let report = probe(&exe, &target).await?;
        tracing::info!(
            new = %target.display(),
            version = report.version,
            profile = report.profile,
            namespace,
            "probe passed; swapping"
        );
        let server = self
            .server
            .get()
            .cloned()
            .ok_or_else(|| ShimError::Internal("the shim is not serving yet".into()))?;
        let quiet = server
            .quiesce(QUIESCE_DEADLINE)
            .await
            .map_err(ShimError::FailedPrecondition)?;
        self.reaper_paused.store(true, Ordering::Release);
        self.shim.events.pause().await;
        let ios = self.take_io();
        let mut parked = Vec::with_capacity(ios.len());
        for (c, e, io) in ios {
            parked.push((c, e, io.park().await));
        }
        // Everything is still: write the handover.
        let previous_exe = std::fs::File::open("/proc/self/exe")
            .map(OwnedFd::from)
            .map_err(ShimError::io("open the running binary (for a rollback)"))?;
        let mut h = Handover {
            version: HANDOVER_VERSION,
            listener: quiet.listener.as_raw_fd(),
            connections: quiet
                .conns
                .iter()
                .map(|(c, parked)| ConnRecord {
                    fd: c.raw_fd(),
                    parked: parked.clone(),
                })
                .collect(),
            log: handover::log_fd(),
            exe: Some(exe.as_raw_fd()),
            previous_exe: Some(previous_exe.as_raw_fd()),
            target: target.to_string_lossy().into_owned(),
            started_monotonic_us: started,
            ..Default::default()
        };
        let mut io_fds = Vec::new();
        for (container, exec_id, io) in &parked {
            h.io.push(ProcIoRecord {
                container: container.clone(),
                exec_id: exec_id.clone(),
                fds: io.fds(&mut io_fds),
            });
        }
        if let Trigger::Call { conn, stream_id } = trigger {
            if let Some(connection) = quiet.index_of(conn) {
                h.upgrade = Some(PendingUpgrade {
                    connection,
                    stream_id,
                    old_binary: current.to_string_lossy().into_owned(),
                    old_version: VERSION.into(),
                    old_profile: self.profile.name().into(),
                });
            }
        }
        let (state, queued) = {
            let st = self.shim.lock();
            let state = serde_json::to_value(&*st);
            // Taken under the state lock: nothing can queue an event now.
            (state, self.shim.events.take_queued())
        };
        h.events = queued.iter().map(EventRecord::from).collect();
        let prepared = state
            .map_err(|e| ShimError::Internal(format!("serializing the shim state: {e}")))
            .and_then(|v| {
                h.state = v;
                h.to_memfd()
            });
        let failure = match prepared {
            Err(e) => e,
            Ok(memfd) => {
                let mut keep = h.fds();
                keep.push(memfd.as_raw_fd());
                match handover::prepare_fds(&keep) {
                    Err(e) => e,
                    Ok(cleared) => {
                        let mut argv: Vec<OsString> = vec![target.clone().into_os_string()];
                        argv.extend(crate::daemon_argv());
                        tracing::info!(new = %target.display(), "executing the new binary");
                        let e = handover::exec(
                            &exe,
                            &argv,
                            &[(HANDOVER_ENV, memfd.as_raw_fd().to_string())],
                        );
                        handover::restore_cloexec(&cleared);
                        e
                    }
                }
            }
        };
        // The exec did not happen: serve on as before.
        tracing::error!("the swap failed, serving on unchanged: {failure}");
        self.resume(quiet, parked, queued);
        Err(failure)
    }

    /// Takes every process's stdio out of the state, to park it.
    fn take_io(&self) -> Vec<(String, String, ProcIo)> {
        let mut st = self.shim.lock();
        let mut out = Vec::new();
        for c in st.containers.values_mut() {
            out.push((c.id.clone(), String::new(), std::mem::take(&mut c.init.io)));
            for (e, p) in c.execs.iter_mut() {
                out.push((c.id.clone(), e.clone(), std::mem::take(&mut p.io)));
            }
        }
        out
    }

    /// Undoes a quiesce after a swap that did not happen.
    fn resume(
        &self,
        quiet: ttrpc_server::Quiesced,
        parked: Vec<(String, String, IoHandover)>,
        queued: Vec<Event>,
    ) {
        restore_io(&self.shim, parked);
        self.shim.events.resume(queued);
        self.reaper_paused.store(false, Ordering::Release);
        self.shim.on_sigchld();
        if let Some(server) = self.server.get() {
            if let Err(e) = server.resume(quiet) {
                tracing::error!("serving again after a failed swap: {e}");
            }
        }
    }
}

/// Restores each process's stdio (after a failed swap, or in the
/// successor).
pub fn restore_io(shim: &Shim, ios: Vec<(String, String, IoHandover)>) {
    let mut st = shim.lock();
    for (container, exec_id, io) in ios {
        let restored = match io.restore() {
            Ok(io) => io,
            Err(e) => {
                tracing::error!(container, exec = exec_id, "restoring stdio: {e}");
                continue;
            }
        };
        match st.process_mut(&container, &exec_id) {
            Ok(p) => p.io = restored,
            Err(e) => tracing::warn!(container, exec = exec_id, "stdio of a process gone: {e}"),
        }
    }
}

/// Opens the new binary: a regular, executable file.
fn open_binary(path: &Path) -> Result<OwnedFd> {
    let f = std::fs::File::open(path).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "the new shim binary {} cannot be opened: {e}",
            path.display()
        ))
    })?;
    let meta = f
        .metadata()
        .map_err(ShimError::io(format!("stat {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ShimError::InvalidArgument(format!(
            "the new shim binary {} is not an executable file",
            path.display()
        )));
    }
    Ok(OwnedFd::from(f))
}

/// Runs `NEW --check-handover VERSION` (from the open descriptor, so the
/// file probed is the file executed) and reads its report.
async fn probe(exe: &OwnedFd, path: &Path) -> Result<ProbeReport> {
    let fd = exe.as_raw_fd();
    let shown = path.display().to_string();
    let argv0 = path.as_os_str().to_owned();
    // A child process: spawned and waited on a blocking thread, never on
    // the main thread (see reaper.rs).
    let out = tokio::task::spawn_blocking(move || -> std::io::Result<std::process::Output> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(format!("/proc/self/fd/{fd}"));
        cmd.arg0(argv0)
            .args([handover::CHECK_FLAG, &HANDOVER_VERSION.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: only fcntl (async-signal-safe) between fork and exec: a
        // script needs its descriptor open after the exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return child.wait_with_output();
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {PROBE_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await
    .map_err(|e| ShimError::Internal(format!("the probe task failed: {e}")))?
    .map_err(|e| {
        ShimError::FailedPrecondition(format!(
            "the new shim binary {shown} failed its handover probe ({} {HANDOVER_VERSION}): {e}; \
             the shim serves on unchanged",
            handover::CHECK_FLAG
        ))
    })?;
    let refuse = |why: String| {
        ShimError::FailedPrecondition(format!(
            "the new shim binary {shown} failed its handover probe ({} {HANDOVER_VERSION}): {why}; \
             the shim serves on unchanged",
            handover::CHECK_FLAG
        ))
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(refuse(format!(
            "it exited with {} ({})",
            out.status,
            stderr.trim().lines().last().unwrap_or("no message")
        )));
    }
    let report: ProbeReport = serde_json::from_slice(&out.stdout).map_err(|_| {
        refuse(format!(
            "it did not answer as a husk shim does (printed {:?}); is it a husk shim binary?",
            String::from_utf8_lossy(&out.stdout)
                .chars()
                .take(120)
                .collect::<String>()
        ))
    })?;
    if !(report.handover_min..=report.handover_max).contains(&HANDOVER_VERSION) {
        return Err(refuse(format!(
            "it reads handover versions {} to {}, this shim writes {HANDOVER_VERSION}",
            report.handover_min, report.handover_max
        )));
    }
    Ok(report)
}

/// `--check-handover VERSION`: the probe, answered by the binary being
/// probed. Prints a [`ProbeReport`] and exits 0 if this binary reads that
/// handover version; exits 3 otherwise.
pub fn answer_probe(profile: Profile, version: Option<&str>) -> ! {
    let Some(v) = version.and_then(|v| v.parse::<u32>().ok()) else {
        eprintln!("{}: needs a version number", handover::CHECK_FLAG);
        std::process::exit(2)
    };
    if let Err(e) = Handover::check_version(v) {
        eprintln!("{e}");
        std::process::exit(3)
    }
    let report = ProbeReport {
        shim: "husk".into(),
        version: VERSION.into(),
        profile: profile.name().into(),
        handover_min: MIN_HANDOVER_VERSION,
        handover_max: HANDOVER_VERSION,
    };
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    std::process::exit(0)
}

/// What the successor starts from.
pub struct Inheritance {
    pub state: ShimState,
    pub listener: OwnedFd,
    pub conns: Vec<Adopted>,
    pub io: Vec<(String, String, IoHandover)>,
    pub events: Vec<Event>,
    /// The `Upgrade` call to answer once serving.
    pub upgrade: Option<(usize, u32, api::UpgradeResponse)>,
    /// Set when this binary took a failed swap back: the reason.
    pub rolled_back: Option<String>,
    pub previous_exe: Option<OwnedFd>,
}

/// In the successor, before anything else: reads the handover and owns
/// every descriptor it lists (and closes any other). On error the caller
/// rolls back with [`roll_back`].
pub fn take_over(
    memfd: &OwnedFd,
    profile: Profile,
) -> std::result::Result<Inheritance, (String, Option<Box<Handover>>)> {
    let h = Handover::read(memfd).map_err(|e| (e.to_string(), None))?;
    let rolled_back = handover::rollback_reason();
    let mut listed = h.fds();
    listed.push(memfd.as_raw_fd());
    let closed = handover::close_unlisted(&listed);
    if closed > 0 {
        tracing::warn!(closed, "closed descriptors the handover did not list");
    }
    // The binary's own descriptor may be gone: an interpreter (a script
    // executed from a descriptor) reads the script through it and may
    // close it. Everything else must be there.
    let exe = h.exe.filter(|&fd| handover::is_open(fd));
    let optional = [h.exe, h.previous_exe];
    if let Some(fd) = listed
        .iter()
        .find(|&&fd| !optional.contains(&Some(fd)) && !handover::is_open(fd))
    {
        let why = format!("descriptor {fd} of the handover was not inherited");
        return Err((why, Some(Box::new(h))));
    }
    listed.retain(|&fd| handover::is_open(fd));
    let mut state = match h.shim_state() {
        Ok(s) => s,
        Err(e) => return Err((e.to_string(), Some(Box::new(h)))),
    };
    // From here on container processes started by this binary must not
    // inherit anything.
    handover::restore_cloexec(&listed);
    let now = crate::state::ExitRecord::now(0).at_secs;
    let old_profile = state.profile;
    if rolled_back.is_none() {
        state.profile = profile;
        state.binary = PathBuf::from(&h.target);
        state.swaps += 1;
        state.serving_since = now;
    }
    // SAFETY (every from_raw_fd below): the handover lists each descriptor
    // once, they were inherited open across the exec, and nothing else in
    // this process owns them (unlisted ones were closed above).
    let listener = unsafe { OwnedFd::from_raw_fd(h.listener) };
    let conns = h
        .connections
        .iter()
        .map(|c| Adopted {
            fd: unsafe { OwnedFd::from_raw_fd(c.fd) },
            parked: c.parked.clone(),
        })
        .collect();
    let io =
        h.io.iter()
            .map(|p| {
                (p.container.clone(), p.exec_id.clone(), unsafe {
                    IoHandover::from_fds(p.fds.clone())
                })
            })
            .collect();
    if let Some(log) = h.log {
        handover::set_log_fd(log);
    }
    drop(exe.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
    let previous_exe = h
        .previous_exe
        .filter(|&fd| handover::is_open(fd))
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let upgrade = h.upgrade.as_ref().map(|u| {
        let pause = handover::monotonic_us().saturating_sub(h.started_monotonic_us);
        let note = if rolled_back.is_none() && old_profile != profile {
            format!(
                "the {} profile applies to processes started from now on (new containers and \
                 execs); running processes keep the restrictions they started with",
                profile.name()
            )
        } else {
            String::new()
        };
        (
            u.connection,
            u.stream_id,
            api::UpgradeResponse {
                pid: std::process::id(),
                old_binary: u.old_binary.clone(),
                old_version: u.old_version.clone(),
                old_profile: u.old_profile.clone(),
                binary: state.binary.to_string_lossy().into_owned(),
                version: VERSION.into(),
                profile: state.profile.name().into(),
                swaps: state.swaps,
                pause_micros: pause,
                note,
                ..Default::default()
            },
        )
    });
    Ok(Inheritance {
        state,
        listener,
        conns,
        io,
        events: h.events.into_iter().map(Event::from).collect(),
        upgrade,
        rolled_back,
        previous_exe,
    })
}

/// The successor cannot take over: execute the previous binary again with
/// the same handover, and tell it why. Exits if that is impossible (the
/// shim is then dead, and containerd or huskd cleans up after it).
pub fn roll_back(memfd: OwnedFd, h: Option<Box<Handover>>, reason: &str) -> ! {
    tracing::error!("cannot take over the shim: {reason}");
    let previous = h.as_ref().and_then(|h| h.previous_exe);
    let (Some(h), Some(prev)) = (h, previous) else {
        tracing::error!("no previous binary to roll back to; exiting");
        std::process::exit(1)
    };
    if std::env::var_os(ROLLBACK_ENV).is_some() {
        tracing::error!("the previous binary cannot take back its own handover either; exiting");
        std::process::exit(1)
    }
    let mut keep = h.fds();
    keep.push(memfd.as_raw_fd());
    if let Err(e) = handover::prepare_fds(&keep) {
        tracing::error!("preparing the rollback: {e}");
        std::process::exit(1)
    }
    // SAFETY: listed in the handover, inherited open, owned by nothing
    // else in this process.
    let prev = unsafe { OwnedFd::from_raw_fd(prev) };
    let argv: Vec<OsString> = std::env::args_os().collect();
    let e = handover::exec(
        &prev,
        &argv,
        &[
            (HANDOVER_ENV, memfd.as_raw_fd().to_string()),
            (ROLLBACK_ENV, reason.to_string()),
        ],
    );
    tracing::error!("rolling back: {e}; exiting");
    std::process::exit(1)
}

/// Answers the `Upgrade` call that started the swap this binary took over
/// (or took back).
pub async fn answer_upgrade(
    conns: &[Arc<ttrpc_server::Conn>],
    upgrade: Option<(usize, u32, api::UpgradeResponse)>,
    rolled_back: Option<&str>,
) {
    let Some((i, stream_id, resp)) = upgrade else {
        return;
    };
    let Some(conn) = conns.get(i) else { return };
    let response = match rolled_back {
        Some(why) => ttrpc_server::error_response(
            ttrpc::Code::FAILED_PRECONDITION,
            format!(
                "the new shim binary could not take over ({why}); the swap was rolled back and \
                 {} serves on",
                resp.old_binary
            ),
        ),
        None => match resp.write_to_bytes() {
            Ok(b) => ttrpc_server::ok_response(b),
            Err(e) => ttrpc_server::error_response(ttrpc::Code::INTERNAL, e),
        },
    };
    ttrpc_server::respond(conn, stream_id, &response).await;
}

/// `husk.shim.v1.Shim`.
pub struct HuskService {
    pub swapper: Arc<Swapper>,
}

#[async_trait]
impl api::Shim for HuskService {
    async fn info(
        &self,
        _ctx: &TtrpcContext,
        _req: api::InfoRequest,
    ) -> ttrpc::Result<api::InfoResponse> {
        let st = self.swapper.shim.lock();
        Ok(api::InfoResponse {
            binary: st.binary.to_string_lossy().into_owned(),
            version: VERSION.into(),
            profile: st.profile.name().into(),
            pid: std::process::id(),
            started_at: st.started_at,
            serving_since: st.serving_since,
            swaps: st.swaps,
            handover_version: HANDOVER_VERSION,
            containers: st.containers.keys().cloned().collect(),
            namespace: st.namespace.clone(),
            ..Default::default()
        })
    }

    async fn upgrade(
        &self,
        ctx: &TtrpcContext,
        req: api::UpgradeRequest,
    ) -> ttrpc::Result<api::UpgradeResponse> {
        let conn = ctx
            .metadata
            .get(CONN_ID_KEY)
            .and_then(|v| v.first())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ShimError::Internal("the request's connection is unknown".into()))?;
        let trigger = Trigger::Call {
            conn,
            stream_id: ctx.mh.stream_id,
        };
        // Its own task: a swap must never be cancelled half-way (the call's
        // deadline drops this handler, not the swap).
        let swapper = Arc::clone(&self.swapper);
        let swap = tokio::spawn(async move { swapper.swap(&req.binary, trigger).await });
        let e = swap
            .await
            .unwrap_or_else(|e| ShimError::Internal(format!("the swap task failed: {e}")));
        Err(e.into())
    }
}
