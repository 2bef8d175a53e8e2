//! The content-addressed blob store: `<root>/content/blobs/sha256/<hex>`.
//!
//! A blob enters only through [`ContentStore::ingest`] (or a staged file
//! committed with [`ContentStore::commit`]): its bytes are written to a
//! temp file in `<root>/content/ingest/` while being hashed and counted;
//! unless digest and size match, the temp file is removed and the blob
//! refused with an error naming the digest. On a match the file is
//! fsynced, made read-only and renamed into place, then the directory is
//! fsynced. A crash leaves at most a temp file in `ingest/`, which prune
//! removes; never a partial blob.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::digest::{Digest, DigestWriter};
use super::error::{ImageError, IoContext, Result};
use super::index::fsync_dir;

/// The blob store under a store root.
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

/// A file written to `ingest/` whose digest and size are known, not yet a
/// blob. Dropping it removes the file.
#[derive(Debug)]
pub struct Staged {
    file: NamedTempFile,
    /// What the bytes hash to.
    pub digest: Digest,
    /// How many bytes there are.
    pub size: u64,
}

impl Staged {
    /// The temp file's path (to read it back before committing).
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl ContentStore {
    /// The store under `root` (`root/content`), creating its directories.
    pub fn open(root: &Path) -> Result<ContentStore> {
        let c = ContentStore {
            blobs: root.join("content/blobs/sha256"),
            ingest: root.join("content/ingest"),
        };
        for d in [&c.blobs, &c.ingest] {
            fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        Ok(c)
    }

    /// Where the blob `d` lives (whether or not it is there).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// Whether the store holds `d`.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// The size of blob `d`.
    pub fn size(&self, d: &Digest) -> Result<u64> {
        let p = self.path(d);
        Ok(fs::metadata(&p)
            .map_err(|e| self.missing_or_io(d, &p, e))?
            .len())
    }

    /// Opens blob `d` for reading.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.path(d);
        File::open(&p).map_err(|e| self.missing_or_io(d, &p, e))
    }

    /// Reads the whole blob `d` (manifests, configs: small blobs), checking
    /// its digest again (a blob on disk could have been damaged).
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut bytes)
            .ctx(|| format!("reading {}", self.path(d).display()))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    fn missing_or_io(&self, d: &Digest, p: &Path, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::MissingBlob {
                digest: d.to_string(),
                what: "content".into(),
                location: "the content store".into(),
            }
        } else {
            ImageError::io(format!("opening {}", p.display()), e)
        }
    }

    /// Writes `reader`'s bytes to a temp file in `ingest/`, hashing them;
    /// the result is not a blob until [`ContentStore::commit`].
    pub fn stage(&self, mut reader: impl Read) -> Result<Staged> {
        let tmp = tempfile::Builder::new()
            .prefix("ingest-")
            .tempfile_in(&self.ingest)
            .ctx(|| format!("creating a temp file in {}", self.ingest.display()))?;
        let mut w = DigestWriter::new(io::BufWriter::with_capacity(256 * 1024, tmp));
        io::copy(&mut reader, &mut w).ctx(|| "reading blob data into the store".to_string())?;
        let (digest, size, buf) = w.finish();
        let file = buf
            .into_inner()
            .map_err(|e| ImageError::io("writing blob data into the store", e.into_error()))?;
        Ok(Staged { file, digest, size })
    }

    /// Makes a staged file the blob `expected`, if its digest (and
    /// `expected_size`, when given) match; otherwise removes it and
    /// returns [`ImageError::DigestMismatch`] or
    /// [`ImageError::SizeMismatch`]. Returns the size.
    pub fn commit(
        &self,
        staged: Staged,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<u64> {
        if &staged.digest != expected {
            return Err(ImageError::DigestMismatch {
                expected: expected.to_string(),
                actual: staged.digest.to_string(),
            });
        }
        if let Some(want) = expected_size {
            if want != staged.size {
                return Err(ImageError::SizeMismatch {
                    digest: expected.to_string(),
                    expected: want,
                    actual: staged.size,
                });
            }
        }
        let dest = self.path(expected);
        if dest.is_file() {
            tracing::debug!(digest = %expected, "blob already stored");
            return Ok(staged.size);
        }
        let f = staged.file.as_file();
        f.sync_all()
            .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o444)))
            .ctx(|| format!("fsync of {}", staged.file.path().display()))?;
        staged
            .file
            .persist(&dest)
            .map_err(|e| ImageError::io(format!("renaming blob to {}", dest.display()), e.error))?;
        fsync_dir(&self.blobs)?;
        tracing::debug!(digest = %expected, size = staged.size, "blob stored");
        Ok(staged.size)
    }

    /// Stores `reader`'s bytes as blob `expected`, verified (see
    /// [`ContentStore::commit`]). A blob already present is not rewritten
    /// (its bytes are still read and checked).
    pub fn ingest(
        &self,
        reader: impl Read,
        expected: &Digest,
        expected_size: Option<u64>,
    ) -> Result<u64> {
        let staged = self.stage(reader)?;
        self.commit(staged, expected, expected_size)
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if !self.contains(&d) {
            self.ingest(bytes, &d, Some(bytes.len() as u64))?;
        }
        Ok(d)
    }

    /// Every blob's digest (files with other names are ignored).
    pub fn list(&self) -> Result<Vec<Digest>> {
        Digest::list_dir(&self.blobs)
    }

    /// Removes blob `d` (gc only).
    pub fn delete(&self, d: &Digest) -> Result<()> {
        let p = self.path(d);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(format!("removing {}", p.display()), e)),
        }
    }

    /// Removes temp files left in `ingest/` by a crash (caller holds the
    /// exclusive lock, so no ingest is running). Returns how many.
    pub fn clean_ingest(&self) -> Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(&self.ingest).ctx(|| format!("listing {}", self.ingest.display()))? {
            let e = e.ctx(|| format!("listing {}", self.ingest.display()))?;
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.ctx(|| format!("removing {}", p.display()))?;
            n += 1;
        }
        Ok(n)
    }

    /// The ingest directory (for staging whole archives).
    pub fn ingest_dir(&self) -> &Path {
        &self.ingest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_verifies_and_dedups() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentStore::open(t.path()).unwrap();
        let data = b"layer bytes".repeat(100);
        let d = Digest::of(&data);
        assert_eq!(
            c.ingest(&data[..], &d, Some(data.len() as u64)).unwrap(),
            1100
        );
        assert!(c.contains(&d));
        assert_eq!(c.read(&d).unwrap(), data);
        // Again: no error, still one blob.
        c.ingest(&data[..], &d, None).unwrap();
        assert_eq!(c.list().unwrap(), vec![d.clone()]);
        let mode = fs::metadata(c.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
    }

    #[test]
    fn refuses_bytes_that_do_not_match_and_keeps_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentStore::open(t.path()).unwrap();
        let claimed = Digest::of(b"the real layer");
        let e = c.ingest(&b"an evil layer"[..], &claimed, None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImageError::DigestMismatch { .. }), "{msg}");
        assert!(msg.contains(&claimed.to_string()), "{msg}");
        assert!(!c.contains(&claimed));
        assert!(c.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(c.ingest_dir()).unwrap().count(), 0);

        let d = Digest::of(b"12345");
        let e = c.ingest(&b"12345"[..], &d, Some(4)).unwrap_err();
        assert!(matches!(e, ImageError::SizeMismatch { .. }), "{e}");
        assert!(!c.contains(&d));
    }

    #[test]
    fn read_rechecks_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentStore::open(t.path()).unwrap();
        let d = c.put(b"config").unwrap();
        let p = c.path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"damaged").unwrap();
        assert!(matches!(
            c.read(&d).unwrap_err(),
            ImageError::DigestMismatch { .. }
        ));
        let missing = Digest::of(b"nope");
        let e = c.read(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.to_string()), "{e}");
    }
}
