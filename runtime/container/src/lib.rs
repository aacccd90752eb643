//! keelson's OCI runtime engine: a synchronous implementation of the OCI runtime spec's Linux
//! lifecycle (create, start, state, kill, delete) with namespaces, rootfs and mounts, devices,
//! cgroups v1 and v2, capabilities, rlimits and the rest of `process`.
//!
//! The engine forks without exec, so [`container::create`] must run in a single-threaded
//! process; the `keelson` CLI is one.

pub mod cgroups;
pub mod config;
pub mod console;
pub mod container;
pub mod error;
pub mod events;
pub mod exec;
pub mod fsutil;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod mount_opts;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;

pub use error::{Error, Result};
