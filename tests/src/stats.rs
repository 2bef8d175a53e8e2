//! Summaries of timing samples for the benchmarks.

use std::time::Duration;

/// Median and spread of a set of samples, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples`; `None` if there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        Some(Summary {
            n: ms.len(),
            min: ms[0],
            p10: percentile(&ms, 10.0),
            median: percentile(&ms, 50.0),
            p90: percentile(&ms, 90.0),
            max: ms[ms.len() - 1],
        })
    }
}

/// A count from environment variable `var` (`BENCH_ITERS=50`), or
/// `default` when it is unset; an error naming the variable if it is not a
/// positive integer.
pub fn count_from_env(var: &str, default: usize) -> Result<usize, String> {
    match std::env::var(var) {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{var} must be a positive integer, got {v:?}")),
        },
        Err(_) => Ok(default),
    }
}

/// The start of a root benchmark's `main`: `Ok(rounds)` from
/// `BENCH_ITERS` (else `default`), or the exit code when it should not
/// run: started without `--bench` (as `cargo test --benches` does: a
/// success), not root (`why` says what needs it), or a bad count.
pub fn bench_rounds(
    name: &str,
    why_root: &str,
    default: usize,
) -> Result<usize, std::process::ExitCode> {
    use std::process::ExitCode;
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "{name}: not started with --bench; run `cargo bench -p husk-tests --bench {name}`"
        );
        return Err(ExitCode::SUCCESS);
    }
    if !crate::is_root() {
        eprintln!("{name}: needs root ({why_root})");
        return Err(ExitCode::FAILURE);
    }
    count_from_env("BENCH_ITERS", default).map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::FAILURE
    })
}

/// Prints the load average: numbers taken on a busy machine are not
/// comparable with quiet ones (the ratios, taken round-robin, hold up
/// better).
pub fn print_load() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one: f64 = load
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = if one > cpus as f64 * 0.5 {
        " (busy machine: expect noise; compare ratios, not absolute times)"
    } else {
        ""
    };
    println!(
        "  load average {} on {cpus} CPUs{busy}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The `p`th percentile (0..=100) of sorted, non-empty `sorted`, linearly
/// interpolated between the two nearest ranks (numpy's default method).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_interpolate() {
        let s = Summary::of(&ms(&[10, 1, 2, 3, 4, 5, 6, 7, 8, 9])).unwrap();
        assert_eq!(s.n, 10);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
        assert!((s.median - 5.5).abs() < 1e-9, "{s:?}");
        assert!((s.p10 - 1.9).abs() < 1e-9, "{s:?}");
        assert!((s.p90 - 9.1).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn odd_count_median_is_middle() {
        let s = Summary::of(&ms(&[3, 1, 2])).unwrap();
        assert_eq!(s.median, 2.0);
    }

    #[test]
    fn counts_from_env() {
        let var = "HUSK_TESTS_STATS_COUNT_UNSET_VAR";
        assert_eq!(count_from_env(var, 7), Ok(7));
    }

    #[test]
    fn single_and_empty() {
        let s = Summary::of(&ms(&[7])).unwrap();
        assert_eq!((s.p10, s.median, s.p90), (7.0, 7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }
}
