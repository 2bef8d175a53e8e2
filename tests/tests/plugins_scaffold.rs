//! `husk plugin new` (husk_core::plugin_scaffold): a new plugin of each
//! language builds out of the box with its real toolchain (the one
//! scripts/install-deps.sh installs), loads in the plugin host, allows a
//! default container, and its deny and mutate examples work when configured.
//!
//! One test per language, so nextest runs them in parallel. The builds are
//! offline (cargo and npm use the caches install-deps.sh and
//! build-plugins.sh filled), and the Rust one shares `target/plugin-guests`
//! with build-plugins.sh so wit-bindgen is compiled once.

mod plugins_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_core::plugin_scaffold::{scaffold, Lang};
use husk_plugins::{
    ContainerContext, Edit, HostConfig, KeyValue, Outcome, PluginConfig, PluginHost, Verdict,
};
use husk_tests::command::{check_success, output_timeout};
use husk_tests::runtime_bin::profile_dir_of;
use plugins_common::*;

/// `target/plugin-guests`: where build-plugins.sh builds the Rust examples.
fn guest_target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = profile_dir_of(&exe);
    profile.parent().unwrap_or(&profile).join("plugin-guests")
}

fn build(dir: &Path) {
    let mut cmd = Command::new(dir.join("build.sh"));
    cmd.env("CARGO_TARGET_DIR", guest_target_dir())
        .env("CARGO_NET_OFFLINE", "true")
        .env("npm_config_offline", "true");
    // A cold Rust build compiles wit-bindgen (about a minute on 2 cores).
    let out = output_timeout(&mut cmd, Duration::from_secs(600));
    check_success(&cmd, &out);
}

/// One on-create of a default spec through `wasm` with `config`. The
/// compiled code goes to `cache` (the test's own: componentize-py and
/// componentize-qjs builds differ byte for byte every time, so the shared
/// cache would only grow).
fn decide(
    cache: &Path,
    name: &str,
    wasm: &Path,
    config: &[(&str, &str)],
) -> husk_plugins::Decision {
    let mut p = PluginConfig::new(name, wasm);
    // A generous limit: Python's first call in a fresh process is the slow one.
    p.time_limit = ms(2000);
    p.config = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    PluginHost::new(HostConfig::with_plugins(cache.to_path_buf(), vec![p]))
        .unwrap_or_else(|e| panic!("loading {}: {e}", wasm.display()))
        .on_create_spec("scaffold-1", &spec(|_| {}), &ContainerContext::default())
}

fn scaffold_build_and_load(lang: Lang) {
    let tmp = tempfile::Builder::new()
        .prefix("husk-scaffold-")
        .tempdir()
        .unwrap();
    let name = format!("new-{lang}-policy");
    let dir = tmp.path().join(&name);
    let report = scaffold(lang, &name, &dir).unwrap_or_else(|e| panic!("scaffold: {e}"));
    assert_eq!(report.output, dir.join(format!("{name}.wasm")));
    assert!(!report.output.exists());

    build(&dir);
    let cache = tmp.path().join("cache");
    assert!(
        report.output.is_file(),
        "build.sh made no {}",
        report.output.display()
    );

    // As generated: allows, and leaves the spec alone.
    let d = decide(&cache, &name, &report.output, &[]);
    assert_eq!(d.reports.len(), 1, "{:?}", d.reports);
    assert_eq!(d.reports[0].outcome, Outcome::Allowed, "{:?}", d.reports);
    assert_eq!(d.verdict(), Verdict::Allow);
    assert_eq!(d.spec.as_ref(), Some(&spec(|_| {})));

    // The deny example: runc's default spec sets TERM.
    let d = decide(&cache, &name, &report.output, &[("deny-env", "TERM")]);
    let denial = d
        .denial()
        .unwrap_or_else(|| panic!("not denied: {:?}", d.reports));
    assert_eq!(denial.plugin, name);
    assert_eq!(denial.reason, "environment variable TERM is not allowed");
    assert!(d.spec.is_none());
    // ... and only for a variable the container sets.
    let d = decide(&cache, &name, &report.output, &[("deny-env", "DEBUG")]);
    assert_eq!(d.verdict(), Verdict::Allow, "{:?}", d.reports);

    // The mutate example, split at the first '='.
    let d = decide(
        &cache,
        &name,
        &report.output,
        &[("add-annotation", "io.example.seen=a=b")],
    );
    let want = Edit::AddAnnotation(KeyValue {
        key: "io.example.seen".into(),
        value: "a=b".into(),
    });
    assert_eq!(d.verdict(), Verdict::Mutate(vec![want]), "{:?}", d.reports);
    let spec = d.spec.expect("a mutated spec");
    let annotations = spec.annotations().clone().unwrap_or_default();
    assert_eq!(
        annotations.get("io.example.seen").map(String::as_str),
        Some("a=b")
    );
}

#[test]
fn a_new_rust_plugin_builds_and_allows() {
    scaffold_build_and_load(Lang::Rust);
}

#[test]
fn a_new_python_plugin_builds_and_allows() {
    scaffold_build_and_load(Lang::Python);
}

#[test]
fn a_new_js_plugin_builds_and_allows() {
    scaffold_build_and_load(Lang::Js);
}

#[test]
fn a_new_c_plugin_builds_and_allows() {
    scaffold_build_and_load(Lang::C);
}
