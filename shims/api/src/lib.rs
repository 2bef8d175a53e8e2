//! husk-shim-api: `husk.shim.v1.Shim`, the husk-specific ttrpc service
//! husk's shims serve beside containerd's Task service (see
//! `proto/husk_shim.proto`): `Info` and `Upgrade` (live shim swap). The
//! shim serves it; huskd and the shim's own `upgrade` command call it.

#![allow(clippy::all, warnings)]

/// The messages.
pub mod husk_shim {
    include!(concat!(env!("OUT_DIR"), "/husk_shim.rs"));
}

/// The async ttrpc client (`ShimClient`) and service (`Shim`,
/// `create_shim`).
pub mod husk_shim_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/husk_shim_ttrpc.rs"));
}

pub use husk_shim::*;
pub use husk_shim_ttrpc::{create_shim, Shim, ShimClient};

/// The service's full name, as it appears in ttrpc requests.
pub const SERVICE: &str = "husk.shim.v1.Shim";
/// The method that swaps the binary.
pub const UPGRADE_METHOD: &str = "Upgrade";
