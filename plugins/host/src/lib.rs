//! husk's plugin host: runs the container lifecycle's plugins.
//!
//! Plugins are WebAssembly components built against the WIT package
//! `husk:plugin@0.1.0` (the repository's `wit/`), or, for trusted operators,
//! native shared libraries with a small C ABI (see [`native`]). The host's
//! [`PluginHost::on_create`] runs before a container is created, and
//! [`PluginHost::on_start`] / [`PluginHost::on_exit`] as it runs. Shims do
//! not host plugins: the plugin service `husk-plugind` ([`service`]) does,
//! for every shim of the node, and a shim asks it over a unix socket
//! ([`protocol`], [`client`]). Those two, the [`config`] and the
//! [`endpoint`] come from the crate `husk-plugin-client` (re-exported
//! here), which is all a shim links: no wasmtime.
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
//! | [`config`] | the operator's TOML config: plugins, hooks, limits, grants (`husk-plugin-client`) |
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
//! | [`service`] | `husk-plugind`: warm hosts per config, serving the [`protocol`] |
//! | [`bundle`] | the container's bundle at create: its spec read, the decision written back |
//! | [`protocol`], [`endpoint`], [`client`] | the service's wire format, socket and client (`husk-plugin-client`) |

pub mod bindings;
pub mod bundle;
pub mod cache;
pub mod engine;
pub mod grants;
pub mod kv;
pub mod limits;
pub mod mutation;
pub mod native;
pub mod registry;
pub mod reload;
pub mod service;
pub mod view;
pub mod wasm;

pub use bindings::{
    ContainerView, Edit, ExitEvent, ExitStatus, KeyValue, StartEvent, Timestamp, Verdict,
};
pub use husk_plugin_client::{client, config, endpoint, protocol};
pub use husk_plugin_client::{Error, HookFailure, HostConfig, Mode, OnError, PluginConfig};
pub use registry::{Decision, Denial, HookReport, Outcome, PluginHost};
pub use view::ContainerContext;
pub use wasm::CallPhases;
