//! Host uid/gid ranges for user namespaces: one range per container or
//! per pod, never shared between them, recorded on disk so every shim on
//! the host sees the others'.
//!
//! Range `i` is `base + i * size .. base + (i + 1) * size`. A range
//! belongs to a *group*: a lone container's group is its own id; a pod's
//! group is its sandbox's id, and the pod's containers *join* it, sharing
//! the sandbox's user namespace and range (as Kubernetes user-namespaced
//! pods do: a pod's pid, IPC and network namespaces belong to the
//! sandbox's user namespace, so its containers must live there too). The
//! range is free again when its last member is released, whichever that
//! is.
//!
//! The record is `allocations.json` in the state dir, changed under an
//! exclusive `flock` on `lock` and replaced atomically (write, rename), so
//! a crash of a shim leaves the old or the new record, never half of one.
//! No fsync: the record lives in /run and means nothing after a host crash
//! (its containers are gone too), and two fsyncs per create and delete
//! were a visible part of the hardened start latency. A member whose
//! bundle directory is gone (the container was removed without a release,
//! e.g. its shim was killed) is dropped by the next allocation or join,
//! and a group without members frees its range.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, Error, Result, UserNamespace};

const RECORD: &str = "allocations.json";
const LOCK: &str = "lock";

/// A host id range: container id 0 maps to `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub start: u32,
    pub size: u32,
}

impl IdRange {
    /// The range process `pid`'s user namespace maps, if its uid_map and
    /// gid_map are both the single line `0 START SIZE` (what a hardened
    /// container's are; the host's reads as `0 0 4294967295`, which is
    /// never one of ours); `None` for anything else.
    pub fn of_process(pid: i32) -> Option<IdRange> {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
        let uids = IdRange::parse_map(&read("uid_map")?)?;
        (IdRange::parse_map(&read("gid_map")?)? == uids).then_some(uids)
    }

