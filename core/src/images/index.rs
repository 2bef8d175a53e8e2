//! The image index (`<root>/images.json`: name -> manifest digest, config
//! digest, chain ids) and the crash-safe write every piece of metadata
//! goes through: temp file, fsync, rename, fsync of the directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{ImageError, IoContext, Result};

/// One named image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image manifest's digest.
    pub digest: Digest,
    /// The image config's digest.
    pub config: Digest,
    /// The chain id of each layer, bottom first (the snapshots it uses).
    pub chain: Vec<Digest>,
    /// Seconds since the epoch when the name was (last) imported.
    pub imported_at: u64,
}

/// `images.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// Format version of this file.
    pub version: u32,
    /// Images by name, sorted.
    pub images: BTreeMap<String, ImageRecord>,
}

impl ImageIndex {
    /// The current format version.
    pub const VERSION: u32 = 1;

    /// Reads the index at `path`; a missing file is an empty index.
    pub fn load(path: &Path) -> Result<ImageIndex> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ImageIndex {
                    version: Self::VERSION,
                    images: BTreeMap::new(),
                })
            }
            Err(e) => return Err(ImageError::io(format!("reading {}", path.display()), e)),
        };
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptStore {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if index.version != Self::VERSION {
            return Err(ImageError::CorruptStore {
                path: path.to_path_buf(),
                detail: format!(
                    "format version {} (this husk reads {})",
                    index.version,
                    Self::VERSION
                ),
            });
        }
        Ok(index)
    }

    /// Writes the index to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("the image index serializes");
        write_atomic(path, &json)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the
/// new content: a temp file in the same directory, fsync, rename over
/// `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp_file(path, bytes, true)
}

/// Writes `bytes` to `path` so that a crash of this process leaves either
/// the old or the new content (temp file, rename), without fsync: for
/// files that need not outlive a reboot (a `--rm` container's record, the
/// lease of a volatile rootfs), whose loss there costs nothing.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp_file(path, bytes, false)
}

fn write_via_temp_file(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path
        .parent()
        .expect("metadata files live in a directory")
        .to_path_buf();
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .ctx(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            if durable {
                tmp.as_file().sync_all()
            } else {
                Ok(())
            }
        })
        .ctx(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| ImageError::io(format!("renaming onto {}", path.display()), e.error))?;
    if durable {
        fsync_dir(&dir)?;
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx(|| format!("fsync of directory {}", dir.display()))
}

/// The index file under a store root.
pub fn index_path(root: &Path) -> PathBuf {
    root.join("images.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("images.json");
        assert!(ImageIndex::load(&p).unwrap().images.is_empty());
        let mut idx = ImageIndex::load(&p).unwrap();
        idx.images.insert(
            "busybox:latest".into(),
            ImageRecord {
                digest: Digest::of(b"m"),
                config: Digest::of(b"c"),
                chain: vec![Digest::of(b"l")],
                imported_at: 1,
            },
        );
        idx.save(&p).unwrap();
        assert_eq!(ImageIndex::load(&p).unwrap(), idx);
        // No temp file is left next to it.
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("images.json")]);
    }

    #[test]
    fn damaged_index_says_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("images.json");
        fs::write(&p, b"{not json").unwrap();
        let e = ImageIndex::load(&p).unwrap_err().to_string();
        assert!(e.contains("move it aside"), "{e}");
    }
}
