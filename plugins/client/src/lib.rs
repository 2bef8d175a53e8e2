//! What a shim needs of husk's plugins, without the plugin host: the
//! operator's plugin config, and the protocol and client of the plugin
//! service `husk-plugind` (which runs the plugins; crate `husk-plugins`).
//! No wasmtime: a shim links this crate only.
//!
//! | module | concept |
//! | --- | --- |
//! | [`config`] | the operator's TOML config: plugins, hooks, limits, grants |
//! | [`grants`] | capabilities granted to a plugin, as configured |
//! | [`protocol`] | the plugin service's frames, requests and replies |
//! | [`endpoint`] | the service's socket, lock and log paths, its private directory |
//! | [`client`] | a shim's side: connect, or start the service and connect |

pub mod client;
pub mod config;
pub mod endpoint;
mod error;
pub mod grants;
pub mod protocol;

pub use config::{HostConfig, Mode, OnError, PluginConfig};
pub use error::{Error, HookFailure};
