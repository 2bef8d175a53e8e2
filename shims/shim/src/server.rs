//! The daemon: serves the Task API (and `husk.shim.v1.Shim`) on the socket
//! `start` bound, or on everything a previous binary handed over (live
//! swap); reaps children, publishes events, swaps on SIGUSR2, exits after
//! Shutdown once it holds no container, or after its idle timeout if it
//! never got a container.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::events::{Publisher, Target};
use crate::service::{Shim, TaskService};
use crate::state::{ExitRecord, ShimState, STATE_VERSION};
use crate::swap::{self, HuskService, Inheritance, Swapper, Trigger};
use crate::ttrpc_server::Server;
use crate::{reaper, runtime_root, start, Profile};

/// A shim that never gets a container exits after this long (seconds;
/// `HUSK_SHIM_IDLE_TIMEOUT` overrides it, 0 disables).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const IDLE_TIMEOUT_ENV: &str = "HUSK_SHIM_IDLE_TIMEOUT";

/// How the daemon came to be.
pub enum Origin {
    /// Forked by `start`, with the socket it bound.
    Forked(OwnedFd),
    /// Executed with the socket on fd 3 (by a `start` from before it
    /// forked).
    Executed,
    /// Executed by a live swap, with the handover memfd.
    Successor(OwnedFd),
}

/// Serves: a fresh shim or the successor of a live swap.
pub fn serve(args: &Args, profile: Profile, origin: Origin) -> Result<()> {
    args.require_id()?;
    let inheritance = match origin {
        Origin::Successor(memfd) => match swap::take_over(&memfd, profile) {
            Ok(i) => i,
            Err((why, h)) => swap::roll_back(memfd, h, &why),
        },
        Origin::Forked(listener) => fresh(args, profile, listener)?,
        Origin::Executed => fresh(args, profile, start::inherited_listener()?)?,
    };
    // Set by the first binary; kept across execve (the kernel keeps it in
    // the signal struct), set again in case an older binary did not.
    reaper::set_subreaper().map_err(ShimError::io("become a child subreaper"))?;
    // Nothing keeps the bundle busy.
    let _ = std::env::set_current_dir("/");
    // One thread serves everything; runtime library calls run in worker
    // processes (worker.rs). The few blocking calls left (the publish
    // binary, a swap's probe, Shutdown's wait for plugin hooks) run on a
    // small blocking pool whose threads go away when idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(5))
        .build()
        .map_err(ShimError::io("start the tokio runtime"))?;
    rt.block_on(run(inheritance, profile))
}

fn fresh(args: &Args, profile: Profile, listener: OwnedFd) -> Result<Inheritance> {
    let bundle = start::bundle_dir(args)?;
    let now = ExitRecord::now(0).at_secs;
    let state = ShimState {
        version: STATE_VERSION,
        profile,
        namespace: args.namespace.clone(),
        group: start::group_of(&bundle, &args.id),
        socket_address: args.socket.clone(),
        containerd_address: args.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        publish_binary: args.publish_binary.clone(),
        runtime_root: runtime_root(&args.namespace),
        binary: husk_runtime::sealed_exe::binary_path(),
        started_at: now,
        serving_since: now,
        ..Default::default()
    };
    Ok(Inheritance {
        state,
        listener,
        conns: Vec::new(),
        io: Vec::new(),
        events: Vec::new(),
        upgrade: None,
        rolled_back: None,
        previous_exe: None,
    })
}

async fn run(inh: Inheritance, profile: Profile) -> Result<()> {
    // Before anything can start a child, so no SIGCHLD is missed.
    let mut sigchld = signal(SignalKind::child()).map_err(ShimError::io("watch SIGCHLD"))?;
    let mut sigusr2 =
        signal(SignalKind::user_defined2()).map_err(ShimError::io("watch SIGUSR2"))?;
    let state = inh.state;
    let events = Publisher::spawn(
        Target {
            namespace: state.namespace.clone(),
            ttrpc_address: state.ttrpc_address.clone(),
            containerd_address: state.containerd_address.clone(),
            publish_binary: state.publish_binary.clone(),
        },
        inh.events,
    );
    let socket = state.socket_address.clone();
    tracing::info!(
        group = state.group,
        profile = profile.name(),
        socket,
        swaps = state.swaps,
        "husk shim serving"
    );
    if let Some(why) = &inh.rolled_back {
        tracing::warn!("took the shim back after a failed swap: {why}");
    }
    let shim = Arc::new(Shim::new(state, events));
    crate::plugins::preload(&shim.plugins);
    swap::restore_io(&shim, inh.io);
    let swapper = Swapper::new(Arc::clone(&shim), profile);
    let mut services = create_task(Arc::new(TaskService {
        shim: Arc::clone(&shim),
        profile,
    }));
    services.extend(husk_shim_api::create_shim(Arc::new(HuskService {
        swapper: Arc::clone(&swapper),
    })));
    let server = Server::new(services);
    swapper.set_server(Arc::clone(&server));
    let conns = server
        .serve(inh.listener, inh.conns)
        .map_err(ShimError::io("serve the shim socket"))?;
    {
        let (shim, swapper) = (Arc::clone(&shim), Arc::clone(&swapper));
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                // During a swap exits wait as zombies for whoever serves
                // next.
                if !swapper.reaper_paused() {
                    shim.on_sigchld();
                }
            }
        });
    }
    // Exits that happened while the previous binary handed over.
    shim.on_sigchld();
    swap::answer_upgrade(&conns, inh.upgrade, inh.rolled_back.as_deref()).await;
    // The server keeps the connections it reads; holding them here too
    // would keep a hung-up client's socket (the swap's own trigger) open
    // until the next swap.
    drop(conns);
    // Committed: no rollback from here on.
    drop(inh.previous_exe);
    {
        let swapper = Arc::clone(&swapper);
        tokio::spawn(async move {
            while sigusr2.recv().await.is_some() {
                tracing::info!("SIGUSR2: swapping to the binary at the shim's path");
                let e = swapper.swap("", Trigger::Signal).await;
                tracing::error!("SIGUSR2 swap: {e}");
            }
        });
    }
    tokio::spawn(idle_exit(Arc::clone(&shim), Arc::clone(&server)));
    shim.shutdown.notified().await;
    tracing::info!("shutting down");
    // Let the Shutdown response reach its client.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if !socket.is_empty() {
        let _ = std::fs::remove_file(start::socket_path(&socket));
    }
    Ok(())
}

fn idle_timeout() -> Duration {
    std::env::var(IDLE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(IDLE_TIMEOUT)
}

/// A shim that was started and never got a container (its client died
/// between `start` and Create, or its Create failed and no Shutdown
/// came) exits once the idle timeout has passed since it started.
async fn idle_exit(shim: Arc<Shim>, server: Arc<Server>) {
    let timeout = idle_timeout();
    if timeout.is_zero() {
        return;
    }
    let started = shim.lock().started_at;
    let already =
        Duration::from_secs(ExitRecord::now(0).at_secs.saturating_sub(started).max(0) as u64);
    let begun = tokio::time::Instant::now();
    let tick = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        {
            let mut st = shim.lock();
            if st.ever_created || !st.containers.is_empty() || st.launches_in_flight > 0 {
                st.ever_created = true;
                return;
            }
            if begun.elapsed() + already >= timeout && server.in_flight() == 0 {
                tracing::info!(
                    timeout_secs = timeout.as_secs_f64(),
                    "no container came since the shim started; exiting"
                );
                drop(st);
                shim.shutdown.notify_one();
                return;
            }
        }
        tokio::time::sleep(tick).await;
    }
}
