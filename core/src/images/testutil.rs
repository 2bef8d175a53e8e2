//! Test helpers: tars written byte by byte (so hostile paths that the tar
//! crate's builder would refuse can be written), gzip, and OCI layouts.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::digest::Digest;

/// One tar entry.
#[derive(Clone, Debug)]
pub struct E {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub mode: u32,
    pub dev: (u32, u32),
    pub mtime: u64,
}

impl E {
    fn new(path: &str, kind: tar::EntryType, mode: u32) -> E {
        E {
            path: path.as_bytes().to_vec(),
            kind,
            link: Vec::new(),
            data: Vec::new(),
            mode,
            dev: (0, 0),
            mtime: 1_600_000_000,
        }
    }
    pub fn dir(path: &str) -> E {
        E::new(path, tar::EntryType::Directory, 0o755)
    }
    pub fn file(path: &str, data: &[u8]) -> E {
        let mut e = E::new(path, tar::EntryType::Regular, 0o644);
        e.data = data.to_vec();
        e
    }
    pub fn symlink(path: &str, target: &str) -> E {
        let mut e = E::new(path, tar::EntryType::Symlink, 0o777);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn hardlink(path: &str, target: &str) -> E {
        let mut e = E::new(path, tar::EntryType::Link, 0o644);
        e.link = target.as_bytes().to_vec();
        e
    }
    pub fn chardev(path: &str, major: u32, minor: u32) -> E {
        let mut e = E::new(path, tar::EntryType::Char, 0o666);
        e.dev = (major, minor);
        e
    }
    pub fn fifo(path: &str) -> E {
        E::new(path, tar::EntryType::Fifo, 0o600)
    }
    pub fn mode(mut self, mode: u32) -> E {
        self.mode = mode;
        self
    }
}

/// A tar of `entries`, header fields written raw: no path checks at all.
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            assert!(e.path.len() < 100 && e.link.len() < 100, "short names only");
            old.name[..e.path.len()].copy_from_slice(&e.path);
            old.linkname[..e.link.len()].copy_from_slice(&e.link);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn put(blobs: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    fs::write(blobs.join(d.hex()), bytes).unwrap();
    d
}

/// Writes an OCI layout with one image of `layers` (uncompressed tars,
/// stored gzipped) named `ref_name`; returns the manifest digest.
pub fn write_layout(dir: &Path, layers: &[Vec<u8>], ref_name: &str, cmd: &[&str]) -> Digest {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let gz = gzip(l);
        let d = put(&blobs, &gz);
        diff_ids.push(Digest::of(l).to_string());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(), "size": gz.len(),
        }));
    }
    let (os, arch) = super::layout::host_platform();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": os,
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1:2"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = put(&blobs, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(&blobs, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(), "size": manifest.len(),
            "annotations": HashMap::from([("org.opencontainers.image.ref.name", ref_name)]),
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}
