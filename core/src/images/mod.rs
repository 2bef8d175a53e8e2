//! The image store: content, snapshots and the image index under one root.
//!
//! ```text
//! <root>/lock                              flock: exclusive for writers, shared for readers
//! <root>/images.json                       name -> manifest digest, config digest, chain ids
//! <root>/content/blobs/sha256/<hex>        every blob, verified against its digest
//! <root>/content/ingest/                   temp files being written (never read as content)
//! <root>/snapshots/<chain hex>/fs/         one layer's diff, unpacked, overlayfs format
//! <root>/snapshots/<chain hex>/info.json   chain id, diff id, parent, unpacked size
//! <root>/snapshots/.tmp-*/                 snapshots being unpacked
//! <root>/leases/<id>.json                  chains held by a mounted rootfs (kept by gc)
//! ```
//!
//! | module | concept |
//! | --- | --- |
//! | [`digest`] | `sha256:<hex>` digests, hashing readers, OCI chain ids |
//! | [`content`] | the content-addressed blob store: verified, atomic ingest |
//! | [`archive`] | reading an image archive (directory or tar) file by file |
//! | [`layout`] | OCI image layouts: index.json, nested indexes, platform choice |
//! | [`docker_archive`] | `docker save` archives: manifest.json, RepoTags |
//! | [`compression`] | layer media types and decompression (gzip, zstd, none) |
//! | [`unpack`] | a layer tar onto a directory without ever leaving it |
//! | [`snapshots`] | unpacked layers keyed by chain id |
//! | [`overlay`] | lowerdir lists and overlayfs rootfs mounts |
//! | [`index`] | the crash-safe image index (`images.json`) and atomic writes |
//! | [`lock`] | the store's flock |
//! | [`store`] | [`ImageStore`]: import, list, inspect, rmi, mounts |
//! | [`gc`] | prune: mark and sweep of blobs and snapshots |

pub mod archive;
pub mod compression;
pub mod content;
pub mod digest;
pub mod docker_archive;
pub mod error;
pub mod gc;
pub mod index;
pub mod layout;
pub mod lock;
pub mod overlay;
pub mod snapshots;
pub mod store;
pub mod unpack;

#[cfg(test)]
pub(crate) mod testutil;

pub use digest::{chain_ids, Digest};
pub use error::{ImageError, Result};
pub use gc::PruneReport;
pub use overlay::{RootfsMount, UpperSync};
pub use store::{ImageInspect, ImageStore, ImageSummary, ImportOptions, ImportedImage};
pub use unpack::{DevicePolicy, UnpackOptions, WhiteoutMode};
