//! The WASI context a plugin's grants give it.
//!
//! The grants themselves (`grants = [...]` in the config) are parsed by
//! `husk_plugin_client::grants`; this is what they mean inside the host.
//! The default grant is none. A plugin without grants still links against
//! every WASI 0.2 interface (language runtimes import them), but:
//!
//! - no directory is preopened, so every file open fails;
//! - TCP, UDP and name lookups are refused;
//! - the wall and monotonic clocks are frozen at zero (the Unix epoch);
//! - `wasi:random` yields a fixed stream (seeded with 0), not entropy;
//! - stdin is empty; stdout is discarded; stderr is kept (64 KiB) only to
//!   explain a trap;
//! - `husk:plugin/store` is refused at load time.
//!
//! | grant | gives |
//! | --- | --- |
//! | `store` | the per-plugin key-value store |
//! | `clock` | the host's real clocks |
//! | `random` | real entropy |
//! | `network` | TCP, UDP and name lookups to any address |
//! | `fs:/host/dir:ro`, `fs:/host/dir:rw` | that directory, at the same path in the guest |

use std::time::Duration;

use rand::SeedableRng;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx};

pub use husk_plugin_client::grants::{FsGrant, Grants};

use crate::Error;

/// The WASI side of [`Grants`].
pub trait WasiGrants {
    /// The WASI context for one call. `stderr` collects the plugin's stderr.
    fn wasi_ctx(&self, plugin: &str, stderr: &MemoryOutputPipe) -> Result<WasiCtx, Error>;
}

impl WasiGrants for Grants {
    fn wasi_ctx(&self, plugin: &str, stderr: &MemoryOutputPipe) -> Result<WasiCtx, Error> {
        let mut b = WasiCtx::builder();
        b.stderr(stderr.clone());
        if !self.clock {
            b.wall_clock(FrozenClock);
            b.monotonic_clock(FrozenClock);
        }
        if !self.random {
            b.secure_random(rand::rngs::StdRng::seed_from_u64(0));
            b.insecure_random(rand::rngs::StdRng::seed_from_u64(0));
            b.insecure_random_seed(0);
        }
        if self.network {
            b.inherit_network();
            b.allow_tcp(true);
            b.allow_udp(true);
            b.allow_ip_name_lookup(true);
        } else {
            b.allow_tcp(false);
            b.allow_udp(false);
            b.allow_ip_name_lookup(false);
        }
        for fs in &self.fs {
            let perms = if fs.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            let guest = fs.path.to_string_lossy().into_owned();
            b.preopened_dir(&fs.path, guest, perms)
                .map_err(|e| Error::Grant {
                    plugin: plugin.to_owned(),
                    grant: format!("fs:{}", fs.path.display()),
                    detail: format!("cannot open the directory: {e}"),
                })?;
        }
        Ok(b.build())
    }
}

/// A clock stuck at zero: a plugin without the `clock` grant learns nothing
/// about time (and cannot time side channels with it).
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
