//! An image archive read file by file: a directory, or a tar (optionally
//! gzip or zstd compressed) read in one pass.
//!
//! Archive-internal names (`blobs/sha256/<hex>`, docker's `<id>/layer.tar`)
//! are only lookup keys: nothing is ever written at a path taken from the
//! archive. From a tar, the metadata files (`index.json`, `oci-layout`,
//! `manifest.json`, `repositories`, `*.json`) are kept in memory, every
//! other file is streamed into a temp file in the content store's ingest
//! directory while its digest is computed; a blob the store already holds
//! is skipped. [`Archive::store_blob`] then verifies and commits only the
//! blobs the image needs; the rest go when the archive is dropped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::compression::decompress;
use super::content::{ContentStore, Staged};
use super::digest::Digest;
use super::error::{ImageError, IoContext, Result};

/// The largest metadata file read into memory.
const MAX_METADATA: u64 = 32 << 20;

/// An opened archive.
#[derive(Debug)]
pub enum Archive {
    /// A directory.
    Dir { root: PathBuf },
    /// A tar, already read.
    Tar {
        path: PathBuf,
        small: HashMap<String, Vec<u8>>,
        staged: HashMap<String, Staged>,
        /// `blobs/sha256/<hex>` entries skipped because the store has them.
        present: HashMap<String, Digest>,
    },
}

fn is_metadata(name: &str) -> bool {
    matches!(
        name,
        "index.json" | "oci-layout" | "manifest.json" | "repositories"
    ) || (!name.contains('/') && name.ends_with(".json"))
}

/// An archive-internal name, cleaned (`./a//b` -> `a/b`); `None` for
/// absolute names or names with `..`.
pub fn clean_name(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Archive {
    /// Opens `path`: a directory is used in place, a file is read as a tar.
    pub fn open(path: &Path, content: &ContentStore) -> Result<Archive> {
        let meta = std::fs::metadata(path).ctx(|| format!("opening {}", path.display()))?;
        if meta.is_dir() {
            return Ok(Archive::Dir {
                root: path.to_path_buf(),
            });
        }
        let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
        let reader = decompress(file).ctx(|| format!("reading {}", path.display()))?;
        let mut small = HashMap::new();
        let mut staged = HashMap::new();
        let mut present = HashMap::new();
        let mut tar = tar::Archive::new(reader);
        let bad = |detail: String| ImageError::BadArchive {
            source_path: path.display().to_string(),
            detail,
        };
        for entry in tar.entries().map_err(|e| {
            bad(format!(
                "not a tar archive ({e}); give an OCI layout or docker-archive tar"
            ))
        })? {
            let mut entry = entry.map_err(|e| bad(format!("reading the tar: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = clean_name(&raw) else {
                tracing::warn!(entry = %raw, "ignoring an archive entry with an unsafe name");
                continue;
            };
            if is_metadata(&name) {
                if entry.size() > MAX_METADATA {
                    return Err(bad(format!("{name} is larger than {MAX_METADATA} bytes")));
                }
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(format!("reading {name}: {e}")))?;
                small.insert(name, buf);
                continue;
            }
            if let Some(d) = name
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok())
            {
                if content.contains(&d) {
                    present.insert(name, d);
                    continue;
                }
            }
            let s = content.stage(&mut entry)?;
            staged.insert(name, s);
        }
        Ok(Archive::Tar {
            path: path.to_path_buf(),
            small,
            staged,
            present,
        })
    }

    /// The archive's path, for messages.
    pub fn source(&self) -> String {
        match self {
            Archive::Dir { root } => root.display().to_string(),
            Archive::Tar { path, .. } => path.display().to_string(),
        }
    }

    /// Whether the archive has a file `name`.
    pub fn exists(&self, name: &str) -> bool {
        let Some(name) = clean_name(name) else {
            return false;
        };
        match self {
            Archive::Dir { root } => root.join(&name).is_file(),
            Archive::Tar {
                small,
                staged,
                present,
                ..
            } => {
                small.contains_key(&name)
                    || staged.contains_key(&name)
                    || present.contains_key(&name)
            }
        }
    }

    /// Reads a metadata file (`index.json`, a docker config) into memory.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let missing = || ImageError::BadArchive {
            source_path: self.source(),
            detail: format!("no file {name:?} in the archive"),
        };
        let clean = clean_name(name).ok_or_else(missing)?;
        match self {
            Archive::Dir { root } => {
                let p = root.join(&clean);
                let f = File::open(&p).map_err(|_| missing())?;
                let mut buf = Vec::new();
                f.take(MAX_METADATA)
                    .read_to_end(&mut buf)
                    .ctx(|| format!("reading {}", p.display()))?;
                Ok(buf)
            }
            Archive::Tar { small, staged, .. } => {
                if let Some(b) = small.get(&clean) {
                    return Ok(b.clone());
                }
                let s = staged.get(&clean).ok_or_else(missing)?;
                std::fs::read(s.path()).ctx(|| format!("reading {}", s.path().display()))
            }
        }
    }

    /// Stores the archive file `name` in `content` as a blob, verifying it
    /// against `expected` (digest and size) when given; returns its digest
    /// and size. A blob the store already holds is not read again.
    pub fn store_blob(
        &mut self,
        name: &str,
        expected: Option<(&Digest, Option<u64>)>,
        content: &ContentStore,
        what: &str,
    ) -> Result<(Digest, u64)> {
        if let Some((d, _)) = expected {
            if content.contains(d) {
                return Ok((d.clone(), content.size(d)?));
            }
        }
        let source = self.source();
        let missing = || ImageError::MissingBlob {
            digest: expected.map_or_else(|| name.to_string(), |(d, _)| d.to_string()),
            what: what.to_string(),
            location: source.clone(),
        };
        let clean = clean_name(name).ok_or_else(missing)?;
        let staged = match self {
            Archive::Dir { root } => {
                let p = root.join(&clean);
                let f = File::open(&p).map_err(|_| missing())?;
                content.stage(f)?
            }
            Archive::Tar {
                small,
                staged,
                present,
                ..
            } => {
                if let Some(d) = present.get(&clean) {
                    if content.contains(d) {
                        return Ok((d.clone(), content.size(d)?));
                    }
                }
                match staged.remove(&clean) {
                    Some(s) => s,
                    None => {
                        let bytes = small.get(&clean).ok_or_else(missing)?;
                        content.stage(&bytes[..])?
                    }
                }
            }
        };
        let digest = match expected {
            Some((d, _)) => d.clone(),
            None => staged.digest.clone(),
        };
        let size = content.commit(staged, &digest, expected.and_then(|(_, s)| s))?;
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_names() {
        assert_eq!(
            clean_name("./blobs//sha256/x").as_deref(),
            Some("blobs/sha256/x")
        );
        assert_eq!(clean_name("../etc/passwd"), None);
        assert_eq!(clean_name("/etc/passwd"), None);
        assert_eq!(clean_name("./"), None);
    }
}
