//! `docker save` archives: `manifest.json` (`[{Config, RepoTags, Layers}]`),
//! the config as `<id>.json` (or `blobs/sha256/<hex>` since docker 25) and
//! one tar per layer (`<id>/layer.tar` or `blobs/sha256/<hex>`).
//!
//! A docker archive has no manifest blob; one is written (an OCI image
//! manifest listing the stored config and layers), so every image in the
//! store has a manifest digest.

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
use serde::Deserialize;

use super::archive::Archive;
use super::compression::Compression;
use super::content::ContentStore;
use super::digest::Digest;
use super::error::{ImageError, Result};
use super::layout::ResolvedImage;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Whether `archive` looks like a docker archive.
pub fn is_docker_archive(archive: &Archive) -> bool {
    archive.exists("manifest.json")
}

/// Resolves every image of the docker archive, storing config, layers and
/// a written manifest in `content`.
pub fn resolve(archive: &mut Archive, content: &ContentStore) -> Result<Vec<ResolvedImage>> {
    let source = archive.source();
    let bad = |detail: String| ImageError::BadArchive {
        source_path: source.clone(),
        detail,
    };
    let entries: Vec<Entry> =
        serde_json::from_slice(&archive.read("manifest.json")?).map_err(|e| {
            bad(format!(
                "manifest.json is not a docker archive manifest: {e}"
            ))
        })?;
    if entries.is_empty() {
        return Err(bad("manifest.json lists no images".into()));
    }
    let mut out = Vec::new();
    for e in entries {
        // The config's name is its digest in both formats: check it.
        let expected = named_digest(&e.config);
        let (cd, csize) = archive.store_blob(
            &e.config,
            expected.as_ref().map(|d| (d, None)),
            content,
            "image config",
        )?;
        let diff_ids = super::layout::host_diff_ids(content, &cd, &source, &bad)?;
        if diff_ids.len() != e.layers.len() {
            return Err(bad(format!(
                "{} lists {} layers but its config has {} diff_ids",
                e.config,
                e.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for (i, l) in e.layers.iter().enumerate() {
            // `blobs/sha256/<hex>` names its digest; `<id>/layer.tar` is
            // an uncompressed tar whose digest is its diff_id.
            let expected =
                named_digest(l).or_else(|| l.ends_with("/layer.tar").then(|| diff_ids[i].clone()));
            let (ld, size) =
                archive.store_blob(l, expected.as_ref().map(|d| (d, None)), content, "layer")?;
            let mut head = [0u8; 4];
            let n = {
                use std::io::Read;
                let mut f = content.open_blob(&ld)?;
                f.read(&mut head).unwrap_or(0)
            };
            let comp = Compression::sniff(&head[..n]);
            descs.push(descriptor(comp.oci_media_type(), &ld, size)?);
            layers.push(ld);
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                "application/vnd.oci.image.config.v1+json",
                &cd,
                csize,
            )?)
            .layers(descs)
            .build()
            .map_err(|err| bad(format!("writing a manifest: {err}")))?;
        let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
        let md = content.put(&bytes)?;
        out.push(ResolvedImage {
            names: e.repo_tags.unwrap_or_default(),
            manifest: md,
            config: cd,
            layers,
            diff_ids,
        });
    }
    Ok(out)
}

/// The digest a file's name states: `blobs/sha256/<hex>` or `<hex>.json`.
fn named_digest(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    if name.starts_with("blobs/sha256/") || base.ends_with(".json") {
        Digest::from_hex(hex).ok()
    } else {
        None
    }
}

fn descriptor(media_type: &str, d: &Digest, size: u64) -> Result<oci_spec::image::Descriptor> {
    let digest: oci_spec::image::Digest = d
        .to_string()
        .parse()
        .map_err(|_| ImageError::InvalidDigest(d.to_string()))?;
    DescriptorBuilder::default()
        .media_type(MediaType::from(media_type))
        .digest(digest)
        .size(size)
        .build()
        .map_err(|e| ImageError::InvalidDigest(format!("{d}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_state_digests() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(named_digest(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            named_digest(&format!("blobs/sha256/{hex}")).unwrap().hex(),
            hex
        );
        assert!(named_digest("abc/layer.tar").is_none());
        assert!(named_digest("config.json").is_none());
    }
}
