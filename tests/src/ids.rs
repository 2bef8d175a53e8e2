//! Unique names for containers and other host-visible objects.
//!
//! cargo-nextest runs every test in its own process, in parallel, so a name
//! must be unique across processes (pid), within a process (counter) and across
//! runs that reuse a pid (time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique id such as `husk-run-4242-0-k3x9q1`.
///
/// It always starts with `husk-` (a leading `husk-` in `prefix` is not
/// repeated), so cgroups, state dirs and mounts named after it are found by the
/// leak checks in [`crate::leaks`] and `scripts/test.sh`. It matches
/// `^[A-Za-z0-9_.-]+$` as long as `prefix` does, which every OCI runtime and
/// containerd accept as a container id, and it stays short (cgroup and socket
/// paths have length limits).
pub fn unique_id(prefix: &str) -> String {
    let prefix = prefix.strip_prefix("husk-").unwrap_or(prefix);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // 6 base-36 digits of the clock: enough to tell runs apart when a pid is reused.
    let t = base36((nanos / 1000) as u64 % 36u64.pow(6));
    let pid = std::process::id();
    if prefix.is_empty() {
        format!("husk-{pid}-{n}-{t}")
    } else {
        format!("husk-{prefix}-{pid}-{n}-{t}")
    }
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_valid() {
        let ids: Vec<String> = (0..1000).map(|_| unique_id("run")).collect();
        let set: HashSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len(), "duplicate ids");
        for id in &ids {
            assert!(id.starts_with("husk-run-"), "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
                "{id}"
            );
            assert!(id.len() < 40, "{id} is too long");
        }
    }

    #[test]
    fn husk_prefix_is_not_repeated() {
        assert!(unique_id("husk-x").starts_with("husk-x-"));
        assert!(!unique_id("husk-x").starts_with("husk-husk"));
        assert!(unique_id("").starts_with(&format!("husk-{}-", std::process::id())));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
