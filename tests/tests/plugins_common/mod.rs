//! Shared by the `plugins_*` tests: the example plugins built by
//! `scripts/build-plugins.sh`, a compile cache shared by every test (so each
//! component is compiled once per checkout, not once per test), and specs.
#![allow(dead_code)]

use std::time::Duration;

use husk_plugins::config::PluginConfig;
use husk_plugins::{HostConfig, PluginHost};
use oci_spec::runtime::Spec;

/// The compile cache every plugin test shares.
pub use husk_tests::plugin_config::{plugin_file, shared_cache_dir as cache_dir};

/// A plugin config with the defaults (enforce, deny on error, 100 ms, 64 MiB, no grants).
pub fn plugin(name: &str, file: &str) -> PluginConfig {
    PluginConfig::new(name, plugin_file(file))
}

pub fn host(plugins: Vec<PluginConfig>) -> PluginHost {
    PluginHost::new(HostConfig::with_plugins(cache_dir(), plugins))
        .unwrap_or_else(|e| panic!("loading plugins: {e}"))
}

/// runc's default spec (busybox `sh`, default capabilities without
/// CAP_SYS_ADMIN but with CAP_NET_RAW), edited by `f`.
pub fn spec(f: impl FnOnce(&mut serde_json::Value)) -> Spec {
    let mut v = serde_json::to_value(husk_runtime::spec::default_spec(false)).unwrap();
    f(&mut v);
    serde_json::from_value(v).unwrap()
}

pub fn add_env(v: &mut serde_json::Value, entry: &str) {
    v["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(entry.into());
}

pub fn add_cap(v: &mut serde_json::Value, set: &str, cap: &str) {
    v["process"]["capabilities"][set]
        .as_array_mut()
        .unwrap()
        .push(cap.into());
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
