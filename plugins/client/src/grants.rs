//! Capabilities an operator grants a plugin (the plugin host turns them into
//! the plugin's WASI context: `husk_plugins::grants`).
//!
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

use std::path::PathBuf;

use crate::Error;

/// A directory granted to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGrant {
    pub path: PathBuf,
    pub read_only: bool,
}

/// What a plugin may reach beyond its own memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub store: bool,
    pub clock: bool,
    pub random: bool,
    pub network: bool,
    pub fs: Vec<FsGrant>,
}

impl Grants {
    /// Parses the config's `grants = [...]` list.
    pub fn parse(plugin: &str, items: &[String]) -> Result<Self, Error> {
        let mut g = Grants::default();
        for item in items {
            let bad = |detail: &str| Error::Grant {
                plugin: plugin.to_owned(),
                grant: item.clone(),
                detail: detail.to_owned(),
            };
            match item.as_str() {
                "store" => g.store = true,
                "clock" => g.clock = true,
                "random" => g.random = true,
                "network" => g.network = true,
                other => {
                    let Some(rest) = other.strip_prefix("fs:") else {
                        return Err(bad(
                            "unknown grant; use store, clock, random, network or fs:/dir:ro|rw",
                        ));
                    };
                    let (path, read_only) = if let Some(p) = rest.strip_suffix(":ro") {
                        (p, true)
                    } else if let Some(p) = rest.strip_suffix(":rw") {
                        (p, false)
                    } else {
                        (rest, true)
                    };
                    let path = PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(bad("the directory must be an absolute host path"));
                    }
                    g.fs.push(FsGrant { path, read_only });
                }
            }
        }
        Ok(g)
    }
}
