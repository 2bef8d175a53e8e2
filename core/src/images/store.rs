//! [`ImageStore`]: the images of one store root. Import, list, inspect,
//! remove, prune, and the overlay mounts the runtime uses.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::archive::Archive;
use super::content::ContentStore;
use super::digest::{chain_ids, Digest};
use super::docker_archive;
use super::error::{ImageError, IoContext, Result};
use super::gc::{self, PruneReport};
use super::index::{index_path, write_atomic, write_replace, ImageIndex, ImageRecord};
use super::layout::{self, ResolvedImage};
use super::lock::StoreLock;
use super::overlay::{self, RootfsMount, UpperSync};
use super::snapshots::Snapshots;
use super::unpack::UnpackOptions;

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The name to give the image, instead of the archive's own names
    /// (only for archives holding one image).
    pub name: Option<String>,
    /// How layers are unpacked.
    pub unpack: UnpackOptions,
}

/// One name an import set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImportedImage {
    pub name: String,
    /// The manifest digest.
    pub digest: Digest,
    pub config: Digest,
    /// Chain ids, bottom first.
    pub chain: Vec<Digest>,
    /// Snapshots this import unpacked (the others were already there).
    pub unpacked: usize,
}

/// A line of `husk images`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub digest: Digest,
    /// Bytes of the image's blobs (manifest, config, layers).
    pub size: u64,
    pub imported_at: u64,
}

/// `husk image inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub name: String,
    pub digest: Digest,
    pub config_digest: Digest,
    pub os: String,
    pub architecture: String,
    pub config: InspectConfig,
    pub layers: Vec<InspectLayer>,
    /// Bytes of the image's blobs.
    pub size: u64,
    /// Bytes of file data in its snapshots.
    pub unpacked_size: u64,
    pub imported_at: u64,
}

/// The runtime defaults of an image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// One layer in [`ImageInspect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InspectLayer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub size: u64,
}

/// A lease: chains held by a mounted rootfs, kept by prune.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub image: String,
    pub chain: Vec<Digest>,
    pub target: PathBuf,
}

/// The image store under one root directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    snapshots: Snapshots,
    /// What [`ImageStore::inspect`] found, by name, for one version of the
    /// index file (see [`IndexStamp`]); shared by the clones.
    inspected: std::sync::Arc<std::sync::Mutex<Option<InspectCache>>>,
}

/// A version of the index file: it is only ever replaced by a rename, so
/// a new version has a new inode, a new ctime, or both.
type IndexStamp = (u64, u64, i64, i64, i64, i64, u64);
type InspectCache = (IndexStamp, BTreeMap<String, ImageInspect>);

fn index_stamp(root: &Path) -> Option<IndexStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(index_path(root)).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.size(),
    ))
}

/// Checks an image name: not empty, at most 255 bytes, no whitespace or
/// control characters, not a bare digest.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| ImageError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 255 {
        return Err(bad("it is longer than 255 bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    if name.starts_with("sha256:") {
        return Err(bad("a digest is not a name; use e.g. `repo:tag`"));
    }
    Ok(())
}

