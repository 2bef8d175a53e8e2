//! Hot reload: a new policy takes over on SIGHUP or when the config file
//! changes, with no host restart, and hooks in flight finish on the plugins
//! they started with.

mod plugins_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_plugins::reload::{watch, WatchOptions};
use husk_plugins::{ContainerContext, HookFailure, Outcome, PluginHost};
use plugins_common::*;

fn write_config(path: &Path, plugin_file_name: &str, extra: &str) {
    let text = format!(
        "cache-dir = {:?}\n[[plugin]]\nname = \"policy\"\npath = {:?}\n{extra}\n",
        cache_dir(),
        plugin_file(plugin_file_name)
    );
    // Atomic replace, as an operator's tooling would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn privileged() -> oci_spec::runtime::Spec {
    spec(|v| add_cap(v, "bounding", "CAP_SYS_ADMIN"))
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_config_change_swaps_the_policy_without_a_restart() {
    let dir = tempfile::Builder::new()
        .prefix("husk-plugin-test")
        .tempdir()
        .unwrap();
    let cfg = dir.path().join("plugins.toml");
    write_config(&cfg, "wat-allow.wasm", "");
    let host = Arc::new(PluginHost::from_config_file(&cfg).unwrap());
    let _watcher = watch(
        &host,
        WatchOptions {
            sighup: false,
            poll: Some(Duration::from_millis(50)),
        },
    )
    .unwrap();
    let ctx = ContainerContext::default();
    assert!(host.on_create_spec("c1", &privileged(), &ctx).is_allowed());

    // Compile the new policy into the shared cache first, as `husk plugin
    // install` does: what is timed below is the reload, not a cold
    // Cranelift compile of a debug build on a loaded machine.
    drop(plugins_common::host(vec![plugin(
        "policy",
        "rust-policy.wasm",
    )]));
    write_config(&cfg, "rust-policy.wasm", "");
    wait_for("the new policy", || {
        !host.on_create_spec("c1", &privileged(), &ctx).is_allowed()
    });
    let d = host.on_create_spec("c1", &privileged(), &ctx);
    assert_eq!(
        d.denial().unwrap().reason,
        "privileged container: CAP_SYS_ADMIN"
    );

    // A broken config keeps the current plugins.
    std::fs::write(&cfg, "[[plugin]]\nname = 'x'\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!host.on_create_spec("c1", &privileged(), &ctx).is_allowed());
}

#[test]
fn sighup_reloads_and_in_flight_hooks_finish_on_the_old_plugins() {
    let dir = tempfile::Builder::new()
        .prefix("husk-plugin-test")
        .tempdir()
        .unwrap();
    let cfg = dir.path().join("plugins.toml");
    // The old plugin loops until its 400 ms limit, then fails open.
    write_config(
        &cfg,
        "wat-loop.wasm",
        "time-limit-ms = 400\non-error = \"allow\"",
    );
    let host = Arc::new(PluginHost::from_config_file(&cfg).unwrap());
    let _watcher = watch(
        &host,
        WatchOptions {
            sighup: true,
            poll: None,
        },
    )
    .unwrap();

    let in_flight = {
        let host = host.clone();
        std::thread::spawn(move || {
            host.on_create_spec("slow", &privileged(), &ContainerContext::default())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    write_config(&cfg, "rust-policy.wasm", "");
    // SAFETY: raising a signal in our own process; the watcher has
    // registered a SIGHUP handler (signal_hook), so it is not fatal.
    assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
    wait_for("the reload", || {
        host.registry().plugins[0]
            .config()
            .path
            .ends_with("rust-policy.wasm")
    });

    // The call that started before the reload finished on the old plugin.
    let old = in_flight.join().unwrap();
    assert!(old.is_allowed());
    assert!(matches!(
        old.reports[0].outcome,
        Outcome::FailedOpen(HookFailure::Timeout(_))
    ));
    // New calls get the new one.
    let d = host.on_create_spec("c2", &privileged(), &ContainerContext::default());
    assert_eq!(d.denial().unwrap().plugin, "policy");
}
