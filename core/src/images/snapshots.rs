//! Unpacked layers, keyed by chain id: `<root>/snapshots/<chain hex>/fs`
//! holds one layer's diff in overlayfs format (whiteouts as 0/0 character
//! devices, opaque directories marked with `trusted.overlay.opaque`), and
//! `info.json` next to it says what it is. Images whose bottom layers are
//! equal have equal chain ids there, so they share those directories.
//!
//! A snapshot is unpacked into `<root>/snapshots/.tmp-*` while the
//! uncompressed stream is hashed; only if it matches the layer's diff_id
//! is `info.json` written (temp, fsync, rename) and the directory renamed
//! into place. A refused or failed layer leaves nothing: its temp
//! directory is removed at once, and prune removes any a crash left.
//! Removal renames first, so a half-deleted snapshot never looks whole.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::compression::decompress;
use super::digest::{Digest, DigestReader};
use super::error::{ImageError, IoContext, Result};
use super::index::{fsync_dir, write_atomic};
use super::unpack::{unpack, UnpackOptions};

/// `info.json` of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot's key.
    pub chain_id: Digest,
    /// The layer's uncompressed digest.
    pub diff_id: Digest,
    /// The chain id of the snapshot below, if any.
    pub parent: Option<Digest>,
    /// Bytes of file data unpacked.
    pub size: u64,
    /// Tar entries unpacked.
    pub entries: u64,
}

/// The snapshot directory of a store.
#[derive(Clone, Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

const TMP_PREFIX: &str = ".tmp-";

