//! OCI image layouts written by hand: the layout a registry, `skopeo` or
//! `ctr image import` consume.
//!
//! ```text
//! LAYOUT/oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! LAYOUT/index.json                 one manifest, annotated with its ref name
//! LAYOUT/blobs/sha256/<manifest>    the image manifest
//! LAYOUT/blobs/sha256/<config>      the image config (Cmd, Env, diff_ids)
//! LAYOUT/blobs/sha256/<layer>...    gzipped tars, one per layer directory
//! ```
//!
//! Tars are deterministic (sorted entries, mtime 0, numeric owners taken from
//! the files), so the same inputs always give the same digests.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
    Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::busybox;

/// The index annotation that names a manifest (`ctr image import
/// --base-name NAME` imports it as `NAME:<ref name>`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The `PATH` every image gets unless [`ImageBuilder::env`] replaces it.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to put in an image.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    layers: Vec<PathBuf>,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    ref_name: String,
}

/// Digests of a written image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    /// `sha256:...` of the manifest blob (what `index.json` points to).
    pub manifest_digest: String,
    /// `sha256:...` of the image config blob.
    pub config_digest: String,
    /// One entry per layer, bottom first.
    pub layers: Vec<LayerInfo>,
    /// The `org.opencontainers.image.ref.name` in `index.json`.
    pub ref_name: String,
}

/// One layer of a written image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:...` of the gzipped tar (the blob).
    pub digest: String,
    /// `sha256:...` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Size of the blob in bytes.
    pub size: u64,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An image with no layers, no command, the default `PATH` and the ref
    /// name `latest`.
    pub fn new() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            cmd: Vec::new(),
            entrypoint: Vec::new(),
            env: vec![DEFAULT_PATH_ENV.to_string()],
            working_dir: None,
            ref_name: "latest".to_string(),
        }
    }

    /// The busybox image: one layer (the [`busybox::cached_rootfs`]), `Cmd
    /// ["/bin/sh"]`, the default `PATH`, ref name `latest`.
    pub fn busybox() -> Self {
        Self::new()
            .layer(busybox::cached_rootfs())
            .cmd(&["/bin/sh"])
    }

    /// Adds a layer made of the directory tree `dir` (on top of earlier ones).
    pub fn layer(mut self, dir: impl Into<PathBuf>) -> Self {
        self.layers.push(dir.into());
        self
    }

    /// Sets the config's `Cmd`.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the config's `Entrypoint`.
    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = entrypoint.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Replaces the config's `Env` (`KEY=value` entries).
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env = env.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the config's `WorkingDir`.
    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    /// Sets the ref name annotation in `index.json` (a tag, e.g. `latest`).
    pub fn ref_name(mut self, name: &str) -> Self {
        self.ref_name = name.to_string();
        self
    }

    /// Writes the image as an OCI layout directory at `dir` (created if
    /// needed). Panics on I/O errors.
    pub fn write_dir(&self, dir: &Path) -> ImageLayout {
        self.try_write_dir(dir)
            .unwrap_or_else(|e| panic!("writing OCI layout {}: {e}", dir.display()))
    }

    /// Writes the image as an OCI layout tar at `tar_path` (what `ctr image
    /// import` and `skopeo copy oci-archive:` read). Panics on I/O errors.
    pub fn write_tar(&self, tar_path: &Path) -> ImageLayout {
        let staging = tempfile::Builder::new()
            .prefix("husk-image-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir for the layout: {e}"));
        let info = self.write_dir(staging.path());
        let file = fs::File::create(tar_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", tar_path.display()));
        let mut w = io::BufWriter::new(file);
        write_tar(staging.path(), &mut w)
            .and_then(|()| w.flush())
            .unwrap_or_else(|e| panic!("writing {}: {e}", tar_path.display()));
        info
    }

    fn try_write_dir(&self, dir: &Path) -> io::Result<ImageLayout> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs)?;

        let mut layers = Vec::new();
        let mut layer_descriptors = Vec::new();
        for layer_dir in &self.layers {
            let mut tar = Vec::new();
            write_tar(layer_dir, &mut tar)?;
            let gz = gzip(&tar)?;
            let info = LayerInfo {
                digest: sha256_digest(&gz),
                diff_id: sha256_digest(&tar),
                size: gz.len() as u64,
            };
            write_blob(&blobs, &gz)?;
            layer_descriptors.push(descriptor(MediaType::ImageLayerGzip, &gz));
            layers.push(info);
        }

        let mut config = ConfigBuilder::default().env(self.env.clone());
        if !self.cmd.is_empty() {
            config = config.cmd(self.cmd.clone());
        }
        if !self.entrypoint.is_empty() {
            config = config.entrypoint(self.entrypoint.clone());
        }
        if let Some(wd) = &self.working_dir {
            config = config.working_dir(wd.clone());
        }
        let image_config = ImageConfigurationBuilder::default()
            .architecture(host_arch())
            .os(Os::Linux)
            .config(config.build().map_err(io::Error::other)?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                    .build()
                    .map_err(io::Error::other)?,
            )
            .build()
            .map_err(io::Error::other)?;
        let config_bytes = image_config
            .to_string()
            .map_err(io::Error::other)?
            .into_bytes();
        write_blob(&blobs, &config_bytes)?;

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config_bytes))
            .layers(layer_descriptors)
            .build()
            .map_err(io::Error::other)?;
        let manifest_bytes = manifest.to_string().map_err(io::Error::other)?.into_bytes();
        write_blob(&blobs, &manifest_bytes)?;

        let mut manifest_desc = descriptor(MediaType::ImageManifest, &manifest_bytes);
        manifest_desc.set_annotations(Some(HashMap::from([(
            REF_NAME_ANNOTATION.to_string(),
            self.ref_name.clone(),
        )])));
        manifest_desc.set_platform(Some(
            PlatformBuilder::default()
                .architecture(host_arch())
                .os(Os::Linux)
                .build()
                .map_err(io::Error::other)?,
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_desc])
            .build()
            .map_err(io::Error::other)?;
        fs::write(
            dir.join("index.json"),
            index.to_string().map_err(io::Error::other)?,
        )?;
        let layout = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()
            .map_err(io::Error::other)?;
        fs::write(
            dir.join("oci-layout"),
            layout.to_string().map_err(io::Error::other)?,
        )?;

        Ok(ImageLayout {
            manifest_digest: sha256_digest(&manifest_bytes),
            config_digest: sha256_digest(&config_bytes),
            layers,
            ref_name: self.ref_name.clone(),
        })
    }
}

