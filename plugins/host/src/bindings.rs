//! Rust bindings of the WIT package `husk:plugin@0.1.0` (../../wit), generated
//! by wasmtime's `bindgen!` from world `plugin` (both hook interfaces plus
//! every host import), so one set of types serves policy and lifecycle
//! plugins. The types also derive serde: the native C ABI carries them as
//! JSON (field and case names are the Rust ones, `snake_case`).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
});

pub use exports::husk::plugin::{lifecycle_hooks, policy_hooks};
pub use husk::plugin::types::*;
pub use husk::plugin::{config, log, store};

/// The version of `husk:plugin` this host speaks.
pub const WIT_VERSION: &str = "0.1.0";
/// The export a policy plugin provides.
pub const POLICY_EXPORT: &str = "husk:plugin/policy-hooks@0.1.0";
/// The export a lifecycle plugin provides.
pub const LIFECYCLE_EXPORT: &str = "husk:plugin/lifecycle-hooks@0.1.0";
/// The host import that needs the `store` grant.
pub const STORE_IMPORT: &str = "husk:plugin/store@0.1.0";
