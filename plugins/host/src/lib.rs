//! husk's plugin host: runs the container lifecycle's plugins.
//!
//! Plugins are WebAssembly components built against the WIT package
//! `husk:plugin@0.1.0` (the repository's `wit/`), or, for trusted operators,
//! native shared libraries with a small C ABI (see [`native`]). The shim calls
//! [`PluginHost::on_create`] before it creates anything, and
//! [`PluginHost::on_start`] / [`PluginHost::on_exit`] as the container runs.
//!
//! ```no_run
//! # fn main() -> Result<(), husk_plugins::Error> {
//! use husk_plugins::{PluginHost, ContainerContext};
//! let host = PluginHost::from_config_file("/etc/husk/plugins.toml".as_ref())?;
//! # let spec = husk_runtime::spec::default_spec(false);
//! let decision = host.on_create_spec("web-1", &spec, &ContainerContext::default());
//! match decision.denial() {
//!     Some(d) => eprintln!("denied by policy {}: {}", d.plugin, d.reason),
//!     None => { let _spec = decision.spec; /* create with the (mutated) spec */ }
//! }
//! # Ok(()) }
//! ```
//!
//! | module | concept |
//! | --- | --- |
//! | [`bindings`] | the WIT types and the generated component bindings |
//! | [`config`] | the operator's TOML config: plugins, hooks, limits, grants |
//! | [`engine`] | the wasmtime engine: pooling allocator, epoch interruption |
//! | [`cache`] | ahead-of-time compilation cached on disk by content hash + engine |
//! | [`limits`] | time limits (the epoch ticker) and memory caps |
//! | [`grants`] | capabilities granted to a plugin, turned into its WASI context |
//! | [`kv`] | the per-plugin key-value store (`husk:plugin/store`) |
//! | [`wasm`] | a component plugin: `InstancePre`, a fresh instance per call |
//! | [`native`] | a native plugin through the C ABI (`libloading`) |
//! | [`view`] | the container view built from an OCI spec |
//! | [`mutation`] | applying a policy's edits to the spec, and re-validating |
//! | [`registry`] | the loaded plugins in order; running hooks; verdicts; audit |
//! | [`reload`] | hot reload on SIGHUP or config change |

pub mod bindings;
pub mod cache;
pub mod config;
pub mod engine;
mod error;
pub mod grants;
pub mod kv;
pub mod limits;
pub mod mutation;
pub mod native;
pub mod registry;
pub mod reload;
pub mod view;
pub mod wasm;

pub use bindings::{
    ContainerView, Edit, ExitEvent, ExitStatus, KeyValue, StartEvent, Timestamp, Verdict,
};
pub use config::{HostConfig, Mode, OnError, PluginConfig};
pub use error::{Error, HookFailure};
pub use registry::{Decision, Denial, HookReport, Outcome, PluginHost};
pub use view::ContainerContext;
