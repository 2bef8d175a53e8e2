//! The cost of one policy decision per plugin language: a fresh instance of
//! the example policy plus one `on-create` call, against the same policy as
//! a native (libloading) plugin.
//!
//! ```text
//! scripts/build-plugins.sh
//! cargo bench -p husk-tests --bench plugin_call
//! BENCH_ITERS=5000 cargo bench -p husk-tests --bench plugin_call
//! BENCH_ONLY=python,js cargo bench -p husk-tests --bench plugin_call
//! ```
//!
//! Every contender is loaded (compiled ahead of time, through the cache)
//! first; then the contenders take turns, one call each per round, so drift
//! in the machine's load hits all alike. The interpreted guests (JavaScript,
//! Python) take their turns in a second set of rounds, after the others: a
//! Python call touches megabytes of memory and leaves the CPU caches cold,
//! and taking turns with it made the next call of a compiled plugin look
//! half again as slow as it is (rust: 33 µs median instead of 19). Timed is `PluginHost::verdict_of`:
//! instantiate from the `InstancePre` (pooling allocator), lower the
//! container view (with its ~3 KB spec JSON), call, lift the verdict, drop
//! the store. Then, once, the whole `on_create` of the Rust policy (which
//! also applies the edits to the spec and validates it). Every call must
//! return the expected verdict (the policy's two edits; `allow` for the
//! floor); anything else aborts.
//!
//! The native plugin is not a floor for the sandbox's cost: its C ABI
//! passes the view and the verdict as JSON, so it pays a serialization the
//! component plugins do not (they get the view lowered field by field).
//!
//! The floor is `wat-allow`: the smallest component (a bump allocator and a
//! hook that returns `allow`), so its time is what the host itself costs
//! per call — a fresh instance, the view lowered into it, the verdict
//! lifted, the slot reset — with next to no guest work. Targets (issue 5):
//! at most 30 µs median for Rust, C and WAT; at most 1 ms for Python.
//!
//! Then, in a separate pass (its clock reads are not in the figures above),
//! where each component plugin's time goes: instantiating, the call itself
//! (lowering the view, the guest, lifting the verdict) and dropping the store
//! (the pool's slots are reset to the pristine image there).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use husk_plugins::config::PluginConfig;
use husk_plugins::{view, CallPhases, ContainerContext, HostConfig, PluginHost, Verdict};
use husk_tests::stats::{count_from_env, percentile, print_load};

/// Label, file, and whether the policy's verdict (two edits) is expected
/// (else `allow`, for the floor).
const CONTENDERS: &[(&str, &str, bool)] = &[
    ("native (libloading)", "native-policy.so", true),
    ("floor: wat-allow", "wat-allow.wasm", false),
    ("wat", "wat-policy.wasm", true),
    ("rust", "rust-policy.wasm", true),
    ("c", "c-policy.wasm", true),
    ("js (componentize-qjs)", "js-policy.wasm", true),
    ("python (componentize-py)", "python-policy.wasm", true),
];

fn plugins_dir() -> PathBuf {
    std::env::var_os("HUSK_PLUGINS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/build")
        })
}

/// The issue's per-call target (median, µs) for a contender, if it has one.
fn target_us(name: &str) -> Option<f64> {
    match name {
        "wat" | "rust" | "c" => Some(30.0),
        "python" => Some(1000.0),
        _ => None,
    }
}