    /// `0 START SIZE` (the text of a uid_map or gid_map) as a range.
    pub fn parse_map(text: &str) -> Option<IdRange> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let fields: Vec<u32> = lines
            .next()?
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        match (fields.as_slice(), lines.next()) {
            ([0, start, size], None) => Some(IdRange {
                start: *start,
                size: *size,
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    index: u32,
    /// Container id → its bundle (empty if unknown: never reclaimed).
    #[serde(default)]
    members: BTreeMap<String, PathBuf>,
    /// Records written before pods: the group's only member's bundle.
    #[serde(default, skip_serializing)]
    bundle: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// group (the first member's container id) → range and members.
    ranges: BTreeMap<String, Entry>,
}

impl Record {
    /// The group `owner` is a member of.
    fn group_of(&self, owner: &str) -> Option<(&String, &Entry)> {
        self.ranges
            .iter()
            .find(|(_, e)| e.members.contains_key(owner))
    }

    /// Drops members whose bundle is gone (except one at `keep`), then
    /// groups left without members.
    fn reclaim(&mut self, keep: &Path) {
        for e in self.ranges.values_mut() {
            e.members.retain(|_, bundle| {
                bundle.as_os_str().is_empty() || bundle.exists() || bundle == keep
            });
        }
        self.ranges.retain(|_, e| !e.members.is_empty());
    }
}

#[derive(Debug, Clone)]
pub struct IdAllocator {
    dir: PathBuf,
    base: u32,
    size: u32,
    count: u32,
}

impl IdAllocator {
    pub fn new(dir: impl Into<PathBuf>, base: u32, size: u32, count: u32) -> IdAllocator {
        IdAllocator {
            dir: dir.into(),
            base,
            size,
            count,
        }
    }

    pub fn from_profile(u: &UserNamespace) -> IdAllocator {
        IdAllocator::new(&u.state_dir, u.base, u.size, u.count)
    }

    fn range(&self, index: u32) -> IdRange {
        IdRange {
            start: self.base + index * self.size,
            size: self.size,
        }
    }

    /// A range of its own for `owner` (a container id), the lowest free
    /// one, in a new group named `owner`. Asking again for the same owner
    /// and bundle returns the same range; the same owner with another live
    /// bundle is refused.
    pub fn allocate(&self, owner: &str, bundle: &Path) -> Result<IdRange> {
        if owner.is_empty() {
            return Err(Error::Ids("an allocation needs an owner".into()));
        }
        self.locked(|record| {
            record.reclaim(bundle);
            if let Some(range) = self.existing(record, owner, bundle)? {
                return Ok(range);
            }
            if let Some(e) = record.ranges.get(owner) {
                return Err(Error::Ids(format!(
                    "the uid range named {owner:?} is still held by {:?}; delete those containers first",
                    e.members.keys().collect::<Vec<_>>()
                )));
            }
            let used: std::collections::HashSet<u32> =
                record.ranges.values().map(|e| e.index).collect();
            let index = (0..self.count).find(|i| !used.contains(i)).ok_or_else(|| {
                Error::Ids(format!(
                    "all {} ranges of {} ids from {} are in use (state in {}); delete containers or raise user_namespace.count",
                    self.count,
                    self.size,
                    self.base,
                    self.dir.display()
                ))
            })?;
            record.ranges.insert(
                owner.to_string(),
                Entry {
                    index,
                    members: BTreeMap::from([(owner.to_string(), bundle.to_path_buf())]),
                    bundle: PathBuf::new(),
                },
            );
            Ok(self.range(index))
        })
    }

    /// Makes `owner` a member of `group` (a pod's sandbox) and returns the
    /// group's range, which `owner` now shares. Idempotent like
    /// [`IdAllocator::allocate`]; refused if `group` holds no range or
    /// `owner` holds another one.
    pub fn join(&self, group: &str, owner: &str, bundle: &Path) -> Result<IdRange> {
        if owner.is_empty() || group.is_empty() {
            return Err(Error::Ids(
                "joining a uid range needs a group and an owner".into(),
            ));
        }
        self.locked(|record| {
            record.reclaim(bundle);
            if let Some(range) = self.existing(record, owner, bundle)? {
                if record.group_of(owner).is_some_and(|(g, _)| g == group) {
                    return Ok(range);
                }
                return Err(Error::Ids(format!(
                    "container {owner:?} already holds a uid range of its own; it cannot join {group:?}'s"
                )));
            }
            let entry = record.ranges.get_mut(group).ok_or_else(|| {
                Error::Ids(format!(
                    "{group:?} holds no uid range (it is not a hardened container, or it was deleted); \
                     start the pod's sandbox under the hardened runtime before its containers"
                ))
            })?;
            entry
                .members
                .insert(owner.to_string(), bundle.to_path_buf());
            Ok(self.range(entry.index))
        })
    }

    /// The range `owner` already holds for `bundle`, if any; an error if
    /// it holds one for another live bundle.
    fn existing(&self, record: &Record, owner: &str, bundle: &Path) -> Result<Option<IdRange>> {
        let Some((_, e)) = record.group_of(owner) else {
            return Ok(None);
        };
        let held = &e.members[owner];
        if held == bundle || held.as_os_str().is_empty() {
            return Ok(Some(self.range(e.index)));
        }
        Err(Error::Ids(format!(
            "container {owner:?} already holds a uid range for bundle {}; delete that container first",
            held.display()
        )))
    }

    /// Ends `owner`'s membership; its group's range is freed with its last
    /// member. Returns whether it had one.
    pub fn release(&self, owner: &str) -> Result<bool> {
        if !self.dir.join(RECORD).exists() {
            return Ok(false);
        }
        self.locked(|record| {
            let mut found = false;
            for e in record.ranges.values_mut() {
                found |= e.members.remove(owner).is_some();
            }
            record.ranges.retain(|_, e| !e.members.is_empty());
            Ok(found)
        })
    }

    /// Every range in use, by group.
    pub fn allocations(&self) -> Result<BTreeMap<String, IdRange>> {
        let record = self.read()?;
        Ok(record
            .ranges
            .into_iter()
            .map(|(k, e)| (k, self.range(e.index)))
            .collect())
    }

    /// The members of `group` (empty if it holds no range).
    pub fn members(&self, group: &str) -> Result<Vec<String>> {
        let record = self.read()?;
        Ok(record
            .ranges
            .get(group)
            .map(|e| e.members.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// The group whose range is `range`, if it is one of ours.
    pub fn group_of_range(&self, range: IdRange) -> Result<Option<String>> {
        let record = self.read()?;
        Ok(record
            .ranges
            .into_iter()
            .find(|(_, e)| self.range(e.index) == range)
            .map(|(g, _)| g))
    }

    fn read(&self) -> Result<Record> {
        let path = self.dir.join(RECORD);
        let mut record: Record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Ids(format!(
                    "{} is corrupt ({e}); remove it only when no hardened container is running",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        // A record from before pods: each group is its one owner.
        for (group, e) in record.ranges.iter_mut() {
            if e.members.is_empty() {
                e.members
                    .insert(group.clone(), std::mem::take(&mut e.bundle));
            }
        }
        Ok(record)
    }

    /// Runs `f` on the record under the lock, and saves what it leaves.
    fn locked<T>(&self, f: impl FnOnce(&mut Record) -> Result<T>) -> Result<T> {
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("create {}", self.dir.display())))?;
        let lock_path = self.dir.join(LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("open {}", lock_path.display())))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(format!("lock {}", lock_path.display()))(e.into()))?;
        let mut record = self.read()?;
        let out = f(&mut record)?;
        self.write(&record)?;
        Ok(out)
    }

    fn write(&self, record: &Record) -> Result<()> {
        let path = self.dir.join(RECORD);
        let tmp = self.dir.join(format!(".{RECORD}.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(record).expect("the record serializes");
        std::fs::write(&tmp, &bytes).map_err(io_err(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("replace {}", path.display())))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(dir: &Path) -> IdAllocator {
        IdAllocator::new(dir, 100_000, 65536, 3)
    }

    #[test]
    fn ranges_do_not_overlap_and_are_reused_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        let a = alloc(&dir.path().join("state"));
        let r1 = a.allocate("one", bundle).unwrap();
        let r2 = a.allocate("two", bundle).unwrap();
        assert_eq!(
            r1,
            IdRange {
                start: 100_000,
                size: 65536
            }
        );
        assert_eq!(r2.start, 100_000 + 65536);
        // Idempotent for the same owner.
        assert_eq!(a.allocate("one", bundle).unwrap(), r1);
        let r3 = a.allocate("three", bundle).unwrap();
        let err = a.allocate("four", bundle).unwrap_err().to_string();
        assert!(err.contains("in use") && err.contains("count"), "{err}");
        assert!(a.release("two").unwrap());
        assert!(!a.release("two").unwrap());
        assert_eq!(a.allocate("four", bundle).unwrap(), r2);
        let all = a.allocations().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all["three"], r3);
        // Another allocator over the same dir (another shim) sees it all.
        assert_eq!(alloc(&dir.path().join("state")).allocations().unwrap(), all);
    }

    #[test]
    fn the_same_id_for_another_live_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (b1, b2) = (dir.path().join("b1"), dir.path().join("b2"));
        std::fs::create_dir_all(&b1).unwrap();
        std::fs::create_dir_all(&b2).unwrap();
        let a = alloc(&dir.path().join("state"));
        a.allocate("c", &b1).unwrap();
        let err = a.allocate("c", &b2).unwrap_err().to_string();
        assert!(err.contains("already holds"), "{err}");
    }

    #[test]
    fn entries_of_removed_bundles_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(&dir.path().join("state"));
        for i in 0..3 {
            let b = dir.path().join(format!("b{i}"));
            std::fs::create_dir_all(&b).unwrap();
            a.allocate(&format!("c{i}"), &b).unwrap();
        }
        std::fs::remove_dir(dir.path().join("b1")).unwrap();
        let b = dir.path().join("new");
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(a.allocate("new", &b).unwrap().start, 100_000 + 65536);
        assert!(!a.allocations().unwrap().contains_key("c1"));
    }

    #[test]
    fn concurrent_allocations_never_share_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let bundle = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (state, bundle) = (state.clone(), bundle.clone());
                std::thread::spawn(move || {
                    IdAllocator::new(&state, 1 << 20, 65536, 16)
                        .allocate(&format!("c{i}"), &bundle)
                        .unwrap()
                })
            })
            .collect();
        let mut starts: Vec<u32> = threads
            .into_iter()
            .map(|t| t.join().unwrap().start)
            .collect();
        starts.sort();
        starts.dedup();
        assert_eq!(starts.len(), 8);
    }

