//! The library's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
    InvalidDigest(String),
    #[error("digest mismatch for {expected}: content has {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: descriptor says {expected} bytes, content has {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0} not found in the content store")]
    BlobNotFound(String),
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("no manifest for platform {platform} in image index {reference}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("registry error for {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("hostile layer {layer}: entry {entry:?}: {reason}")]
    HostileLayer {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer} is larger than the limit of {limit} bytes uncompressed")]
    LayerTooLarge { layer: String, limit: u64 },
    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },
    #[error("snapshot {0:?} not found")]
    SnapshotNotFound(String),
    #[error("snapshot {0:?} already exists")]
    SnapshotExists(String),
    #[error("snapshot {key}: {reason}")]
    Snapshot { key: String, reason: String },
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// A layer whose unpack needs the layers below it (a parent directory or a hard link
    /// target outside the layer) was unpacked before they were known; the caller retries
    /// once they are committed.
    #[error("layer {0} needs its parent layers to unpack")]
    NeedsParents(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] naming the operation and the path.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub(crate) fn malformed(what: impl Into<String>, reason: impl ToString) -> Error {
    Error::Malformed {
        what: what.into(),
        reason: reason.to_string(),
    }
}
