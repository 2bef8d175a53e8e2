//! The plugin service, `husk-plugind`: one process per node runs every
//! shim's plugin hooks, so that no shim carries wasmtime or pays for
//! starting it (as containerd's NRI runs external plugins).
//!
//! It serves the [`protocol`](crate::protocol) on a root-only unix socket
//! ([`endpoint`](crate::endpoint)) and keeps one warm [`PluginHost`] per
//! config file, reloaded when the config or one of its plugin files
//! changes (checked at every request, as the shim did) or on SIGHUP. A
//! connection gets its own thread; hooks of different containers run in
//! parallel. A bad frame gets an error reply (and, when the stream cannot
//! be resynchronised, the connection is closed); it never stops the daemon.
//!
//! The connection threads wait in `accept` themselves, a spare one or two
//! at all times: the kernel wakes one of them per connection and it serves
//! the request at once. (A thread started per connection was a new task
//! for the scheduler: on a busy machine it waited up to a whole tick, 4 ms
//! at HZ=250, for a CPU, where a woken thread runs at once. That was most
//! of what three plugins added to a create.) The one that takes the last
//! spare's place starts another before it serves, so a connection never
//! waits for another to end.
//!
//! After `idle_timeout` without a request the daemon removes its socket,
//! serves whatever connected before that, and exits; SIGTERM and SIGINT do
//! the same at once. The next shim that needs it starts it again.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bindings::{ExitEvent, ExitStatus, KeyValue, StartEvent, Timestamp};
use crate::config::Hook;
use crate::protocol::{
    self, CreateReply, CreateRequest, ErrorKind, Exited, FileStamp, Note, Op, Reply, Report,
    Request, Started, VersionOnly,
};
use crate::registry::{Decision, HookReport, Outcome};
use crate::wasm::{keeping_stores, SpentStores};
use crate::{bundle, endpoint, mutation, ContainerContext, Error, PluginHost};

/// Exit after this long without a request (`--idle-timeout`,
/// `$HUSK_PLUGIND_IDLE_TIMEOUT`; 0: never).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const IDLE_TIMEOUT_ENV: &str = "HUSK_PLUGIND_IDLE_TIMEOUT";
/// A connection that sends no frame for this long is closed.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection threads waiting in `accept` at start.
const SPARE_ACCEPTORS: usize = 2;
/// A connection thread that finds this many others waiting ends.
const MAX_IDLE_ACCEPTORS: usize = 4;

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// `None`: never exit for idleness.
    pub idle_timeout: Option<Duration>,
}

/// The service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dir(#[from] endpoint::DirError),
    #[error("another husk-plugind already serves {}", .0.display())]
    AlreadyServing(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let context = context.into();
    move |source| StartError::Io { context, source }
}

/// Serves until idle for `idle_timeout`, or until SIGTERM/SIGINT.
pub fn run(options: Options) -> Result<(), StartError> {
    let socket = options.socket.clone();
    let listener = Arc::new(bind(&socket)?);
    let inode = std::fs::metadata(&socket)
        .map_err(io_err(format!("stat {}", socket.display())))?
        .ino();
    let service = Arc::new(Service::default());
    let stop = Arc::new(Stop::default());
    watch_signals(&service, &stop)?;
    for _ in 0..SPARE_ACCEPTORS {
        service
            .spawn_acceptor(&listener)
            .map_err(io_err("starting a connection thread"))?;
    }
    tracing::info!(socket = %socket.display(), pid = std::process::id(),
        idle_timeout = ?options.idle_timeout, "husk-plugind serving");

    loop {
        let wait = options.idle_timeout.map(|idle| {
            idle.saturating_sub(service.idle_for())
                .max(Duration::from_millis(100))
        });
        if stop.wait(wait) {
            tracing::info!("stopping on a signal");
            break;
        }
        if let Some(idle) = options.idle_timeout {
            if service.is_idle() && service.idle_for() >= idle {
                tracing::info!(?idle, "no request for the idle timeout: exiting");
                break;
            }
        }
    }
    shut_down(&service, &listener, &socket, inode);
    Ok(())
}

