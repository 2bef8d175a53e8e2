//! Prune: mark and sweep. Marked are the manifest, config and layer blobs
//! of every named image and the chains of every image and lease; every
//! other blob and snapshot is removed, and so are temp files and
//! directories a crash left. Snapshots are refcounted by chain: a
//! snapshot goes when no image's chain and no lease includes it.

use std::collections::{BTreeMap, BTreeSet};

use oci_spec::image::ImageManifest;
use serde::Serialize;

use super::digest::Digest;
use super::error::Result;
use super::store::ImageStore;

/// What prune removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub blobs_removed: Vec<Digest>,
    pub snapshots_removed: Vec<Digest>,
    /// Bytes of blobs plus file data of snapshots removed.
    pub bytes_freed: u64,
    /// Temp files and dirs (from crashes) removed.
    pub temp_removed: usize,
}

/// How many images and leases use each snapshot.
pub fn snapshot_refs(store: &ImageStore) -> Result<BTreeMap<Digest, usize>> {
    let mut refs = BTreeMap::new();
    for r in store.load_index()?.images.values() {
        for c in &r.chain {
            *refs.entry(c.clone()).or_insert(0) += 1;
        }
    }
    for l in store.leases()?.values() {
        for c in &l.chain {
            *refs.entry(c.clone()).or_insert(0) += 1;
        }
    }
    Ok(refs)
}

/// Prune; the caller holds the store's exclusive lock.
pub(crate) fn prune_locked(store: &ImageStore) -> Result<PruneReport> {
    let content = store.content();
    let snapshots = store.snapshots();
    let mut report = PruneReport {
        temp_removed: content.clean_ingest()? + snapshots.clean_tmp()?,
        ..Default::default()
    };

    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    for (name, r) in store.load_index()?.images {
        blobs.insert(r.digest.clone());
        blobs.insert(r.config.clone());
        match content
            .read(&r.digest)
            .ok()
            .and_then(|b| serde_json::from_slice::<ImageManifest>(&b).ok())
        {
            Some(m) => {
                for l in m.layers() {
                    if let Ok(d) = Digest::parse(l.digest().as_ref()) {
                        blobs.insert(d);
                    }
                }
            }
            None => {
                tracing::warn!(image = %name, manifest = %r.digest, "manifest unreadable; its layers are not kept")
            }
        }
    }
    let chains = snapshot_refs(store)?;

    for d in content.list()? {
        if !blobs.contains(&d) {
            report.bytes_freed += content.size(&d).unwrap_or(0);
            content.delete(&d)?;
            report.blobs_removed.push(d);
        }
    }
    for c in snapshots.list()? {
        if !chains.contains_key(&c) {
            report.bytes_freed += snapshots.info(&c).map(|i| i.size).unwrap_or(0);
            snapshots.remove(&c)?;
            report.snapshots_removed.push(c);
        }
    }
    tracing::info!(
        blobs = report.blobs_removed.len(),
        snapshots = report.snapshots_removed.len(),
        bytes = report.bytes_freed,
        temp = report.temp_removed,
        "prune done"
    );
    Ok(report)
}
