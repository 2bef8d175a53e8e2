//! The runtime library's cgroup stats in containerd's metrics types:
//! `io.containerd.cgroups.v1.Metrics` on v1 and hybrid hosts,
//! `io.containerd.cgroups.v2.Metrics` on unified ones.

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use husk_runtime::cgroups::Stats;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::error::{Result, ShimError};

pub const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

pub fn to_any(stats: &Stats, unified: bool) -> Result<Any> {
    let (type_url, value) = if unified {
        (V2_TYPE_URL, to_v2(stats).write_to_bytes())
    } else {
        (V1_TYPE_URL, to_v1(stats).write_to_bytes())
    };
    let value = value.map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
    let mut any = Any::new();
    any.type_url = type_url.into();
    any.value = value;
    Ok(any)
}

pub fn to_v1(s: &Stats) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    let mut pids = v1::PidsStat::new();
    pids.current = s.pids.current.unwrap_or(0);
    pids.limit = s.pids.limit.unwrap_or(0);
    m.pids = Some(pids).into();
    let mut usage = v1::CPUUsage::new();
    usage.total = s.cpu.usage_ns.unwrap_or(0);
    usage.user = s.cpu.user_ns.unwrap_or(0);
    usage.kernel = s.cpu.system_ns.unwrap_or(0);
    let mut thr = v1::Throttle::new();
    thr.periods = s.cpu.periods.unwrap_or(0);
    thr.throttled_periods = s.cpu.throttled_periods.unwrap_or(0);
    thr.throttled_time = s.cpu.throttled_ns.unwrap_or(0);
    let mut cpu = v1::CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(thr).into();
    m.cpu = Some(cpu).into();
    let mut mem = v1::MemoryStat::new();
    mem.cache = s.memory.cache.unwrap_or(0);
    mem.rss = s.memory.rss.unwrap_or(0);
    mem.total_cache = mem.cache;
    mem.total_rss = mem.rss;
    let mut u = v1::MemoryEntry::new();
    u.usage = s.memory.usage.unwrap_or(0);
    u.max = s.memory.max_usage.unwrap_or(0);
    u.limit = s.memory.limit.unwrap_or(u64::MAX);
    mem.usage = Some(u).into();
    let mut swap = v1::MemoryEntry::new();
    swap.usage = s.memory.swap_usage.unwrap_or(0);
    swap.limit = s.memory.swap_limit.unwrap_or(u64::MAX);
    mem.swap = Some(swap).into();
    m.memory = Some(mem).into();
    let mut oom = v1::MemoryOomControl::new();
    oom.oom_kill = s.oom_kills;
    m.memory_oom_control = Some(oom).into();
    m
}

pub fn to_v2(s: &Stats) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = s.pids.current.unwrap_or(0);
    pids.limit = s.pids.limit.unwrap_or(0);
    m.pids = Some(pids).into();
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage_ns.unwrap_or(0) / 1000;
    cpu.user_usec = s.cpu.user_ns.unwrap_or(0) / 1000;
    cpu.system_usec = s.cpu.system_ns.unwrap_or(0) / 1000;
    cpu.nr_periods = s.cpu.periods.unwrap_or(0);
    cpu.nr_throttled = s.cpu.throttled_periods.unwrap_or(0);
    cpu.throttled_usec = s.cpu.throttled_ns.unwrap_or(0) / 1000;
    m.cpu = Some(cpu).into();
    let mut mem = v2::MemoryStat::new();
    mem.usage = s.memory.usage.unwrap_or(0);
    mem.usage_limit = s.memory.limit.unwrap_or(u64::MAX);
    mem.max_usage = s.memory.max_usage.unwrap_or(0);
    mem.swap_usage = s.memory.swap_usage.unwrap_or(0);
    mem.swap_limit = s.memory.swap_limit.unwrap_or(u64::MAX);
    mem.anon = s.memory.rss.unwrap_or(0);
    mem.file = s.memory.cache.unwrap_or(0);
    m.memory = Some(mem).into();
    let mut ev = v2::MemoryEvents::new();
    ev.oom_kill = s.oom_kills;
    ev.oom = s.oom_events.unwrap_or(0);
    m.memory_events = Some(ev).into();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_carry_the_figures() {
        let mut s = Stats::default();
        s.memory.usage = Some(4096);
        s.cpu.usage_ns = Some(5_000_000);
        s.pids.current = Some(3);
        s.oom_kills = 1;
        let a = to_any(&s, false).unwrap();
        assert_eq!(a.type_url, V1_TYPE_URL);
        let m = v1::Metrics::parse_from_bytes(&a.value).unwrap();
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
        let b = to_any(&s, true).unwrap();
        assert_eq!(b.type_url, V2_TYPE_URL);
        let m = v2::Metrics::parse_from_bytes(&b.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.memory_events.oom_kill, 1);
    }
}
