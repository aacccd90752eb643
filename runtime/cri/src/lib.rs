//! keelsond: keelson's CRI runtime daemon, and the pieces it runs beside it.
//!
//! - [`cni`]: calling CNI plugins the way libcni does (conflists, result cache, DEL on failure).
//! - [`crilog`]: the CRI container log format (`<RFC3339Nano> <stream> <F|P> <line>`).
//! - [`monitor`]: the per-container monitor process that owns a container's stdio and exit status.

pub mod cni;
pub mod crilog;
pub mod ctl;
pub mod monitor;
pub mod pause;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod store;
pub mod streaming;