fn validate_lease(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ImageError::InvalidName {
            name: id.to_string(),
            reason: "a lease id is 1-128 of [A-Za-z0-9_.-], not starting with '.'".into(),
        });
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ImageStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        let root = root.into();
        fs::create_dir_all(&root).ctx(|| format!("creating the image store {}", root.display()))?;
        let leases = root.join("leases");
        fs::create_dir_all(&leases).ctx(|| format!("creating {}", leases.display()))?;
        Ok(ImageStore {
            content: ContentStore::open(&root)?,
            snapshots: Snapshots::open(&root)?,
            root,
            inspected: Default::default(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// The snapshots.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    pub(crate) fn lock_exclusive(&self) -> Result<StoreLock> {
        StoreLock::exclusive(&self.root.join("lock"))
    }

    fn lock_shared(&self) -> Result<StoreLock> {
        StoreLock::shared(&self.root.join("lock"))
    }

    pub(crate) fn load_index(&self) -> Result<ImageIndex> {
        ImageIndex::load(&index_path(&self.root))
    }

    /// Imports an OCI layout (directory or tar) or a docker-archive tar at
    /// `path`: stores its blobs (verified), unpacks layers not yet
    /// unpacked, and names the images. Returns one entry per name set.
    pub fn import(&self, path: &Path, opts: &ImportOptions) -> Result<Vec<ImportedImage>> {
        if let Some(n) = &opts.name {
            validate_name(n)?;
        }
        let _lock = self.lock_exclusive()?;
        let started = std::time::Instant::now();
        let mut archive = Archive::open(path, &self.content)?;
        let images = if docker_archive::is_docker_archive(&archive) {
            docker_archive::resolve(&mut archive, &self.content)?
        } else if archive.exists("index.json") {
            layout::resolve(&mut archive, &self.content)?
        } else {
            return Err(ImageError::BadArchive {
                source_path: archive.source(),
                detail: "neither an OCI image layout (no index.json) nor a docker archive \
                         (no manifest.json); give `docker save` output or an OCI layout"
                    .into(),
            });
        };
        drop(archive); // removes staged files no image needed
        let named: Vec<(ResolvedImage, Vec<String>)> = match &opts.name {
            Some(n) if images.len() > 1 => {
                return Err(ImageError::AmbiguousName {
                    source_path: path.display().to_string(),
                    count: images.len(),
                })
            }
            Some(n) => images.into_iter().map(|i| (i, vec![n.clone()])).collect(),
            None => images
                .into_iter()
                .map(|i| {
                    let names = i.names.clone();
                    (i, names)
                })
                .collect(),
        };
        for (_, names) in &named {
            if names.is_empty() {
                return Err(ImageError::Unnamed {
                    source_path: path.display().to_string(),
                });
            }
            for n in names {
                validate_name(n)?;
            }
        }
        let mut out = Vec::new();
        let mut unpacked_total = Vec::new();
        for (img, _) in &named {
            let chain = chain_ids(&img.diff_ids);
            let mut unpacked = 0;
            for (i, c) in chain.iter().enumerate() {
                if self.snapshots.exists(c) {
                    continue;
                }
                let blob = self.content.open_blob(&img.layers[i])?;
                self.snapshots.create(
                    c,
                    &img.diff_ids[i],
                    i.checked_sub(1).map(|p| &chain[p]),
                    blob,
                    &img.layers[i].to_string(),
                    &opts.unpack,
                )?;
                unpacked += 1;
            }
            unpacked_total.push((chain, unpacked));
        }
        let mut index = self.load_index()?;
        let t = now();
        for ((img, names), (chain, unpacked)) in named.iter().zip(unpacked_total) {
            for n in names {
                if let Some(old) = index.images.get(n) {
                    if old.digest != img.manifest {
                        tracing::info!(name = %n, old = %old.digest, new = %img.manifest, "name moved to a new image");
                    }
                }
                index.images.insert(
                    n.clone(),
                    ImageRecord {
                        digest: img.manifest.clone(),
                        config: img.config.clone(),
                        chain: chain.clone(),
                        imported_at: t,
                    },
                );
                out.push(ImportedImage {
                    name: n.clone(),
                    digest: img.manifest.clone(),
                    config: img.config.clone(),
                    chain: chain.clone(),
                    unpacked,
                });
            }
        }
        index.save(&index_path(&self.root))?;
        tracing::info!(
            source = %path.display(), images = out.len(),
            ms = started.elapsed().as_millis() as u64, "import done"
        );
        Ok(out)
    }

    /// The record of image `name` (`name`, or `name:latest`).
    pub fn get(&self, name: &str) -> Result<(String, ImageRecord)> {
        let _lock = self.lock_shared()?;
        self.get_locked(name)
    }

    fn get_locked(&self, name: &str) -> Result<(String, ImageRecord)> {
        let index = self.load_index()?;
        lookup(&index, name)
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        let _lock = self.lock_shared()?;
        let index = self.load_index()?;
        index
            .images
            .iter()
            .map(|(name, r)| {
                Ok(ImageSummary {
                    name: name.clone(),
                    digest: r.digest.clone(),
                    size: self.blob_size(&r.digest).unwrap_or(0),
                    imported_at: r.imported_at,
                })
            })
            .collect()
    }

    fn manifest(&self, d: &Digest) -> Result<ImageManifest> {
        serde_json::from_slice(&self.content.read(d)?).map_err(|e| ImageError::CorruptStore {
            path: self.content.path(d),
            detail: format!("manifest: {e}"),
        })
    }

    /// Bytes of a manifest and every blob it lists.
    fn blob_size(&self, manifest: &Digest) -> Result<u64> {
        let m = self.manifest(manifest)?;
        let mut total = self.content.size(manifest)?;
        total += m.config().size();
        total += m.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(total)
    }

    /// The image's manifest, config and layers, as JSON-ready data.
    pub fn inspect(&self, name: &str) -> Result<ImageInspect> {
        let _lock = self.lock_shared()?;
        // Before the index is read: a version replaced meanwhile can only
        // make the entry miss later, never hit with what it replaced.
        let stamp = index_stamp(&self.root);
        let asked = name;
        let found = self.inspect_locked(name)?;
        if let Some(stamp) = stamp {
            let mut cache = self.inspected.lock().unwrap_or_else(|p| p.into_inner());
            if cache.as_ref().is_none_or(|(s, _)| *s != stamp) {
                *cache = Some((stamp, BTreeMap::new()));
            }
            if let Some((_, by_name)) = cache.as_mut() {
                by_name.insert(asked.to_string(), found.clone());
            }
        }
        Ok(found)
    }

    /// What [`ImageStore::inspect`] found for `name`, if the index has not
    /// changed since (one stat, no lock, nothing parsed): the create path
    /// asks this first.
    pub fn inspect_cached(&self, name: &str) -> Option<ImageInspect> {
        let stamp = index_stamp(&self.root)?;
        let cache = self.inspected.lock().unwrap_or_else(|p| p.into_inner());
        match cache.as_ref() {
            Some((s, by_name)) if *s == stamp => by_name.get(name).cloned(),
            _ => None,
        }
    }

    fn inspect_locked(&self, name: &str) -> Result<ImageInspect> {
        let (name, r) = self.get_locked(name)?;
        let m = self.manifest(&r.digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&self.content.read(&r.config)?)
            .map_err(|e| ImageError::CorruptStore {
                path: self.content.path(&r.config),
                detail: format!("config: {e}"),
            })?;
        let c = config.config().clone().unwrap_or_default();
        let mut layers = Vec::new();
        let mut unpacked = 0;
        for (i, l) in m.layers().iter().enumerate() {
            let chain = r.chain[i].clone();
            unpacked += self.snapshots.info(&chain).map(|s| s.size).unwrap_or(0);
            layers.push(InspectLayer {
                digest: Digest::parse(l.digest().as_ref())?,
                diff_id: Digest::parse(&config.rootfs().diff_ids()[i])?,
                chain_id: chain,
                size: l.size(),
            });
        }
        Ok(ImageInspect {
            size: self.blob_size(&r.digest)?,
            name,
            digest: r.digest,
            config_digest: r.config,
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            config: InspectConfig {
                entrypoint: c.entrypoint().clone(),
                cmd: c.cmd().clone(),
                env: c.env().clone(),
                working_dir: c.working_dir().clone(),
                user: c.user().clone(),
            },
            layers,
            unpacked_size: unpacked,
            imported_at: r.imported_at,
        })
    }

    /// Removes the name `name` (`rmi`). Blobs and snapshots stay until
    /// [`ImageStore::prune`].
    pub fn remove(&self, name: &str) -> Result<ImageRecord> {
        let _lock = self.lock_exclusive()?;
        let mut index = self.load_index()?;
        let (full, _) = lookup(&index, name)?;
        let r = index.images.remove(&full).expect("looked up");
        index.save(&index_path(&self.root))?;
        tracing::info!(name = %full, digest = %r.digest, "image name removed");
        Ok(r)
    }

    /// Removes every blob and snapshot no image (or mounted rootfs) uses,
    /// and temp files left by crashes.
    pub fn prune(&self) -> Result<PruneReport> {
        let _lock = self.lock_exclusive()?;
        gc::prune_locked(self)
    }

    /// The overlayfs lower dirs of image `name`, top layer first.
    pub fn mounts(&self, name: &str) -> Result<Vec<PathBuf>> {
        let _lock = self.lock_shared()?;
        let (_, r) = self.get_locked(name)?;
        self.lowerdirs(&r)
    }

    /// The lower dirs [`ImageStore::mount_rootfs_with`] stacks for the
    /// image `img` describes (whether they exist is not checked): two
    /// rootfs mounts with the same ones show the same image.
    pub fn lowerdirs_of(&self, img: &ImageInspect) -> Vec<PathBuf> {
        if img.layers.is_empty() {
            return vec![self.root.join("empty")];
        }
        img.layers
            .iter()
            .rev()
            .map(|l| self.snapshots.fs_path(&l.chain_id))
            .collect()
    }

    fn lowerdirs(&self, r: &ImageRecord) -> Result<Vec<PathBuf>> {
        if r.chain.is_empty() {
            let empty = self.root.join("empty");
            fs::create_dir_all(&empty).ctx(|| format!("creating {}", empty.display()))?;
            return Ok(vec![empty]);
        }
        r.chain
            .iter()
            .rev()
            .map(|c| {
                if self.snapshots.exists(c) {
                    Ok(self.snapshots.fs_path(c))
                } else {
                    Err(ImageError::MissingBlob {
                        digest: c.to_string(),
                        what: "snapshot".into(),
                        location: format!(
                            "{}; import the image again",
                            self.snapshots.path(c).display()
                        ),
                    })
                }
            })
            .collect()
    }

    /// Mounts a writable overlay rootfs of image `name` at `target`, with
    /// `upper` and `work` (created if needed; same filesystem, not
    /// overlayfs). The lease `lease` (e.g. the container id) keeps its
    /// snapshots from prune until [`ImageStore::unmount_rootfs`].
    pub fn mount_rootfs(
        &self,
        name: &str,
        lease: &str,
        target: &Path,
        upper: &Path,
        work: &Path,
    ) -> Result<RootfsMount> {
        self.mount_rootfs_with(name, lease, target, upper, work, UpperSync::Synced)
    }

    /// [`ImageStore::mount_rootfs`], choosing whether the upper dir is
    /// synced (see [`UpperSync`]).
    pub fn mount_rootfs_with(
        &self,
        name: &str,
        lease: &str,
        target: &Path,
        upper: &Path,
        work: &Path,
        sync: UpperSync,
    ) -> Result<RootfsMount> {
        validate_lease(lease)?;
        let _lock = self.lock_shared()?;
        let (full, r) = self.get_locked(name)?;
        let lowers = self.lowerdirs(&r)?;
        let lease_path = self.root.join("leases").join(format!("{lease}.json"));
        let bytes = serde_json::to_vec_pretty(&Lease {
            image: full,
            chain: r.chain.clone(),
            target: target.to_path_buf(),
        })
        .expect("a lease serializes");
        match sync {
            UpperSync::Synced => write_atomic(&lease_path, &bytes)?,
            // A volatile rootfs does not outlive a reboot, and neither need
            // its lease: written without fsync (a lease a crash leaves
            // behind without its container is dropped by huskd's recovery).
            UpperSync::Volatile => write_replace(&lease_path, &bytes)?,
        }
        overlay::mount_overlay(&lowers, upper, work, target, sync).inspect_err(|_| {
            let _ = fs::remove_file(&lease_path);
        })
    }

    /// Unmounts a rootfs mounted by [`ImageStore::mount_rootfs`] and drops
    /// its lease.
    pub fn unmount_rootfs(&self, lease: &str, target: &Path) -> Result<()> {
        validate_lease(lease)?;
        overlay::unmount(target)?;
        let p = self.root.join("leases").join(format!("{lease}.json"));
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ImageError::io(format!("removing {}", p.display()), e)),
        }
    }

    /// Drops the leases a crash left behind: those `keep` does not claim
    /// (their rootfs is unmounted first, if still mounted) and unreadable
    /// ones (a lease of a volatile rootfs is written without fsync, so a
    /// host crash can leave it empty). Returns the ids dropped.
    pub fn drop_stale_leases(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let dir = self.root.join("leases");
        let mut dropped = Vec::new();
        for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(id) = n.strip_suffix(".json") else {
                continue;
            };
            if validate_lease(id).is_err() {
                continue;
            }
            let lease = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Lease>(&b).ok());
            match lease {
                Some(_) if keep(id) => continue,
                Some(l) => self.unmount_rootfs(id, &l.target)?,
                None => {
                    tracing::warn!(path = %e.path().display(), "removing an unreadable lease");
                    fs::remove_file(e.path()).ctx(|| format!("removing {}", e.path().display()))?;
                }
            }
            dropped.push(id.to_string());
        }
        Ok(dropped)
    }

    /// The leases (`<root>/leases/*.json`).
    pub(crate) fn leases(&self) -> Result<BTreeMap<String, Lease>> {
        let dir = self.root.join("leases");
        let mut out = BTreeMap::new();
        for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let e = e.ctx(|| format!("listing {}", dir.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(id) = n.strip_suffix(".json") else {
                continue;
            };
            let bytes = fs::read(e.path()).ctx(|| format!("reading {}", e.path().display()))?;
            let lease: Lease =
                serde_json::from_slice(&bytes).map_err(|err| ImageError::CorruptStore {
                    path: e.path(),
                    detail: err.to_string(),
                })?;
            out.insert(id.to_string(), lease);
        }
        Ok(out)
    }
}

fn lookup(index: &ImageIndex, name: &str) -> Result<(String, ImageRecord)> {
    if let Some(r) = index.images.get(name) {
        return Ok((name.to_string(), r.clone()));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if !last.contains(':') && !name.contains('@') {
        let tagged = format!("{name}:latest");
        if let Some(r) = index.images.get(&tagged) {
            return Ok((tagged, r.clone()));
        }
    }
    Err(ImageError::ImageNotFound {
        name: name.to_string(),
    })
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