impl Snapshots {
    /// `<root>/snapshots`, created if needed.
    pub fn open(root: &Path) -> Result<Snapshots> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Snapshots { dir })
    }

    /// The snapshot directory of `chain`.
    pub fn path(&self, chain: &Digest) -> PathBuf {
        self.dir.join(chain.hex())
    }

    /// The unpacked tree of `chain` (an overlayfs lower dir).
    pub fn fs_path(&self, chain: &Digest) -> PathBuf {
        self.path(chain).join("fs")
    }

    /// Whether `chain` is unpacked.
    pub fn exists(&self, chain: &Digest) -> bool {
        self.path(chain).join("info.json").is_file()
    }

    /// The `info.json` of `chain`.
    pub fn info(&self, chain: &Digest) -> Result<SnapshotInfo> {
        let p = self.path(chain).join("info.json");
        let bytes = fs::read(&p).ctx(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptStore {
            path: p,
            detail: e.to_string(),
        })
    }

    /// Unpacks the layer blob `layer` (compressed or not) as snapshot
    /// `chain` on top of `parent`, checking it against `diff_id`. Returns
    /// the existing info if `chain` is already unpacked.
    pub fn create(
        &self,
        chain: &Digest,
        diff_id: &Digest,
        parent: Option<&Digest>,
        layer: impl Read,
        layer_name: &str,
        opts: &UnpackOptions,
    ) -> Result<SnapshotInfo> {
        if self.exists(chain) {
            return self.info(chain);
        }
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.dir)
            .ctx(|| format!("creating a temp dir in {}", self.dir.display()))?;
        let fs_dir = tmp.path().join("fs");
        fs::create_dir(&fs_dir).ctx(|| format!("creating {}", fs_dir.display()))?;
        let started = std::time::Instant::now();
        let stream = decompress(layer).ctx(|| format!("reading layer {layer_name}"))?;
        let mut hashed = DigestReader::new(stream);
        let stats = unpack(&mut hashed, &fs_dir, opts)?;
        let (actual, _) = hashed
            .finish()
            .ctx(|| format!("reading layer {layer_name}"))?;
        if &actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                layer: layer_name.to_string(),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        let info = SnapshotInfo {
            chain_id: chain.clone(),
            diff_id: diff_id.clone(),
            parent: parent.cloned(),
            size: stats.bytes,
            entries: stats.entries,
        };
        write_atomic(
            &tmp.path().join("info.json"),
            &serde_json::to_vec_pretty(&info).expect("snapshot info serializes"),
        )?;
        let dest = self.path(chain);
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename(&tmp_path, &dest) {
            let _ = fs::remove_dir_all(&tmp_path);
            return Err(ImageError::io(
                format!("renaming snapshot to {}", dest.display()),
                e,
            ));
        }
        fsync_dir(&self.dir)?;
        tracing::info!(
            chain = %chain, layer = layer_name, entries = stats.entries, bytes = stats.bytes,
            ms = started.elapsed().as_millis() as u64, "layer unpacked"
        );
        Ok(info)
    }

    /// Every complete snapshot's chain id.
    pub fn list(&self) -> Result<Vec<Digest>> {
        Digest::list_dir(&self.dir)
    }

    /// Removes snapshot `chain` (gc only).
    pub fn remove(&self, chain: &Digest) -> Result<()> {
        let p = self.path(chain);
        if !p.exists() {
            return Ok(());
        }
        let doomed = self.dir.join(format!("{TMP_PREFIX}rm-{}", chain.hex()));
        fs::rename(&p, &doomed).ctx(|| format!("renaming {} for removal", p.display()))?;
        fsync_dir(&self.dir)?;
        fs::remove_dir_all(&doomed).ctx(|| format!("removing {}", doomed.display()))
    }

    /// Removes temp dirs a crash left (caller holds the exclusive lock).
    pub fn clean_tmp(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let e = e.ctx(|| format!("listing {}", self.dir.display()))?;
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                fs::remove_dir_all(e.path()).ctx(|| format!("removing {}", e.path().display()))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Names in the snapshot directory that are not complete snapshots
    /// (temp dirs), for tests and diagnostics.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let e = e.ctx(|| format!("listing {}", self.dir.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if Digest::from_hex(&n).is_err() {
                out.push(n);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::testutil::{tar_of, E};

    #[test]
    fn a_refused_layer_leaves_no_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshots::open(t.path()).unwrap();
        let evil = tar_of(&[E::dir("etc"), E::file("../escape", b"x")]);
        let diff = Digest::of(&evil);
        let e = s
            .create(
                &diff,
                &diff,
                None,
                &evil[..],
                "evil",
                &UnpackOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(e, ImageError::UnsafeEntry { .. }), "{e}");
        assert!(s.list().unwrap().is_empty());
        assert!(s.leftovers().unwrap().is_empty(), "{:?}", s.leftovers());
        assert!(!t.path().join("escape").exists());
    }

    #[test]
    fn a_layer_that_is_not_its_diff_id_leaves_no_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshots::open(t.path()).unwrap();
        let layer = tar_of(&[E::file("a", b"a")]);
        let claimed = Digest::of(b"something else");
        let e = s
            .create(
                &claimed,
                &claimed,
                None,
                &layer[..],
                "l",
                &UnpackOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(e, ImageError::DiffIdMismatch { .. }), "{e}");
        assert!(s.list().unwrap().is_empty());
        assert!(s.leftovers().unwrap().is_empty());
    }

    #[test]
    fn creates_once_and_removes() {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshots::open(t.path()).unwrap();
        let layer = tar_of(&[E::dir("bin"), E::file("bin/x", b"hello")]);
        let gz = crate::images::testutil::gzip(&layer);
        let diff = Digest::of(&layer);
        let info = s
            .create(&diff, &diff, None, &gz[..], "l", &UnpackOptions::default())
            .unwrap();
        assert_eq!(info.size, 5);
        assert_eq!(fs::read(s.fs_path(&diff).join("bin/x")).unwrap(), b"hello");
        // Again: already there, nothing read.
        s.create(&diff, &diff, None, &b""[..], "l", &UnpackOptions::default())
            .unwrap();
        assert_eq!(s.list().unwrap(), vec![diff.clone()]);
        s.remove(&diff).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(s.leftovers().unwrap().is_empty());
    }
}
