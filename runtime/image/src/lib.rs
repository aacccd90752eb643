//! keelson's image store: pull from registries (oci-client), a content store of blobs by
//! digest, image records that survive crashes, safe layer unpack and overlay snapshots.
//!
//! ```text
//! <root>/content/blobs/<alg>/<hex>      verified blobs
//! <root>/content/ingest/                downloads in progress (+ their locks)
//! <root>/snapshots/committed/<chain>/   one unpacked layer per chain ID
//! <root>/snapshots/active/<key>/        containers' upper + work dirs
//! <root>/metadata/images/<hash>.json    one record per image name
//! ```

pub mod auth;
pub mod content;
pub mod digest;
mod direct;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod import;
pub mod meta;
pub mod model;
pub mod pull;
pub mod reference;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use auth::{AuthConfig, RegistryHosts};
pub use digest::Digest;
pub use error::{Error, Result};
pub use model::Platform;
pub use reference::ImageRef;
pub use snapshot::SnapshotterKind;
pub use store::{GcStats, Image, ImageStore, StoreConfig};
pub use unpack::UnpackOptions;