/// `sha256:<64 hex digits>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image-spec architecture of this host (`amd64`, `arm64`, ...).
pub fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        "x86" => Arch::i386,
        other => Arch::from(other),
    }
}

fn descriptor(media_type: MediaType, bytes: &[u8]) -> Descriptor {
    let digest: Sha256Digest = sha256_hex(bytes)
        .parse()
        .expect("sha256 hex is a valid digest");
    Descriptor::new(media_type, bytes.len() as u64, digest)
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::write(blobs.join(sha256_hex(bytes)), bytes)
}

/// Gzips `bytes` (deterministically: no name, mtime 0).
pub fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

/// Writes a tar of the tree under `dir` (entries relative to it, no `./`
/// prefix, sorted, mtime 0, numeric uid/gid and permission bits from the
/// files). Directories, regular files and symlinks only.
pub fn write_tar(dir: &Path, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    append_tree(&mut builder, dir, Path::new(""))?;
    builder.into_inner()?.flush()
}

fn append_tree<W: Write>(b: &mut tar::Builder<W>, base: &Path, rel: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<_> = fs::read_dir(base.join(rel))?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let meta = fs::symlink_metadata(e.path())?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(0);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, &path, io::empty())?;
            append_tree(b, base, &path)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, &path, fs::read_link(e.path())?)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            b.append_data(&mut h, &path, fs::File::open(e.path())?)?;
        } else {
            return Err(io::Error::other(format!(
                "{}: only directories, regular files and symlinks go into a layer",
                e.path().display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn sample_rootfs(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        symlink("tool", dir.join("bin/alias")).unwrap();
        fs::write(dir.join("etc/motd"), b"hello\n").unwrap();
    }

    fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn digests_match_blob_bytes() {
        let t = tempfile::Builder::new()
            .prefix("husk-image-")
            .tempdir()
            .unwrap();
        let rootfs = t.path().join("rootfs");
        sample_rootfs(&rootfs);
        let layout_dir = t.path().join("layout");
        let info = ImageBuilder::new()
            .layer(&rootfs)
            .cmd(&["/bin/tool"])
            .ref_name("v1")
            .write_dir(&layout_dir);

        let index = ImageIndex::from_file(layout_dir.join("index.json")).unwrap();
        assert_eq!(index.schema_version(), 2);
        assert_eq!(index.manifests().len(), 1);
        let m = &index.manifests()[0];
        assert_eq!(m.media_type(), &MediaType::ImageManifest);
        assert_eq!(m.digest().to_string(), info.manifest_digest);
        assert_eq!(m.annotations().as_ref().unwrap()[REF_NAME_ANNOTATION], "v1");
        let manifest_bytes = read_blob(&layout_dir, &info.manifest_digest);
        assert_eq!(sha256_digest(&manifest_bytes), info.manifest_digest);
        assert_eq!(m.size(), manifest_bytes.len() as u64);

        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).unwrap();
        let config_bytes = read_blob(&layout_dir, &info.config_digest);
        assert_eq!(manifest.config().digest().to_string(), info.config_digest);
        assert_eq!(sha256_digest(&config_bytes), info.config_digest);
        assert_eq!(manifest.config().size(), config_bytes.len() as u64);
        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);

        assert_eq!(manifest.layers().len(), 1);
        let layer = &manifest.layers()[0];
        let layer_bytes = read_blob(&layout_dir, layer.digest().as_ref());
        assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);
        assert_eq!(sha256_digest(&layer_bytes), info.layers[0].digest);
        assert_eq!(layer.size(), layer_bytes.len() as u64);

        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).unwrap();
        assert_eq!(
            config.rootfs().diff_ids(),
            &vec![sha256_digest(&gunzip(&layer_bytes))]
        );
        assert_eq!(config.rootfs().diff_ids()[0], info.layers[0].diff_id);
        assert_eq!(
            config.config().as_ref().unwrap().cmd().as_ref().unwrap(),
            &vec!["/bin/tool".to_string()]
        );
        assert_eq!(config.os(), &Os::Linux);
        assert_eq!(config.architecture(), &host_arch());

        let oci_layout: serde_json::Value =
            serde_json::from_slice(&fs::read(layout_dir.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(
            oci_layout,
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );
    }

    #[test]
    fn layer_tar_has_files_links_and_dirs() {
        let t = tempfile::Builder::new()
            .prefix("husk-image-")
            .tempdir()
            .unwrap();
        sample_rootfs(t.path());
        let mut tar_bytes = Vec::new();
        write_tar(t.path(), &mut tar_bytes).unwrap();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            assert_eq!(entry.header().mtime().unwrap(), 0);
            let detail = match kind {
                tar::EntryType::Symlink => entry
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                tar::EntryType::Regular => {
                    let mut s = String::new();
                    entry.read_to_string(&mut s).unwrap();
                    s
                }
                _ => String::new(),
            };
            seen.push((path, format!("{kind:?}"), detail));
        }
        let names: Vec<&str> = seen
            .iter()
            .map(|(p, _, _)| p.trim_end_matches('/'))
            .collect();
        assert_eq!(
            names,
            ["bin", "bin/alias", "bin/tool", "etc", "etc/motd"],
            "{seen:?}"
        );
        assert_eq!(seen[1].2, "tool");
        assert_eq!(seen[4].2, "hello\n");
    }

    #[test]
    fn layouts_are_deterministic() {
        let t = tempfile::Builder::new()
            .prefix("husk-image-")
            .tempdir()
            .unwrap();
        let rootfs = t.path().join("rootfs");
        sample_rootfs(&rootfs);
        let a = ImageBuilder::new()
            .layer(&rootfs)
            .write_dir(&t.path().join("a"));
        let b = ImageBuilder::new()
            .layer(&rootfs)
            .write_dir(&t.path().join("b"));
        assert_eq!(a, b);
        let c = ImageBuilder::new()
            .layer(&rootfs)
            .cmd(&["/bin/other"])
            .write_dir(&t.path().join("c"));
        assert_ne!(a.config_digest, c.config_digest);
        assert_eq!(a.layers, c.layers);
    }

    #[test]
    fn tar_of_layout_has_layout_files() {
        let t = tempfile::Builder::new()
            .prefix("husk-image-")
            .tempdir()
            .unwrap();
        let rootfs = t.path().join("rootfs");
        sample_rootfs(&rootfs);
        let tar_path = t.path().join("img.tar");
        let info = ImageBuilder::new().layer(&rootfs).write_tar(&tar_path);
        let bytes = fs::read(&tar_path).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "oci-layout".to_string(),
            "index.json".to_string(),
            format!(
                "blobs/sha256/{}",
                info.manifest_digest.trim_start_matches("sha256:")
            ),
            format!(
                "blobs/sha256/{}",
                info.layers[0].digest.trim_start_matches("sha256:")
            ),
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