fn main() -> ExitCode {
    let iters = match count_from_env("BENCH_ITERS", 2000) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("plugin_call: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("plugin_call: {iters} calls per plugin");
    print_load();
    // BENCH_ONLY=python,js: only these contenders (by their short names:
    // native, floor, wat, rust, c, js, python).
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let dir = plugins_dir();
    let mut missing = Vec::new();
    let mut plugins = Vec::new();
    for (name, file, policy) in CONTENDERS {
        let path = dir.join(file);
        if !path.exists() {
            missing.push(format!("{name} ({})", path.display()));
            continue;
        }
        let short = if *policy {
            name.split(' ').next().unwrap()
        } else {
            "floor"
        };
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == short)) {
            continue;
        }
        let mut p = PluginConfig::new(short, path);
        p.config
            .insert("allowed-registries".into(), "docker.io,ghcr.io".into());
        // Generous for the first (cold) calls of interpreted guests.
        p.time_limit = Duration::from_secs(1);
        p.memory_limit_mib = 256;
        plugins.push((*name, p, *policy));
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("husk-plugin-cache");
    let rss_before = rss_kib();
    let started = Instant::now();
    let host = match PluginHost::new(HostConfig::with_plugins(
        &cache,
        plugins.iter().map(|(_, p, _)| p.clone()).collect(),
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
    let call = |name: &str, policy: bool| -> Duration {
        let t = Instant::now();
        let v = host.verdict_of(name, &view);
        let d = t.elapsed();
        match v {
            Some(Ok(Verdict::Mutate(e))) if policy && e.len() == 2 => d,
            Some(Ok(Verdict::Allow)) if !policy => d,
            other => panic!("{name}: unexpected verdict {other:?}"),
        }
    };
    let names: Vec<(String, bool)> = plugins
        .iter()
        .map(|(_, p, policy)| (p.name.clone(), *policy))
        .collect();
    for (n, policy) in &names {
        for _ in 0..20 {
            call(n, *policy);
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(iters); names.len()];
    let (compiled, interpreted): (Vec<usize>, Vec<usize>) =
        (0..names.len()).partition(|&i| !["js", "python"].contains(&names[i].0.as_str()));
    for group in [compiled, interpreted] {
        for round in 0..iters {
            for k in 0..group.len() {
                let i = group[(round + k) % group.len()];
                let (n, policy) = &names[i];
                samples[i].push(call(n, *policy).as_secs_f64() * 1e6);
            }
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            percentile(s, 50.0)
        })
        .collect();
    let at = |name: &str| {
        names
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| medians[i])
    };
    let (native, floor) = (at("native"), at("floor"));
    println!(
        "\none policy decision (fresh instance + on-create), {iters} calls each, microseconds:\n"
    );
    println!(
        "| {:<26} | {:>10} | {:>10} | {:>10} | {:>9} | {:>9} | {:>14} |",
        "plugin", "median µs", "p99 µs", "min µs", "÷ native", "÷ floor", "target"
    );
    println!(
        "| {:-<26} | {:->10} | {:->10} | {:->10} | {:->9} | {:->9} | {:->14} |",
        "", "", "", "", "", "", ""
    );
    let mut missed = Vec::new();
    for (i, (label, p, _)) in plugins.iter().enumerate() {
        let s = &samples[i];
        let ratio =
            |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.1}x", medians[i] / b));
        let target = match target_us(&p.name) {
            Some(t) if medians[i] <= t => format!("<= {t} ok"),
            Some(t) => {
                missed.push(format!("{label} {:.1} µs > {t} µs", medians[i]));
                format!("<= {t} MISSED")
            }
            None => "-".into(),
        };
        println!(
            "| {:<26} | {:>10.1} | {:>10.1} | {:>10.1} | {:>9} | {:>9} | {:>14} |",
            label,
            medians[i],
            percentile(s, 99.0),
            s[0],
            ratio(native),
            ratio(floor),
            target
        );
    }
    print_load();
    if !missed.is_empty() {
        println!("  over target: {}", missed.join("; "));
    }

    println!("\nwhere a component plugin's time goes, medians of {iters} calls, microseconds:\n");
    println!(
        "| {:<26} | {:>12} | {:>10} | {:>10} |",
        "plugin", "instantiate", "call", "drop"
    );
    println!("| {:-<26} | {:->12} | {:->10} | {:->10} |", "", "", "", "");
    for (label, p, policy) in &plugins {
        let mut phases: Vec<CallPhases> = Vec::with_capacity(iters);
        for _ in 0..iters {
            match host.verdict_timed(&p.name, &view) {
                Some((Ok(v), Some(ph))) => {
                    let expected = match v {
                        Verdict::Mutate(e) => *policy && e.len() == 2,
                        Verdict::Allow => !*policy,
                        _ => false,
                    };
                    assert!(expected, "{label}: unexpected verdict");
                    phases.push(ph);
                }
                Some((Ok(_), None)) => break, // native: no phases
                other => panic!("{label}: unexpected result {other:?}"),
            }
        }
        if phases.is_empty() {
            continue;
        }
        let med = |f: fn(&CallPhases) -> std::time::Duration| {
            let mut v: Vec<f64> = phases.iter().map(|p| f(p).as_secs_f64() * 1e6).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 50.0)
        };
        println!(
            "| {:<26} | {:>12.1} | {:>10.1} | {:>10.1} |",
            label,
            med(|p| p.instantiate),
            med(|p| p.call),
            med(|p| p.drop)
        );
    }

    // The whole create hook as the shim runs it: the view built from the
    // spec, the call, the edits applied to the spec and validated.
    if names.iter().any(|(n, _)| n == "rust") {
        let host = PluginHost::new(HostConfig::with_plugins(
            &cache,
            plugins
                .iter()
                .filter(|(_, p, _)| p.name == "rust")
                .map(|(_, p, _)| p.clone())
                .collect(),
        ))
        .expect("loading the rust policy");
        let mut s: Vec<f64> = (0..iters.min(2000))
            .map(|_| {
                let t = Instant::now();
                let d = host.on_create_spec("bench", &spec, &ctx);
                let el = t.elapsed().as_secs_f64() * 1e6;
                assert!(d.is_allowed() && d.spec.is_some());
                el
            })
            .collect();
        s.sort_by(f64::total_cmp);
        println!(
            "\nfull on_create_spec with the rust policy (view + call + apply 2 edits + validate): median {:.1} µs, p99 {:.1} µs",
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
