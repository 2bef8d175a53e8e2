//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/`): which
//! images an archive holds, for this host's platform, under which names.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::archive::Archive;
use super::compression::check_layer_media_type;
use super::content::ContentStore;
use super::digest::Digest;
use super::error::{ImageError, Result};

/// The annotation naming a manifest in an index (a tag or a full name).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and docker 25's) full image name annotation.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One image found in an archive, its blobs already in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Names the archive gives it (may be empty).
    pub names: Vec<String>,
    /// The manifest blob.
    pub manifest: Digest,
    /// The config blob.
    pub config: Digest,
    /// Layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// The config's `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// The host's platform as image-spec `os/architecture`.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

fn platform_string(d: &Descriptor) -> Option<String> {
    d.platform()
        .as_ref()
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
}

fn is_host(platform: &str) -> bool {
    let (os, arch) = host_platform();
    platform == format!("{os}/{arch}")
}

fn digest_of(d: &Descriptor) -> Result<Digest> {
    Digest::parse(d.digest().as_ref())
}

fn names_of(d: &Descriptor) -> Vec<String> {
    let Some(a) = d.annotations() else {
        return Vec::new();
    };
    // The full name if containerd/docker wrote one, else the ref name.
    a.get(CONTAINERD_NAME)
        .or_else(|| a.get(REF_NAME))
        .map(|n| vec![n.clone()])
        .unwrap_or_default()
}

/// Resolves every image of the OCI layout in `archive`, storing the
/// manifests, configs and layers it needs (verified) in `content`.
pub fn resolve(archive: &mut Archive, content: &ContentStore) -> Result<Vec<ResolvedImage>> {
    let source = archive.source();
    let bad = |detail: String| ImageError::BadArchive {
        source_path: source.clone(),
        detail,
    };
    if let Ok(v) = archive.read("oci-layout") {
        let v: serde_json::Value =
            serde_json::from_slice(&v).map_err(|e| bad(format!("oci-layout is not JSON: {e}")))?;
        if v["imageLayoutVersion"] != "1.0.0" {
            return Err(bad(format!(
                "oci-layout has imageLayoutVersion {}, this husk reads 1.0.0",
                v["imageLayoutVersion"]
            )));
        }
    }
    let index: ImageIndex = serde_json::from_slice(&archive.read("index.json")?)
        .map_err(|e| bad(format!("index.json is not an OCI image index: {e}")))?;

    // Manifest digest -> (names, descriptor), in index order.
    let mut chosen: BTreeMap<Digest, (Vec<String>, Descriptor)> = BTreeMap::new();
    let mut order: Vec<Digest> = Vec::new();
    let mut seen_platforms = Vec::new();
    for desc in index.manifests() {
        let names = names_of(desc);
        let mt = desc.media_type().to_string();
        let manifest_desc = if INDEX_TYPES.contains(&mt.as_str()) {
            let d = digest_of(desc)?;
            let (d, _) = archive.store_blob(
                &blob_name(&d),
                Some((&d, Some(desc.size()))),
                content,
                "image index",
            )?;
            let inner: ImageIndex = serde_json::from_slice(&content.read(&d)?)
                .map_err(|e| bad(format!("index {d} is not an OCI image index: {e}")))?;
            let mut found = None;
            for m in inner.manifests() {
                let p = platform_string(m);
                if let Some(p) = &p {
                    seen_platforms.push(p.clone());
                }
                if p.as_deref().is_none_or(is_host)
                    && MANIFEST_TYPES.contains(&m.media_type().to_string().as_str())
                {
                    found = Some(m.clone());
                    break;
                }
            }
            match found {
                Some(m) => m,
                None => continue,
            }
        } else if MANIFEST_TYPES.contains(&mt.as_str()) {
            if let Some(p) = platform_string(desc) {
                seen_platforms.push(p.clone());
                if !is_host(&p) {
                    continue;
                }
            }
            desc.clone()
        } else {
            tracing::warn!(media_type = %mt, "skipping an index entry that is not an image");
            continue;
        };
        let d = digest_of(&manifest_desc)?;
        match chosen.get_mut(&d) {
            Some((n, _)) => n.extend(names),
            None => {
                order.push(d.clone());
                chosen.insert(d, (names, manifest_desc));
            }
        }
    }
    if chosen.is_empty() {
        let (os, arch) = host_platform();
        return Err(ImageError::NoPlatform {
            source_path: source.clone(),
            platform: format!("{os}/{arch}"),
            found: if seen_platforms.is_empty() {
                "no image manifests".into()
            } else {
                seen_platforms.join(", ")
            },
        });
    }
    let mut out = Vec::new();
    for d in order {
        let (mut names, desc) = chosen.remove(&d).expect("every ordered digest was chosen");
        names.dedup();
        out.push(resolve_manifest(archive, content, &desc, names)?);
    }
    Ok(out)
}

/// `blobs/sha256/<hex>`.
/// Reads the stored image config `cd`, refuses it unless it is for this
/// host's platform, and returns its layers' diff ids.
pub fn host_diff_ids(
    content: &ContentStore,
    cd: &Digest,
    source: &str,
    bad: &dyn Fn(String) -> ImageError,
) -> Result<Vec<Digest>> {
    let config: ImageConfiguration = serde_json::from_slice(&content.read(cd)?)
        .map_err(|e| bad(format!("config {cd} is not an image config: {e}")))?;
    let (os, arch) = host_platform();
    let found = format!("{}/{}", config.os(), config.architecture());
    if found != format!("{os}/{arch}") {
        return Err(ImageError::NoPlatform {
            source_path: source.to_string(),
            platform: format!("{os}/{arch}"),
            found,
        });
    }
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|s| Digest::parse(s))
        .collect()
}

pub fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn resolve_manifest(
    archive: &mut Archive,
    content: &ContentStore,
    desc: &Descriptor,
    names: Vec<String>,
) -> Result<ResolvedImage> {
    let source = archive.source();
    let bad = |detail: String| ImageError::BadArchive {
        source_path: source.clone(),
        detail,
    };
    let md = digest_of(desc)?;
    archive.store_blob(
        &blob_name(&md),
        Some((&md, Some(desc.size()))),
        content,
        "manifest",
    )?;
    let manifest: ImageManifest = serde_json::from_slice(&content.read(&md)?)
        .map_err(|e| bad(format!("manifest {md} is not an OCI image manifest: {e}")))?;
    let cd = digest_of(manifest.config())?;
    archive.store_blob(
        &blob_name(&cd),
        Some((&cd, Some(manifest.config().size()))),
        content,
        "image config",
    )?;
    let diff_ids = host_diff_ids(content, &cd, &source, &bad)?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(bad(format!(
            "manifest {md} has {} layers but its config lists {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let ld = digest_of(l)?;
        check_layer_media_type(l.media_type().as_ref(), &ld.to_string())?;
        archive.store_blob(
            &blob_name(&ld),
            Some((&ld, Some(l.size()))),
            content,
            "layer",
        )?;
        layers.push(ld);
    }
    Ok(ResolvedImage {
        names,
        manifest: md,
        config: cd,
        layers,
        diff_ids,
    })
}
