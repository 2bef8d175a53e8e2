//! Start latency of husk's hardened shim against its native shim, side by
//! side in one run: `ctr run --rm` of /bin/true through containerd 1.6
//! (client, shim start, the hardening, create, start, wait, delete), then
//! `husk run --rm` of /bin/true through huskd. Target: hardened at most
//! 1.3x native.
//!
//! ```text
//! cargo build --release -p husk-shim -p husk-core
//! cargo bench -p husk-tests --bench hardened_start            # as root
//! BENCH_ITERS=50 cargo bench -p husk-tests --bench hardened_start
//! cargo bench -p husk-tests --bench hardened_start -- --table  # the escape table
//! ```
//!
//! `--table` runs every vector of the escape catalogue
//! (tests/tests/escape_common) on the hardened shim, the native shim and
//! Debian's runc, and prints vector x runtime.

#[path = "../tests/escape_common/mod.rs"]
mod escape;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use escape::{Env, HuskdEnv, Runner, Target};
use husk_tests::huskd::HuskdOptions;
use husk_tests::stats::{bench_rounds, Summary};
use husk_tests::unique_id;

const DEFAULT_ITERS: usize = 30;

fn main() -> ExitCode {
    let iters = match bench_rounds(
        "hardened_start",
        "it runs containerd, huskd and containers",
        DEFAULT_ITERS,
    ) {
        Ok(n) => n,
        Err(code) => return code,
    };
    if std::env::args().any(|a| a == "--table") {
        return table();
    }
    let ctd = Env::start();
    let huskd = HuskdEnv::start_with(HuskdOptions {
        debug: false,
        ..Default::default()
    });
    husk_tests::stats::print_load();
    compare("ctr run --rm of /bin/true", &ctd, iters);
    compare("husk run --rm of /bin/true (huskd)", &huskd, iters);
    husk_tests::stats::print_load();
    ExitCode::SUCCESS
}

/// Native and hardened round-robin through one runner; prints medians and
/// the ratio.
fn compare(what: &str, env: &dyn Runner, iters: usize) {
    let contenders = [Target::Native, Target::Hardened];
    for t in contenders {
        for _ in 0..2 {
            run_once(env, t);
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    for round in 0..iters {
        for k in 0..contenders.len() {
            let i = (round + k) % contenders.len();
            samples[i].push(run_once(env, contenders[i]));
        }
    }
    println!("{what}, {iters} runs each (ms)");
    println!("{:<14} {:>8} {:>8} {:>8}", "shim", "median", "p10", "p90");
    let s: Vec<Summary> = samples.iter().map(|v| Summary::of(v).unwrap()).collect();
    for (t, s) in contenders.iter().zip(&s) {
        println!(
            "{:<14} {:>8.1} {:>8.1} {:>8.1}",
            t.name(),
            s.median,
            s.p10,
            s.p90
        );
    }
    println!(
        "hardened / native: {:.2} (target <= 1.30)",
        s[1].median / s[0].median
    );
}

fn run_once(env: &dyn Runner, t: Target) -> Duration {
    let id = unique_id("bench-hard");
    let began = Instant::now();
    let out = env.run(t, &id, &[], &["/bin/true"]);
    let took = began.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        t.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn table() -> ExitCode {
    let env = Env::start();
    let mut rows = Vec::new();
    for (name, f) in escape::VECTORS {
        let results = Target::ALL
            .iter()
            .map(|t| (*t, f(&env, *t, &unique_id("husk-esc"))))
            .collect();
        rows.push((*name, results));
    }
    escape::print_table(&rows);
    ExitCode::SUCCESS
}
