//! husk-core: the manager, `huskd`, and its CLI, `husk`.
//!
//! | module | concept |
//! | --- | --- |
//! | [`images`] | the image store: content, snapshots, overlay rootfs |
//! | [`api`] | the API's types: requests, frames, parameters |
//! | [`server`] | the API server on the unix socket |
//! | [`client`] | the blocking client `husk` uses |
//! | [`state`] | directories, container records, crash-safe writes |
//! | [`containers`] | the container lifecycle and restart recovery |
//! | [`cgroup_warm`] | the cgroup migration lock kept warm while creating |
//! | [`spec_builder`] | the OCI spec from the image config and flags |
//! | [`shim_client`] | shim v2: `start`, `delete`, the ttrpc Task client |
//! | [`shims`] | the running shims: list, live swap (`husk.shim.v1.Shim`) |
//! | [`spares`] | spare shims started ahead of the containers that take them |
//! | [`events`] | the ttrpc events endpoint shims publish to |
//! | [`logs`] | output FIFOs captured to log files |
//! | [`plugins`] | installed plugins: the config shims are given, `husk plugin` |
//! | [`volumes`] | `-v` specs and named volumes |

#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod cgroup_warm;
pub mod client;
pub mod containers;
pub mod error;
pub mod events;
pub mod images;
pub mod logs;
pub mod plugin_scaffold;
pub mod plugins;
pub mod server;
pub mod shim_client;
pub mod shims;
pub mod spares;
pub mod spec_builder;
pub mod state;
pub mod volumes;

pub use error::{CoreError, Result};
