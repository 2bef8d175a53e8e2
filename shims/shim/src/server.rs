//! The daemon: serves the Task API on the socket `start` bound, reaps
//! children, publishes events, and exits after Shutdown once it holds no
//! container.

use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::shim_async::create_task;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::events::{Publisher, Target};
use crate::service::{Shim, TaskService};
use crate::state::{ShimState, STATE_VERSION};
use crate::{reaper, runtime_root, start, Profile};

pub fn serve(args: &Args, profile: Profile) -> Result<()> {
    args.require_id()?;
    reaper::set_subreaper().map_err(ShimError::io("become a child subreaper"))?;
    let listener = start::inherited_listener()?;
    let bundle = start::bundle_dir(args)?;
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
        ..Default::default()
    };
    // Nothing keeps the bundle busy.
    let _ = std::env::set_current_dir("/");
    // One thread serves everything; runtime library calls (which block)
    // run on a small blocking pool whose threads go away when idle.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(32)
        .thread_keep_alive(Duration::from_secs(5))
        .build()
        .map_err(ShimError::io("start the tokio runtime"))?;
    rt.block_on(run(state, listener, profile))
}

async fn run(state: ShimState, listener: std::os::fd::OwnedFd, profile: Profile) -> Result<()> {
    // Before anything can start a child, so no SIGCHLD is missed.
    let mut sigchld = signal(SignalKind::child()).map_err(ShimError::io("watch SIGCHLD"))?;
    let events = Publisher::spawn(Target {
        namespace: state.namespace.clone(),
        ttrpc_address: state.ttrpc_address.clone(),
        containerd_address: state.containerd_address.clone(),
        publish_binary: state.publish_binary.clone(),
    });
    let socket = state.socket_address.clone();
    tracing::info!(
        group = state.group,
        profile = profile.name(),
        socket,
        "husk shim serving"
    );
    let shim = Arc::new(Shim::new(state, events));
    let reaper_shim = Arc::clone(&shim);
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reaper_shim.on_sigchld();
        }
    });
    let service = TaskService {
        shim: Arc::clone(&shim),
        profile,
    };
    // SAFETY: the fd is the listening unix socket `start` passed us,
    // checked by inherited_listener; ownership moves to the server.
    let server =
        unsafe { ttrpc::asynchronous::Server::new().add_unix_listener(listener.into_raw_fd()) }
            .map_err(|e| ShimError::Internal(format!("serve the shim socket: {e}")))?;
    let mut server = server.register_service(create_task(Arc::new(service)));
    server
        .start()
        .await
        .map_err(|e| ShimError::Internal(format!("start the ttrpc server: {e}")))?;
    shim.shutdown.notified().await;
    tracing::info!("shutting down");
    // Let the Shutdown response reach containerd.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = server.shutdown().await;
    if !socket.is_empty() {
        let _ = std::fs::remove_file(start::socket_path(&socket));
    }
    Ok(())
}
