//! keelson's CNI plugins: `bridge`, `host-local`, `loopback` and `portmap`, drop-in replacements
//! for the reference plugins of containernetworking/plugins.
//!
//! Each binary is a thin `main` around [`skel::run`] with its plugin's command handlers.

pub mod bridge;
pub mod conntrack;
pub mod error;
pub mod hostlocal;
pub mod ipam;
pub mod ipmasq;
pub mod ipt;
pub mod loopback;
pub mod netlink;
pub mod nft;
pub mod ns;
pub mod portmap;
pub mod portmap_ipt;
pub mod skel;
pub mod sysctl;
pub mod types;

pub use error::{CniError, Code};
