//! `husk-plugind`: the plugin service. Runs the policy and lifecycle
//! plugins of every shim on the node, so that no shim links wasmtime (see
//! `husk_plugins::service`). Shims start it on demand; it exits after its
//! idle timeout.
//!
//! ```text
//! husk-plugind [--socket PATH] [--idle-timeout SECS]
//! ```
//!
//! `--socket` defaults to `$HUSK_PLUGIND_SOCKET`, else
//! `/run/husk/plugind.sock`; `--idle-timeout` to
//! `$HUSK_PLUGIND_IDLE_TIMEOUT`, else 300 (0: never exit). Logs go to
//! stderr (the shim that starts it appends them to `plugind.log` beside
//! the socket), filtered by `$HUSK_PLUGIND_LOG` (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use husk_plugins::{endpoint, service};

/// mimalloc, not glibc's malloc: a create's hooks allocate and free a few
/// thousand small objects (the spec as JSON, the views, the calls' stores)
/// on a thread whose caches went cold since the last container, and
/// glibc's bins (consolidating fast bins, unlinking chunks) were ~18% of
/// the service's samples under `perf` in the plugin_create bench. Its
/// arenas are committed as they are used (see `main`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` (the fifth of `mi_option_e` in
/// mimalloc.h, v2 and v3; the Rust bindings do not name it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

#[derive(Parser)]
#[command(
    name = "husk-plugind",
    version,
    about = "husk's plugin service: runs every shim's plugin hooks"
)]
struct Args {
    /// The unix socket to serve [default: $HUSK_PLUGIND_SOCKET, else
    /// /run/husk/plugind.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Exit after this many seconds without a request; 0: never
    /// [default: $HUSK_PLUGIND_IDLE_TIMEOUT, else 300].
    #[arg(long)]
    idle_timeout: Option<u64>,
}

/// Arenas committed eagerly are given transparent huge pages: ~10 MB more
/// resident for the daemon's life (25 MB instead of 14) for a create ~4%
/// faster. Committed as used, the service keeps most of mimalloc's gain
/// at glibc's size. Set before `main`: Rust's runtime allocates before it,
/// and mimalloc reads the option as it reserves its first arena.
extern "C" fn set_allocator_options() {
    // SAFETY: sets an option of the allocator; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// Runs [`set_allocator_options`] as the binary is loaded, before anything
/// allocates (a constructor, as C's `__attribute__((constructor))`).
#[used]
#[unsafe(link_section = ".init_array")]
static SET_ALLOCATOR_OPTIONS: extern "C" fn() = set_allocator_options;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_PLUGIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let idle = match args.idle_timeout {
        Some(secs) => secs,
        None => match std::env::var(service::IDLE_TIMEOUT_ENV) {
            Ok(v) => match v.trim().parse() {
                Ok(secs) => secs,
                Err(_) => {
                    eprintln!(
                        "husk-plugind: ${} must be a number of seconds, not {v:?}",
                        service::IDLE_TIMEOUT_ENV
                    );
                    return ExitCode::FAILURE;
                }
            },
            Err(_) => service::DEFAULT_IDLE_TIMEOUT.as_secs(),
        },
    };
    let options = service::Options {
        socket: args.socket.unwrap_or_else(endpoint::socket_from_env),
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
    };
    match service::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("husk-plugind: {e}");
            ExitCode::FAILURE
        }
    }
}
