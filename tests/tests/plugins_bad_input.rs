//! Bad input gets an error that says what is wrong and what to do.

mod plugins_common;

use husk_plugins::{Error, HostConfig, PluginHost};
use plugins_common::*;

fn load_err(p: husk_plugins::PluginConfig) -> Error {
    PluginHost::new(HostConfig::with_plugins(cache_dir(), vec![p])).unwrap_err()
}

#[test]
fn a_missing_plugin_file() {
    let p = husk_plugins::PluginConfig::new("ghost", "/nonexistent/ghost.wasm");
    let e = load_err(p);
    assert!(matches!(e, Error::PluginMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/ghost.wasm"), "{e}");
}

#[test]
fn a_file_that_is_not_wasm() {
    let e = load_err(plugin("junk", "fixture-not-wasm.wasm"));
    assert!(matches!(e, Error::NotWasm { .. }), "{e:?}");
}

#[test]
fn a_core_module_instead_of_a_component() {
    let e = load_err(plugin("core", "fixture-core-module.wasm"));
    assert!(matches!(e, Error::CoreModule { .. }), "{e:?}");
    assert!(e.to_string().contains("wasm-tools component new"), "{e}");
}

#[test]
fn a_component_for_another_world() {
    let e = load_err(plugin("other", "fixture-other-world.wasm"));
    assert!(matches!(e, Error::WrongWorld { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("husk:plugin/policy-hooks@0.1.0") && msg.contains("run"),
        "{msg}"
    );
}

#[test]
fn a_component_for_an_incompatible_version() {
    let e = load_err(plugin("future", "fixture-wrong-version.wasm"));
    assert!(matches!(e, Error::IncompatibleVersion { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("husk:plugin/policy-hooks@0.2.0") && msg.contains("0.1.0"),
        "{msg}"
    );
}

#[test]
fn a_capability_asked_for_but_not_granted() {
    let e = load_err(plugin("recorder", "rust-lifecycle.wasm"));
    assert!(
        matches!(e, Error::NotGranted { grant: "store", .. }),
        "{e:?}"
    );
}

#[test]
fn a_hook_the_plugin_does_not_export() {
    let mut p = plugin("policy", "rust-policy.wasm");
    p.hooks = Some(vec![husk_plugins::config::Hook::Exit]);
    let e = load_err(p);
    assert!(
        matches!(e, Error::HookNotExported { hook: "exit", .. }),
        "{e:?}"
    );
}

#[test]
fn a_native_plugin_that_is_not_a_library() {
    let mut p = plugin("native", "wat-allow.wasm");
    p.kind = husk_plugins::config::Kind::Native;
    let e = load_err(p);
    assert!(matches!(e, Error::Native { .. }), "{e:?}");
}

#[test]
fn bad_config_files() {
    let dir = tempfile::Builder::new()
        .prefix("husk-plugin-test")
        .tempdir()
        .unwrap();
    let path = dir.path().join("plugins.toml");
    for (text, needle) in [
        ("[[plugin]]\nname='a'\n", "path"),
        (
            "[[plugin]]\nname='a'\npath='a.wasm'\nmemory-limit-mib=99999\n",
            "memory-limit-mib",
        ),
        (
            "[[plugin]]\nname='a'\npath='a.wasm'\non-error='retry'\n",
            "retry",
        ),
        (
            "[[plugin]]\nname='a'\npath='a.wasm'\n[[plugin]]\nname='a'\npath='b.wasm'\n",
            "twice",
        ),
        (
            "[[plugin]]\nname='a'\npath='a.wasm'\ngrants=['fs:relative']\n",
            "absolute",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = PluginHost::from_config_file(&path).unwrap_err();
        assert!(matches!(e, Error::ConfigInvalid { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
    let e = PluginHost::from_config_file(&dir.path().join("none.toml")).unwrap_err();
    assert!(matches!(e, Error::ConfigRead { .. }), "{e:?}");
}

#[test]
fn a_plugin_whose_start_never_finishes_fails_its_load_instead_of_hanging() {
    let mut p = plugin("spin", "wat-slow-start.wasm");
    p.time_limit = ms(20);
    let started = std::time::Instant::now();
    let e = load_err(p);
    assert!(matches!(e, Error::Instantiate { .. }), "{e:?}");
    assert!(e.to_string().contains("start-up"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn the_example_config_loads() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins/plugins.toml");
    plugin_file("python-policy.wasm");
    let mut config = HostConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // The shared test cache: compiling Python in a debug build takes minutes.
    config.cache_dir = cache_dir();
    let host = PluginHost::new(config).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = host
        .registry()
        .plugins
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    assert_eq!(names, ["recorder", "security", "security-audit"]);
}
