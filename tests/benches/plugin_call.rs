//! The cost of one policy decision per plugin language: a fresh instance of
//! the example policy plus one `on-create` call, against the same policy as
//! a native (libloading) plugin.
//!
//! ```text
//! scripts/build-plugins.sh
//! cargo bench -p husk-tests --bench plugin_call
//! BENCH_ITERS=5000 cargo bench -p husk-tests --bench plugin_call
//! ```
//!
//! Every contender is loaded (compiled ahead of time, through the cache)
//! first; then the contenders take turns, one call each per round, so drift
//! in the machine's load hits all alike. Timed is `PluginHost::verdict_of`:
//! instantiate from the `InstancePre` (pooling allocator), lower the
//! container view (with its ~3 KB spec JSON), call, lift the verdict, drop
//! the store. Then, once, the whole `on_create` of the Rust policy (which
//! also applies the edits to the spec and validates it). Every call must
//! return the expected mutation; anything else aborts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use husk_plugins::config::PluginConfig;
use husk_plugins::{view, ContainerContext, HostConfig, PluginHost, Verdict};
use husk_tests::stats::percentile;

const CONTENDERS: &[(&str, &str)] = &[
    ("native (libloading)", "native-policy.so"),
    ("wat", "wat-policy.wasm"),
    ("rust", "rust-policy.wasm"),
    ("c", "c-policy.wasm"),
    ("js (componentize-qjs)", "js-policy.wasm"),
    ("python (componentize-py)", "python-policy.wasm"),
];

fn plugins_dir() -> PathBuf {
    std::env::var_os("HUSK_PLUGINS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/build")
        })
}

fn main() -> ExitCode {
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = plugins_dir();
    let mut missing = Vec::new();
    let mut plugins = Vec::new();
    for (name, file) in CONTENDERS {
        let path = dir.join(file);
        if !path.exists() {
            missing.push(format!("{name} ({})", path.display()));
            continue;
        }
        let mut p = PluginConfig::new(name.split(' ').next().unwrap(), path);
        p.config
            .insert("allowed-registries".into(), "docker.io,ghcr.io".into());
        // Generous for the first (cold) calls of interpreted guests.
        p.time_limit = Duration::from_secs(1);
        p.memory_limit_mib = 256;
        plugins.push((*name, p));
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("husk-plugin-cache");
    let rss_before = rss_kib();
    let started = Instant::now();
    let host = match PluginHost::new(HostConfig::with_plugins(
        &cache,
        plugins.iter().map(|(_, p)| p.clone()).collect(),
    )) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("plugin_call: cannot load the plugins: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "loaded {} plugins in {:.1} ms (compiled ahead of time; cache {})",
        plugins.len(),
        started.elapsed().as_secs_f64() * 1e3,
        cache.display()
    );
    println!(
        "process RSS: {} KiB before loading, {} KiB with them loaded (the shim's cost of its plugins)",
        rss_before,
        rss_kib()
    );

    let spec = husk_runtime::spec::default_spec(false);
    let ctx = ContainerContext {
        image_ref: "docker.io/library/busybox:1.36".into(),
        ..Default::default()
    };
    let view = view::from_spec("bench", &spec, &ctx);
    let call = |name: &str| -> Duration {
        let t = Instant::now();
        let v = host.verdict_of(name, &view);
        let d = t.elapsed();
        match v {
            Some(Ok(Verdict::Mutate(e))) if e.len() == 2 => d,
            other => panic!("{name}: unexpected verdict {other:?}"),
        }
    };
    let names: Vec<String> = plugins.iter().map(|(_, p)| p.name.clone()).collect();
    for n in &names {
        for _ in 0..20 {
            call(n);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(iters); names.len()];
    for round in 0..iters {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            samples[i].push(call(&names[i]).as_secs_f64() * 1e6);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            percentile(s, 50.0)
        })
        .collect();
    let native = names.iter().position(|n| n == "native").map(|i| medians[i]);
    println!(
        "\none policy decision (fresh instance + on-create), {iters} calls each, microseconds:\n"
    );
    println!(
        "| {:<26} | {:>10} | {:>10} | {:>10} | {:>12} |",
        "plugin", "median µs", "p99 µs", "min µs", "÷ native"
    );
    println!(
        "| {:-<26} | {:->10} | {:->10} | {:->10} | {:->12} |",
        "", "", "", "", ""
    );
    for (i, (label, _)) in plugins.iter().enumerate() {
        let s = &samples[i];
        println!(
            "| {:<26} | {:>10.1} | {:>10.1} | {:>10.1} | {:>12} |",
            label,
            medians[i],
            percentile(s, 99.0),
            s[0],
            native.map_or("-".into(), |n| format!("{:.1}x", medians[i] / n))
        );
    }

    // The whole create hook: call + apply the edits + validate the spec.
    if names.iter().any(|n| n == "rust") {
        let host = PluginHost::new(HostConfig::with_plugins(
            &cache,
            plugins
                .iter()
                .filter(|(_, p)| p.name == "rust")
                .map(|(_, p)| p.clone())
                .collect(),
        ))
        .expect("loading the rust policy");
        let mut s: Vec<f64> = (0..iters.min(2000))
            .map(|_| {
                let t = Instant::now();
                let d = host.on_create(&view);
                let el = t.elapsed().as_secs_f64() * 1e6;
                assert!(d.is_allowed() && d.spec.is_some());
                el
            })
            .collect();
        s.sort_by(f64::total_cmp);
        println!(
            "\nfull on_create with the rust policy (call + apply 2 edits + validate): median {:.1} µs, p99 {:.1} µs",
            percentile(&s, 50.0),
            percentile(&s, 99.0)
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "\nnot measured (run scripts/build-plugins.sh): {}",
            missing.join(", ")
        );
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// This process's resident set size, from /proc/self/status.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