    #[test]
    fn a_pod_shares_its_sandbox_range_until_the_last_member_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(&dir.path().join("state"));
        let b = |n: &str| {
            let b = dir.path().join(n);
            std::fs::create_dir_all(&b).unwrap();
            b
        };
        let lone = a.allocate("lone", &b("lone")).unwrap();
        let pod = a.allocate("sandbox", &b("sandbox")).unwrap();
        assert_ne!(pod, lone);
        assert_eq!(a.join("sandbox", "c1", &b("c1")).unwrap(), pod);
        assert_eq!(a.join("sandbox", "c2", &b("c2")).unwrap(), pod);
        // Idempotent, and one range for the whole pod.
        assert_eq!(a.join("sandbox", "c1", &b("c1")).unwrap(), pod);
        assert_eq!(a.allocations().unwrap().len(), 2);
        assert_eq!(a.members("sandbox").unwrap(), ["c1", "c2", "sandbox"]);
        assert_eq!(a.group_of_range(pod).unwrap().as_deref(), Some("sandbox"));
        assert_eq!(a.group_of_range(lone).unwrap().as_deref(), Some("lone"));
        // A member cannot also join another group, nor allocate another range.
        let err = a.join("lone", "c1", &b("c1")).unwrap_err().to_string();
        assert!(err.contains("cannot join"), "{err}");
        let err = a.allocate("c1", &b("other")).unwrap_err().to_string();
        assert!(err.contains("already holds"), "{err}");
        // The sandbox goes first: the range stays with its containers.
        assert!(a.release("sandbox").unwrap());
        assert_eq!(a.allocations().unwrap()["sandbox"], pod);
        assert!(a.release("c1").unwrap());
        assert!(!a.release("c1").unwrap());
        // Its name is still held while a member lives.
        let err = a.allocate("sandbox", &b("again")).unwrap_err().to_string();
        assert!(err.contains("still held") && err.contains("c2"), "{err}");
        assert!(a.release("c2").unwrap());
        // The last member frees it: the next allocation gets it back.
        assert!(!a.allocations().unwrap().contains_key("sandbox"));
        assert_eq!(a.group_of_range(pod).unwrap(), None);
        assert_eq!(a.allocate("next", &b("next")).unwrap(), pod);
        // Joining a group that holds nothing is refused with what to do.
        let err = a.join("sandbox", "c3", &b("c3")).unwrap_err().to_string();
        assert!(
            err.contains("holds no uid range") && err.contains("sandbox"),
            "{err}"
        );
    }

    #[test]
    fn dead_pod_members_are_reclaimed_and_an_empty_pod_frees_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let a = alloc(&dir.path().join("state"));
        let (sb, c1) = (dir.path().join("sb"), dir.path().join("c1"));
        std::fs::create_dir_all(&sb).unwrap();
        std::fs::create_dir_all(&c1).unwrap();
        let pod = a.allocate("sb", &sb).unwrap();
        a.join("sb", "c1", &c1).unwrap();
        // The sandbox's bundle disappears (its shim was killed): the pod
        // keeps the range for c1.
        std::fs::remove_dir(&sb).unwrap();
        let other = dir.path().join("o");
        std::fs::create_dir_all(&other).unwrap();
        assert_ne!(a.allocate("o", &other).unwrap(), pod);
        assert_eq!(a.members("sb").unwrap(), ["c1"]);
        // Then c1's: the range is free.
        std::fs::remove_dir(&c1).unwrap();
        let last = dir.path().join("last");
        std::fs::create_dir_all(&last).unwrap();
        assert_eq!(a.allocate("last", &last).unwrap(), pod);
        assert!(a.members("sb").unwrap().is_empty());
    }

    #[test]
    fn records_from_before_pods_are_read_as_one_member_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RECORD),
            r#"{"ranges":{"old":{"index":1,"bundle":""}}}"#,
        )
        .unwrap();
        let a = alloc(dir.path());
        assert_eq!(a.members("old").unwrap(), ["old"]);
        assert_eq!(a.allocate("new", dir.path()).unwrap().start, 100_000);
        assert!(a.release("old").unwrap());
        assert_eq!(a.allocations().unwrap().len(), 1);
    }

    #[test]
    fn id_maps_parse_only_as_a_single_range_from_zero() {
        let r = IdRange {
            start: 1 << 20,
            size: 65536,
        };
        assert_eq!(
            IdRange::parse_map("         0    1048576      65536\n"),
            Some(r)
        );
        assert_eq!(
            IdRange::parse_map("0 0 4294967295\n").map(|r| r.start),
            Some(0)
        );
        assert_eq!(IdRange::parse_map("1 1048576 65536\n"), None);
        assert_eq!(IdRange::parse_map("0 1048576 1\n1 5 5\n"), None);
        assert_eq!(IdRange::parse_map(""), None);
        // The host's own maps are not a hardened range.
        let own = IdRange::of_process(std::process::id() as i32);
        assert!(own.is_none_or(|r| r.start == 0), "{own:?}");
    }

    #[test]
    fn a_corrupt_record_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD), "{not json").unwrap();
        let err = alloc(dir.path())
            .allocate("x", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
