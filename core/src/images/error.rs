//! The image store's errors. Each message says what went wrong, on what, and
//! what to do next.

use std::path::PathBuf;

/// A `Result` with an [`ImageError`].
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Everything the image store can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A string is not a `sha256:<64 lowercase hex>` digest.
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),

    /// A blob's bytes do not hash to the digest it was named by.
    #[error(
        "blob {expected}: its content hashes to {actual}; the archive is corrupt or was \
         tampered with. Nothing was stored: re-export the image and import it again"
    )]
    DigestMismatch { expected: String, actual: String },

    /// A blob's length differs from its descriptor's size.
    #[error(
        "blob {digest}: {actual} bytes where its descriptor says {expected}; the archive is \
         corrupt. Nothing was stored: re-export the image and import it again"
    )]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// An uncompressed layer does not match the config's `rootfs.diff_ids`.
    #[error(
        "layer {layer}: its uncompressed tar hashes to {actual}, but the image config says \
         diff_id {expected}; the image is inconsistent. No snapshot was kept: rebuild the image"
    )]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },

    /// A layer entry would escape the snapshot, or is otherwise refused.
    #[error(
        "layer entry {entry:?}: {reason}. The layer was refused and no snapshot was kept: \
         the image is unsafe to unpack; rebuild it without that entry"
    )]
    UnsafeEntry { entry: String, reason: String },

    /// The archive is not a valid OCI layout or docker archive.
    #[error("{source_path}: {detail}")]
    BadArchive { source_path: String, detail: String },

    /// A blob the image needs is missing from the archive or the store.
    #[error(
        "blob {digest} ({what}) is not in {location}; the archive is incomplete: export \
         the image again with all its layers"
    )]
    MissingBlob {
        digest: String,
        what: String,
        location: String,
    },

    /// No manifest for this host's platform in a multi-platform index.
    #[error(
        "{source_path}: no manifest for {platform} (found: {found}); export the image for \
         {platform}"
    )]
    NoPlatform {
        source_path: String,
        platform: String,
        found: String,
    },

    /// A media type the store cannot handle.
    #[error("{what}: unsupported media type {media_type:?}; {hint}")]
    UnsupportedMediaType {
        what: String,
        media_type: String,
        hint: String,
    },

    /// The archive names no image and the caller gave no name.
    #[error(
        "{source_path}: the archive does not name its image (no org.opencontainers.image.ref.name \
         annotation or RepoTags); give it a name (ImportOptions::name, `--name NAME`)"
    )]
    Unnamed { source_path: String },

    /// The archive holds several images but the caller gave one name.
    #[error(
        "{source_path}: the archive holds {count} images, so one name cannot be given to all; \
         import without a name to use their own names"
    )]
    AmbiguousName { source_path: String, count: usize },

    /// An image name is not acceptable.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// No image by that name.
    #[error("no image named {name:?} in the store; `husk images` lists the images there are")]
    ImageNotFound { name: String },

    /// The store's metadata could not be parsed.
    #[error(
        "{path}: {detail}; the store's metadata is damaged: move it aside and import the \
         images again"
    )]
    CorruptStore { path: PathBuf, detail: String },

    /// Mounting or unmounting an overlay failed.
    #[error("{context}: {source}; {hint}")]
    Mount {
        context: String,
        #[source]
        source: nix::Error,
        hint: String,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`ImageError::UnsafeEntry`].
    pub fn unsafe_entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::UnsafeEntry {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}

/// Adds context to `io::Result`s.
pub trait IoContext<T> {
    /// Turns the error into an [`ImageError::Io`] whose context is `f()`.
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::io(f(), e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ImageError::io(f(), std::io::Error::from(e)))
    }
}