/// Set by SIGTERM or SIGINT; the main thread waits on it.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cond: Condvar,
}

impl Stop {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until stopped (true) or `timeout` passes (false).
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let stopped = match timeout {
            Some(t) => {
                self.cond
                    .wait_timeout_while(stopped, t, |s| !*s)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .cond
                .wait_while(stopped, |s| !*s)
                .unwrap_or_else(|p| p.into_inner()),
        };
        *stopped
    }
}

/// Binds `socket` (0600, in a private directory), replacing a stale file
/// that no daemon serves.
fn bind(socket: &Path) -> Result<UnixListener, StartError> {
    endpoint::ensure_private_dir(endpoint::dir_of(socket))?;
    if socket.exists() {
        if UnixStream::connect(socket).is_ok() {
            return Err(StartError::AlreadyServing(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(io_err(format!(
            "removing the stale socket {}",
            socket.display()
        )))?;
    }
    // SAFETY: umask only changes this process's file creation mask; no
    // other thread creates files yet. The socket is born 0600.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(socket);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io_err(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod 0600 {}", socket.display())))?;
    Ok(listener)
}

/// SIGHUP reloads every loaded config; SIGTERM and SIGINT stop the daemon.
fn watch_signals(service: &Arc<Service>, stop: &Arc<Stop>) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(io_err("watching signals"))?;
    let (service, stop) = (Arc::clone(service), Arc::clone(stop));
    std::thread::Builder::new()
        .name("husk-plugind-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    service.reload_all();
                    continue;
                }
                stop.set();
                return;
            }
        })
        .map_err(io_err("starting the signal thread"))?;
    Ok(())
}

/// Removes the socket (if it is still ours) and shuts the listener down:
/// the connection threads serve every connection made before that (the
/// kernel refuses later ones), then their `accept` fails and they end.
/// Waits for them.
fn shut_down(service: &Arc<Service>, listener: &UnixListener, socket: &Path, inode: u64) {
    service.closing.store(true, Ordering::SeqCst);
    if std::fs::metadata(socket).is_ok_and(|m| m.ino() == inode) {
        let _ = std::fs::remove_file(socket);
    }
    // SAFETY: shutdown(2) on a descriptor the listener owns for the whole
    // call; it only changes the socket's state (a unix listener then
    // refuses connections, and a blocked accept returns EINVAL once the
    // queue of pending connections is empty).
    if unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "shutting the listener down");
    }
    let deadline = Instant::now() + CONNECTION_TIMEOUT + Duration::from_secs(5);
    while service.acceptors.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!("husk-plugind stopped");
}

/// The daemon's state: the hosts by config file, and what is in flight.
#[derive(Default)]
pub struct Service {
    hosts: Mutex<HashMap<PathBuf, Arc<Mutex<Option<Loaded>>>>>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    /// Connection threads alive, and those waiting in `accept`.
    acceptors: AtomicUsize,
    idle_acceptors: AtomicUsize,
    last_request: Mutex<Option<Instant>>,
    started: OnceInstant,
    closing: AtomicBool,
}

/// When the service started (idle time counts from there before the first
/// request).
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

struct Loaded {
    host: Arc<PluginHost>,
    files: Vec<PathBuf>,
    stamp: crate::reload::Stamp,
    /// `files` with their stamps when no plugin has a start or exit hook
    /// (see [`CreateReply::no_lifecycle_hooks_while`]).
    no_lifecycle_hooks: Option<Vec<FileStamp>>,
}

impl Loaded {
    /// `before`: the config file and its stamp, taken before the load.
    fn new(host: Arc<PluginHost>, before: (&[PathBuf], &crate::reload::Stamp)) -> Loaded {
        let mut l = Loaded {
            host,
            files: Vec::new(),
            stamp: Vec::new(),
            no_lifecycle_hooks: None,
        };
        l.loaded(before);
        l
    }

