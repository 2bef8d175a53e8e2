//! The per-plugin key-value store behind `husk:plugin/store`.
//!
//! Each call gets a fresh instance, so a plugin's globals never survive a
//! call; this store does. One store per plugin name, shared by its calls
//! (and kept across hot reloads). With a `state-dir` it is persisted to
//! `<state-dir>/<plugin>.json` after every write (temp file, fsync, rename),
//! so it also survives the host's restart. Every shim runs its own host, so
//! a persisted store is shared between processes: each operation takes a
//! file lock (`<plugin>.json.lock`) and works on what is on disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::bindings::store::StoreError;

/// Keys + values may not exceed this many bytes per plugin.
pub const MAX_STORE_BYTES: usize = 1 << 20;
/// The longest key.
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Default)]
pub struct KvStore {
    path: Option<PathBuf>,
    inner: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl KvStore {
    /// An in-memory store.
    pub fn in_memory() -> Self {
        KvStore::default()
    }

    /// A store persisted at `path` (loaded if it exists; a corrupt file is
    /// logged and started afresh).
    pub fn persistent(path: &Path) -> Self {
        let map = std::fs::read(path)
            .ok()
            .and_then(|bytes| match decode(&bytes) {
                Some(m) => Some(m),
                None => {
                    tracing::warn!(path = %path.display(), "plugin store is corrupt; starting empty");
                    None
                }
            })
            .unwrap_or_default();
        KvStore {
            path: Some(path.to_owned()),
            inner: Mutex::new(map),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written
        // (every update is a single insert/remove), so poison is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the current map: for a persisted store, under the file
    /// lock and with what other processes wrote reloaded first.
    fn with_map<T>(
        &self,
        exclusive: bool,
        f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut map = self.lock();
        let Some(path) = &self.path else {
            return f(&mut map);
        };
        let io = |e: std::io::Error| {
            StoreError::Io(format!("cannot lock the store {}: {e}", path.display()))
        };
        let lock_path = path.with_extension("json.lock");
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        if exclusive {
            lock.lock().map_err(io)?;
        } else {
            lock.lock_shared().map_err(io)?;
        }
        if let Some(on_disk) = std::fs::read(path).ok().and_then(|b| decode(&b)) {
            *map = on_disk;
        }
        f(&mut map)
        // `lock` drops here, releasing the file lock.
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with_map(false, |map| Ok(map.get(key).cloned()))
            .ok()
            .flatten()
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.with_map(false, |map| Ok(keys_with_prefix(map, prefix)))
            .unwrap_or_default()
    }

    pub fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        check_key(key)?;
        self.with_map(true, |map| {
            let used: usize = map
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .map(|(k, v)| k.len() + v.len())
                .sum();
            if used + key.len() + value.len() > MAX_STORE_BYTES {
                return Err(StoreError::Full);
            }
            map.insert(key.to_owned(), value);
            self.persist(map)
        })
    }

    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.with_map(true, |map| {
            if map.remove(key).is_some() {
                self.persist(map)?;
            }
            Ok(())
        })
    }

    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        check_key(key)?;
        self.with_map(true, |map| {
            let current = map
                .get(key)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let next = current.wrapping_add(delta);
            map.insert(key.to_owned(), next.to_le_bytes().to_vec());
            self.persist(map)?;
            Ok(next)
        })
    }

    fn persist(&self, map: &BTreeMap<String, Vec<u8>>) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, &encode(map))
            .map_err(|e| StoreError::Io(format!("cannot write the store {}: {e}", path.display())))
    }
}

fn keys_with_prefix(map: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Vec<String> {
    map.range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect()
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StoreError::InvalidKey);
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new
/// content, never a mix: temp file, fsync, rename, fsync the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for attempt in 0u32..100 {
        let tmp = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temp file name"))
}

fn encode(map: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let hex: BTreeMap<&str, String> = map
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(|b| format!("{b:02x}")).collect()))
        .collect();
    serde_json::to_vec(&hex).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<BTreeMap<String, Vec<u8>>> {
    let hex: BTreeMap<String, String> = serde_json::from_slice(bytes).ok()?;
    hex.into_iter()
        .map(|(k, v)| {
            let bytes = (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(v.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((k, bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let s = KvStore::persistent(&path);
        assert_eq!(s.increment("n", 2).unwrap(), 2);
        s.set("a/b", b"hi".to_vec()).unwrap();
        let s = KvStore::persistent(&path);
        assert_eq!(s.increment("n", 1).unwrap(), 3);
        assert_eq!(s.get("a/b").unwrap(), b"hi");
        assert_eq!(s.keys("a/"), vec!["a/b".to_owned()]);
        assert!(matches!(s.set("", vec![]), Err(StoreError::InvalidKey)));
        assert!(matches!(
            s.set("big", vec![0; MAX_STORE_BYTES]),
            Err(StoreError::Full)
        ));
    }

    #[test]
    fn two_handles_on_one_file_see_each_others_writes() {
        // Two shims with the same config: each has its own handle.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let (a, b) = (KvStore::persistent(&path), KvStore::persistent(&path));
        for _ in 0..10 {
            a.increment("n", 1).unwrap();
            b.increment("n", 1).unwrap();
        }
        a.set("from-a", b"1".to_vec()).unwrap();
        assert_eq!(b.get("from-a").unwrap(), b"1");
        assert_eq!(a.increment("n", 0).unwrap(), 20);
    }
}
