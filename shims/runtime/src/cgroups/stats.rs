//! Resource usage of a cgroup, the same shape on v1 and v2.
//!
//! Every figure is `None` when the kernel does not provide it (controller not
//! mounted/enabled, file missing on this kernel): asking for stats never fails
//! because a file is absent. Limits are `None` when unlimited.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{fs, CgroupError};

/// Usage counters of one cgroup (including its sub-cgroups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    pub pids: PidsStats,
    /// Processes killed by the OOM killer in this cgroup (v1
    /// `memory.oom_control` "oom_kill", Linux 4.13+; v2 `memory.events`
    /// "oom_kill"). 0 when unknown.
    pub oom_kills: u64,
    /// Times the cgroup hit its memory limit and the OOM path ran (v2
    /// `memory.events` "oom"). v1 has no such counter: `None`.
    pub oom_events: Option<u64>,
}

/// Memory figures in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Current usage (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: Option<u64>,
    /// Peak usage (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`, Linux 5.19+).
    pub max_usage: Option<u64>,
    /// Memory limit; `None` when unlimited.
    pub limit: Option<u64>,
    /// Swap in use, swap only (v1: memsw usage minus memory usage; v2
    /// `memory.swap.current`).
    pub swap_usage: Option<u64>,
    /// Swap allowed, swap only (v1: memsw limit minus memory limit; v2
    /// `memory.swap.max`); `None` when unlimited. Note OCI's
    /// `linux.resources.memory.swap` is memory+swap, i.e. `limit + swap_limit`.
    pub swap_limit: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file` in memory.stat).
    pub cache: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon` in memory.stat).
    pub rss: Option<u64>,
}

/// CPU time in nanoseconds and CFS bandwidth throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage_ns: Option<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    /// Enforcement periods elapsed (`nr_periods`).
    pub periods: Option<u64>,
    /// Periods in which the cgroup was throttled (`nr_throttled`).
    pub throttled_periods: Option<u64>,
    /// Total time throttled.
    pub throttled_ns: Option<u64>,
}

/// Process counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: Option<u64>,
    /// `None` when unlimited.
    pub limit: Option<u64>,
}

/// Values at or above this are "unlimited" in v1 (the kernel shows
/// PAGE_COUNTER_MAX * page size, e.g. 9223372036854771712).
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_0000;

/// A file holding one number (or "max"). `Ok(None)` if missing or "max".
pub(crate) fn read_u64(path: &Path) -> Result<Option<u64>, CgroupError> {
    let Some(text) = fs::read_opt(path)? else {
        return Ok(None);
    };
    parse_u64(path, text.trim())
}

/// Like [`read_u64`], but v1 "unlimited" values also give `None`.
pub(crate) fn read_limit_u64(path: &Path) -> Result<Option<u64>, CgroupError> {
    Ok(read_u64(path)?.filter(|&v| v < V1_UNLIMITED))
}

fn parse_u64(path: &Path, s: &str) -> Result<Option<u64>, CgroupError> {
    if s == "max" || s.is_empty() {
        return Ok(None);
    }
    // v1 memory.soft_limit etc. may read -1 on some kernels.
    if s == "-1" {
        return Ok(None);
    }
    s.parse::<u64>().map(Some).map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: s.to_string(),
        expected: "an unsigned integer or \"max\"",
    })
}

/// A flat keyed file ("key value" per line, e.g. memory.stat, cpu.stat,
/// memory.events, memory.oom_control). Missing file => empty list; lines
/// that are not "key <u64>" are skipped.
pub(crate) fn read_keyed(path: &Path) -> Result<Vec<(String, u64)>, CgroupError> {
    let Some(text) = fs::read_opt(path)? else {
        return Ok(Vec::new());
    };
    Ok(parse_keyed(&text))
}

pub(crate) fn parse_keyed(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse::<u64>().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Value of `key` in a keyed list.
pub(crate) fn get(kv: &[(String, u64)], key: &str) -> Option<u64> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_numbers() {
        let kv = parse_keyed("usage_usec 100\nuser_usec 60\nbad\nx y\n");
        assert_eq!(get(&kv, "usage_usec"), Some(100));
        assert_eq!(get(&kv, "user_usec"), Some(60));
        assert_eq!(get(&kv, "x"), None);
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, "max\n").unwrap();
        assert_eq!(read_u64(&p).unwrap(), None);
        std::fs::write(&p, "9223372036854771712\n").unwrap();
        assert_eq!(read_u64(&p).unwrap(), Some(9223372036854771712));
        assert_eq!(read_limit_u64(&p).unwrap(), None);
        std::fs::write(&p, "42\n").unwrap();
        assert_eq!(read_limit_u64(&p).unwrap(), Some(42));
        std::fs::write(&p, "forty\n").unwrap();
        assert!(read_u64(&p).is_err());
        assert_eq!(read_u64(&t.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn serializes_as_json() {
        let s = Stats {
            oom_kills: 2,
            ..Default::default()
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["oom_kills"], 2);
        assert!(j["memory"]["usage"].is_null());
        let back: Stats = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
    }
}