    /// After a (re)load: the files the plugins came from, with their
    /// stamps from `before` the load (see [`crate::reload::stamp_after_load`]).
    fn loaded(&mut self, before: (&[PathBuf], &crate::reload::Stamp)) {
        self.files = crate::reload::watched_files(&self.host);
        self.stamp = crate::reload::stamp_after_load(&self.files, before);
        let lifecycle = self
            .host
            .registry()
            .plugins
            .iter()
            .any(|p| p.hooks().iter().any(|h| *h != Hook::Create));
        self.no_lifecycle_hooks = (!lifecycle).then(|| {
            self.files
                .iter()
                .zip(&self.stamp)
                .map(|(path, stamp)| FileStamp {
                    path: path.clone(),
                    stamp: *stamp,
                })
                .collect()
        });
    }
}

/// What a create leaves (its decision, its calls' stores), kept until the
/// reply is sent: freeing it, and resetting the stores' pool slots, is not
/// part of what the shim waits for.
struct Leftovers(
    #[allow(dead_code)] Option<Decision>,
    #[allow(dead_code)] SpentStores,
);

/// Counts something in flight for as long as it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service {
    fn idle_for(&self) -> Duration {
        let last = self.last_request.lock().unwrap_or_else(|p| p.into_inner());
        last.unwrap_or(self.started.0).elapsed()
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.connections.load(Ordering::SeqCst) == 0
    }

    /// Starts a connection thread, counted as waiting in `accept`.
    fn spawn_acceptor(self: &Arc<Self>, listener: &Arc<UnixListener>) -> std::io::Result<()> {
        self.acceptors.fetch_add(1, Ordering::SeqCst);
        self.idle_acceptors.fetch_add(1, Ordering::SeqCst);
        let (service, listener) = (Arc::clone(self), Arc::clone(listener));
        let spawned = std::thread::Builder::new()
            .name("husk-plugind-conn".into())
            .spawn(move || {
                let _alive = Counted(&service.acceptors);
                service.accept_loop(&listener);
            });
        spawned.map(drop).inspect_err(|_| {
            self.acceptors.fetch_sub(1, Ordering::SeqCst);
            self.idle_acceptors.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// A connection thread: takes connections and serves them, one at a
    /// time, until the listener is shut down or enough others wait.
    fn accept_loop(self: &Arc<Self>, listener: &Arc<UnixListener>) {
        loop {
            let accepted = listener.accept();
            let idle_left = self.idle_acceptors.fetch_sub(1, Ordering::SeqCst) - 1;
            let closing = self.closing.load(Ordering::SeqCst);
            match accepted {
                Ok((stream, _)) => {
                    let _open = Counted::new(&self.connections);
                    if idle_left == 0 && !closing {
                        // The next connection must not wait for this one.
                        if let Err(e) = self.spawn_acceptor(listener) {
                            tracing::error!(error = %e, "cannot start a connection thread");
                        }
                    }
                    self.serve_connection(stream);
                }
                Err(_) if closing => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: not a reason to spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if !self.closing.load(Ordering::SeqCst)
                && self.idle_acceptors.load(Ordering::SeqCst) >= MAX_IDLE_ACCEPTORS
            {
                return;
            }
            self.idle_acceptors.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Serves requests on one connection until it ends or a frame is bad
    /// beyond repair.
    fn serve_connection(&self, mut stream: UnixStream) {
        if let Some(refusal) = refuse_peer(&stream) {
            tracing::warn!("{refusal}");
            let _ =
                protocol::write_frame(&mut stream, &Reply::error(ErrorKind::BadRequest, refusal));
            return;
        }
        let _ = stream.set_read_timeout(Some(CONNECTION_TIMEOUT));
        loop {
            let body = match protocol::read_frame(&mut stream) {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(protocol::FrameError::Io(e)) => {
                    tracing::debug!(error = %e, "connection ended");
                    return;
                }
                Err(e @ protocol::FrameError::Truncated { .. }) => {
                    tracing::warn!(error = %e, "bad frame");
                    return;
                }
                Err(e) => {
                    // A bad length: the stream cannot be resynchronised.
                    tracing::warn!(error = %e, "bad frame");
                    let _ = protocol::write_frame(
                        &mut stream,
                        &Reply::error(ErrorKind::BadRequest, format!("bad frame: {e}")),
                    );
                    return;
                }
            };
            let _busy = Counted::new(&self.in_flight);
            *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            let (reply, preload, spent) = match parse_request(&body) {
                Ok(Op::Preload { config }) => (Reply::Loading, Some(config), None),
                Ok(Op::Create(req)) => {
                    let (reply, spent) = self.create(req);
                    (reply, None, Some(spent))
                }
                Ok(op) => (self.handle(op), None, None),
                Err(why) => (Reply::error(ErrorKind::BadRequest, why), None, None),
            };
            if let Err(e) = protocol::write_frame(&mut stream, &reply) {
                tracing::debug!(error = %e, "writing a reply");
            }
            let _ = stream.flush();
            // The create's leftovers go once the shim has its reply.
            drop(spent);
            if let Some(config) = preload {
                if let Err(e) = self.host(&config) {
                    tracing::warn!(config = %config.display(), error = %e, "preloading plugins");
                }
            }
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Answers one request.
    pub fn handle(&self, op: Op) -> Reply {
        match op {
            Op::Preload { config } => match self.host(&config) {
                Ok(_) => Reply::Loading,
                Err(e) => config_error(&config, e),
            },
            Op::Create(req) => self.create(req).0,
            Op::Start { config, event } => match self.host(&config) {
                Ok(host) => Reply::Notified {
                    reports: reports(&host.on_start(&start_event(&event))),
                },
                Err(e) => config_error(&config, e),
            },
            Op::Exit { config, event } => match self.host(&config) {
                Ok(host) => Reply::Notified {
                    reports: reports(&host.on_exit(&exit_event(&event))),
                },
                Err(e) => config_error(&config, e),
            },
        }
    }

    /// A create's reply, and what is left of the work (the decision, the
    /// calls' stores), to drop once the reply is sent.
    fn create(&self, req: CreateRequest) -> (Reply, Leftovers) {
        let (reply, decision, stores) = self.run_create(req);
        (reply, Leftovers(decision, stores))
    }

    fn run_create(&self, req: CreateRequest) -> (Reply, Option<Decision>, SpentStores) {
        let spec_json = match (&req.bundle, req.spec_json) {
            (Some(bundle), None) => match bundle::read_spec(bundle) {
                Ok(text) => text,
                Err(why) => {
                    let reply =
                        Reply::error(ErrorKind::Bundle, format!("container {}: {why}", req.id));
                    return (reply, None, SpentStores::default());
                }
            },
            (None, Some(text)) => text.into_bytes(),
            _ => {
                let reply = Reply::error(
                    ErrorKind::BadRequest,
                    format!(
                        "bad request: the create of container {} must carry either its bundle \
                         (protocol 2) or its spec (protocol 1)",
                        req.id
                    ),
                );
                return (reply, None, SpentStores::default());
            }
        };
        let (host, no_lifecycle_hooks_while) = match self.current(&req.config) {
            Ok(h) => h,
            Err(e) => return (config_error(&req.config, e), None, SpentStores::default()),
        };
        let ctx = ContainerContext {
            runtime: req.runtime,
            hardened: req.hardened,
            ..Default::default()
        };
        let (decision, stores) = keeping_stores(|| host.on_create_json(&req.id, &spec_json, &ctx));
        let decision = match decision {
            Ok(d) => d,
            Err(reason) => {
                let reply = Reply::error(
                    ErrorKind::Spec,
                    format!("container {}: config.json: {reason}", req.id),
                );
                return (reply, None, stores);
            }
        };
        let edits: Vec<Note> = decision
            .edits
            .iter()
            .map(|(plugin, edit)| Note {
                plugin: plugin.clone(),
                note: mutation::describe(edit),
            })
            .collect();
        let audit_denials: Vec<Note> = decision
            .audit_denials()
            .into_iter()
            .map(|(plugin, reason)| Note {
                plugin: plugin.into(),
                note: reason.into(),
            })
            .collect();
        let edited = decision.edited_text();
        let mut spec_in_reply = None;
        match &req.bundle {
            Some(bundle) if decision.denial().is_none() => {
                let written = edited
                    .as_deref()
                    .map_or(Ok(()), |json| bundle::write_spec(bundle, json.as_bytes()))
                    .and_then(|()| bundle::write_decision(bundle, &edits, &audit_denials));
                if let Err(why) = written {
                    let reply =
                        Reply::error(ErrorKind::Bundle, format!("container {}: {why}", req.id));
                    return (reply, Some(decision), stores);
                }
            }
            Some(_) => {}
            None => spec_in_reply = edited.map(std::borrow::Cow::into_owned),
        }
        let reply = Reply::Created(CreateReply {
            denial: decision.denial().cloned(),
            edits,
            audit_denials,
            spec_json: spec_in_reply,
            annotations: decision.annotations(),
            reports: reports(&decision.reports),
            no_lifecycle_hooks_while,
        });
        (reply, Some(decision), stores)
    }

    /// The host for `config`: loaded on first use, reloaded when the config
    /// or a plugin file changed since (the old plugins stay if the new set
    /// fails to load, and the error is returned).
    pub fn host(&self, config: &Path) -> Result<Arc<PluginHost>, Error> {
        self.current(config).map(|(host, _)| host)
    }

    /// [`Self::host`], and its files as they were when loaded if none of
    /// its plugins has a start or exit hook.
    fn current(&self, config: &Path) -> Result<(Arc<PluginHost>, Option<Vec<FileStamp>>), Error> {
        let slot = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(hosts.entry(config.to_owned()).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_mut() {
            let now = crate::reload::stamp(&l.files);
            if now != l.stamp {
                l.host.reload()?;
                l.loaded((&l.files.clone(), &now));
                tracing::info!(config = %config.display(), "plugin config changed: reloaded");
            }
            return Ok((Arc::clone(&l.host), l.no_lifecycle_hooks.clone()));
        }
        let config_file = [config.to_owned()];
        let before = crate::reload::stamp(&config_file);
        let l = Loaded::new(
            Arc::new(PluginHost::from_config_file(config)?),
            (&config_file, &before),
        );
        tracing::info!(config = %config.display(), "plugin config loaded");
        let current = (Arc::clone(&l.host), l.no_lifecycle_hooks.clone());
        *slot = Some(l);
        Ok(current)
    }

    /// SIGHUP: every loaded config is read again.
    pub fn reload_all(&self) {
        let slots: Vec<_> = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (config, slot) in slots {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            let Some(l) = slot.as_mut() else { continue };
            let before = crate::reload::stamp(&l.files);
            match l.host.reload() {
                Ok(()) => {
                    l.loaded((&l.files.clone(), &before));
                    tracing::info!(config = %config.display(), "SIGHUP: reloaded");
                }
                Err(e) => tracing::error!(config = %config.display(), error = %e,
                    "SIGHUP: reload failed; keeping the current plugins"),
            }
        }
    }
}

/// The request in `body`, or what is wrong with it. Parsed once (a create
/// carries a whole spec); the version alone is read only to explain a
/// request that does not parse.
fn parse_request(body: &[u8]) -> Result<Op, String> {
    let wrong_version = protocol::version_refusal;
    let served = protocol::OLDEST_SERVED..=protocol::VERSION;
    let e = match serde_json::from_slice::<Request>(body) {
        Ok(r) if served.contains(&r.version) => return Ok(r.op),
        Ok(r) => return Err(wrong_version(r.version)),
        Err(e) => e,
    };
    match serde_json::from_slice::<VersionOnly>(body) {
        Ok(v) if !served.contains(&v.version) => Err(wrong_version(v.version)),
        Ok(_) => Err(format!("bad request: {e}")),
        Err(e) => Err(format!(
            "bad request: not a husk-plugind request (JSON with \"version\" and \"op\"): {e}"
        )),
    }
}

fn config_error(config: &Path, e: Error) -> Reply {
    Reply::error(
        ErrorKind::Config,
        format!("plugin config {}: {e}", config.display()),
    )
}

/// Only the daemon's own user (root) may use it, whatever the socket's mode.
fn refuse_peer(stream: &UnixStream) -> Option<String> {
    let cred = match endpoint::peer_credentials(stream) {
        Ok(cred) => cred,
        Err(e) => {
            return Some(format!(
                "refusing a connection whose credentials cannot be read: {e}"
            ))
        }
    };
    let me = endpoint::euid();
    (cred.uid != me).then(|| {
        format!(
            "refusing pid {} (uid {}): husk-plugind serves only uid {me}",
            cred.pid, cred.uid
        )
    })
}

fn reports(list: &[HookReport]) -> Vec<Report> {
    list.iter()
        .map(|r| Report {
            plugin: r.plugin.clone(),
            hook: r.hook.name().into(),
            outcome: format!("{:?}", r.outcome),
            failed: matches!(
                r.outcome,
                Outcome::Failed(_) | Outcome::FailedOpen(_) | Outcome::FailedClosed(_)
            ),
            elapsed_us: r.elapsed.as_micros() as u64,
        })
        .collect()
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs(),
        nanoseconds: d.subsec_nanos(),
    }
}

fn key_values(list: &[(String, String)]) -> Vec<KeyValue> {
    list.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn start_event(e: &Started) -> StartEvent {
    StartEvent {
        id: e.id.clone(),
        pid: e.pid,
        started_at: timestamp(e.started_at),
        annotations: key_values(&e.annotations),
    }
}

fn exit_event(e: &Exited) -> ExitEvent {
    ExitEvent {
        id: e.id.clone(),
        pid: e.pid,
        status: exit_status(e.status),
        oom_killed: e.oom_killed,
        started_at: timestamp(e.started_at),
        exited_at: timestamp(e.exited_at),
        duration_ms: e
            .exited_at
            .duration_since(e.started_at)
            .unwrap_or_default()
            .as_millis() as u64,
        annotations: key_values(&e.annotations),
    }
}

/// containerd's exit status (code, or 128 + signal) as the WIT variant.
fn exit_status(status: u32) -> ExitStatus {
    match status {
        129..=192 => ExitStatus::Signal(status - 128),
        code => ExitStatus::Code(code as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0), ExitStatus::Code(0));
        assert_eq!(exit_status(3), ExitStatus::Code(3));
        assert_eq!(exit_status(137), ExitStatus::Signal(9));
    }

    #[test]
    fn exit_events_carry_the_duration() {
        let started_at = UNIX_EPOCH + Duration::from_secs(100);
        let e = exit_event(&Exited {
            id: "c".into(),
            pid: 3,
            status: 143,
            oom_killed: false,
            started_at,
            exited_at: started_at + Duration::from_millis(1500),
            annotations: vec![("k".into(), "v".into())],
        });
        assert_eq!(e.duration_ms, 1500);
        assert_eq!(e.status, ExitStatus::Signal(15));
        assert_eq!(e.started_at.seconds, 100);
        assert_eq!(e.annotations[0].key, "k");
    }

    #[test]
    fn bad_requests_are_answered_not_fatal() {
        let err = |body: &[u8]| parse_request(body).unwrap_err();
        let e = err(b"garbage");
        assert!(e.contains("not a husk-plugind request"), "{e}");
        let e = err(br#"{"version": 99, "op": {"future": {}}}"#);
        assert!(e.contains("protocol version 99"), "{e}");
        let e = err(br#"{"version": 1, "op": {"nope": {}}}"#);
        assert!(e.contains("bad request"), "{e}");
        let op =
            parse_request(br#"{"version": 1, "op": {"preload": {"config": "/p.toml"}}}"#).unwrap();
        assert_eq!(
            op,
            Op::Preload {
                config: "/p.toml".into()
            }
        );
    }

    #[test]
    fn a_config_that_does_not_load_is_a_config_error() {
        let svc = Service::default();
        match svc.handle(Op::Preload {
            config: "/nonexistent/husk/plugins.toml".into(),
        }) {
            Reply::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Config);
                assert!(e.message.contains("/nonexistent/husk/plugins.toml"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
