//! Host uid/gid ranges for user namespaces: one range per container, none
//! shared, recorded on disk so every shim on the host sees the others'.
//!
//! Range `i` is `base + i * size .. base + (i + 1) * size`. The record is
//! `allocations.json` in the state dir, changed under an exclusive
//! `flock` on `lock` and replaced atomically (write, rename), so a crash
//! of a shim leaves the old or the new record, never half of one. No
//! fsync: the record lives in /run and means nothing after a host crash
//! (its containers are gone too), and two fsyncs per create and delete
//! were a visible part of the hardened start latency. An entry
//! whose bundle directory is gone (the container was removed without a
//! release, e.g. its shim was killed) is reclaimed by the next allocation.

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    index: u32,
    /// The bundle it was allocated for; empty if unknown.
    #[serde(default)]
    bundle: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// owner (container id) → range index.
    ranges: BTreeMap<String, Entry>,
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

    /// The range of `owner` (a container id), allocating the lowest free
    /// one. Asking again for the same owner and bundle returns the same
    /// range; the same owner with another live bundle is refused.
    pub fn allocate(&self, owner: &str, bundle: &Path) -> Result<IdRange> {
        if owner.is_empty() {
            return Err(Error::Ids("an allocation needs an owner".into()));
        }
        self.locked(|record| {
            record.ranges.retain(|_, e| {
                e.bundle.as_os_str().is_empty() || e.bundle.exists() || e.bundle == bundle
            });
            if let Some(e) = record.ranges.get(owner) {
                if e.bundle == bundle || e.bundle.as_os_str().is_empty() {
                    return Ok(self.range(e.index));
                }
                return Err(Error::Ids(format!(
                    "container {owner:?} already holds a uid range for bundle {}; delete that container first",
                    e.bundle.display()
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
                    bundle: bundle.to_path_buf(),
                },
            );
            Ok(self.range(index))
        })
    }

    /// Frees the range of `owner`. Returns whether it had one.
    pub fn release(&self, owner: &str) -> Result<bool> {
        if !self.dir.join(RECORD).exists() {
            return Ok(false);
        }
        self.locked(|record| Ok(record.ranges.remove(owner).is_some()))
    }

    /// Every allocation, by owner.
    pub fn allocations(&self) -> Result<BTreeMap<String, IdRange>> {
        let record = self.read()?;
        Ok(record
            .ranges
            .into_iter()
            .map(|(k, e)| (k, self.range(e.index)))
            .collect())
    }

    fn read(&self) -> Result<Record> {
        let path = self.dir.join(RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Ids(format!(
                    "{} is corrupt ({e}); remove it only when no hardened container is running",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
        }
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
