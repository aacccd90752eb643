//! Fixtures for keelson's integration tests, shared with `bench/`.
//!
//! Everything here acts on the real machine (the tests run as root inside a VM) and cleans up
//! after itself on `Drop`, also when a test fails half-way:
//!
//! - [`Bundle`]: an OCI bundle with a static-busybox rootfs and the `runc spec` default config.
//! - [`CgroupScope`]: a uniquely named cgroup below this process's own cgroup in every hierarchy.
//! - [`Netns`]: a named network namespace (`ip netns add`).
//! - [`Runtime`]: a runc-compatible CLI (keelson, runc or crun) with its own `--root`, and
//!   [`ContainerGuard`], which force-deletes a container however the test ends.
//! - [`probe()`]: run a shell script inside a bundle and get its output and exit code.

pub mod bounded;
pub mod bundle;
pub mod caps;
pub mod cgroup;
pub mod cni;
pub mod console;
pub mod containerd;
pub mod cri;
pub mod cri_memory;
pub mod cri_stack;
pub mod images;
pub mod kubelet;
pub mod mountinfo;
pub mod netns;
pub mod placement;
pub mod podman;
pub mod probe;
pub mod procs;
pub mod registry;
pub mod regproxy;
pub mod runtime;
pub mod spec;
pub mod unique;

pub use bundle::Bundle;
pub use cgroup::CgroupScope;
pub use netns::Netns;
pub use probe::probe;
pub use runtime::{CmdOutput, ContainerGuard, Runtime};
