//! keelsonctl: a CRI client following crictl (commands, flags, tables, JSON), for people
//! and tests driving keelsond, or any CRI runtime, over its gRPC socket.
//!
//! - [`protojson`]: CRI messages to and from JSON, driven by the compiled-in descriptors.
//! - [`config`]: pod and container config files.
//! - [`display`]: tables, sizes, ages, times and name patterns as crictl shows them.

pub mod config;
pub mod display;
pub mod protojson;
