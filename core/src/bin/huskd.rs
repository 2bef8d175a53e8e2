//! huskd: the manager daemon. See docs/architecture.md ("huskd") and
//! docs/api.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use husk_core::containers::Manager;
use husk_core::shim_client::{Runtimes, ShimLauncher};
use husk_core::state::Layout;
use husk_core::{events, server};

#[derive(Parser)]
#[command(name = "huskd", version, about = "husk's manager daemon")]
struct Args {
    /// Persistent state: images, container records, logs, volumes.
    #[arg(long, default_value = "/var/lib/husk")]
    root: PathBuf,
    /// Runtime state: bundles, sockets.
    #[arg(long, default_value = "/run/husk")]
    state: PathBuf,
    /// The API socket (default: <state>/huskd.sock).
    #[arg(long, env = "HUSK_SOCKET")]
    socket: Option<PathBuf>,
    /// The API socket's mode, octal.
    #[arg(long, default_value = "600")]
    socket_mode: String,
    /// The runtime used when `husk run` names none.
    #[arg(long, default_value = "native")]
    default_runtime: String,
    /// Adds or replaces a runtime: NAME=BINARY (a name searched beside
    /// huskd and on PATH, or an absolute path). Repeatable.
    #[arg(long = "runtime", value_name = "NAME=BINARY")]
    runtimes: Vec<String>,
    /// A plugin config maintained by hand, given to every shim instead of
    /// the plugins installed with `husk plugin install`.
    #[arg(long, value_name = "PLUGINS_TOML")]
    plugin_config: Option<PathBuf>,
    /// Spare shims kept ready per shim binary (0 or 1): a create takes
    /// the spare instead of waiting for `shim start`.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u8).range(0..=1))]
    spare_shims: u8,
    /// Debug logging.
    #[arg(long)]
    debug: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let filter = if a.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("huskd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> husk_core::Result<()> {
    let mode = u32::from_str_radix(&a.socket_mode, 8).map_err(|_| {
        husk_core::CoreError::InvalidArgument(format!(
            "invalid --socket-mode {:?}: use octal, e.g. 600",
            a.socket_mode
        ))
    })?;
    let layout = Layout::new(&a.root, &a.state);
    layout.create()?;
    let socket = a.socket.clone().unwrap_or_else(|| layout.default_socket());
    let mut runtimes = Runtimes {
        default: a.default_runtime.clone(),
        ..Default::default()
    };
    for r in &a.runtimes {
        runtimes.set(r)?;
    }
    let events = events::serve(&layout.events_socket()).await?;
    let launcher = ShimLauncher {
        address: socket.to_string_lossy().into_owned(),
        ttrpc_address: layout.events_socket().to_string_lossy().into_owned(),
        publish_binary: std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "huskd".into()),
        debug: a.debug,
    };
    let m = Manager::new(
        layout,
        runtimes,
        launcher,
        a.plugin_config.clone(),
        a.spare_shims > 0,
    )?;
    m.recover().await?;
    m.start_spares();
    let listener = server::bind(&socket, mode)?;
    tracing::info!(socket = %socket.display(), root = %a.root.display(), state = %a.state.display(), "huskd serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| husk_core::CoreError::io("installing a SIGTERM handler", e))?;
    tokio::select! {
        _ = server::serve(listener, m.clone()) => {}
        _ = term.recv() => tracing::info!("SIGTERM: exiting; containers keep running"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting; containers keep running"),
    }
    // `--rm` containers already reported gone are removed before exiting.
    m.finish_removals(std::time::Duration::from_secs(10)).await;
    m.spares.close().await;
    let _ = std::fs::remove_file(&socket);
    drop(events);
    Ok(())
}
