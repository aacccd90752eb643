//! keelson's gRPC interfaces: the Kubernetes CRI API (`runtime.v1`),
//! generated at build time from `cri/api.proto` without a system `protoc`.
//!
//! - [`runtime::v1`]: every message and enum of the package, plus
//!   - `runtime_service_server::{RuntimeService, RuntimeServiceServer}` and
//!     `image_service_server::{ImageService, ImageServiceServer}` to serve,
//!   - `runtime_service_client::RuntimeServiceClient` and
//!     `image_service_client::ImageServiceClient` to call.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, e.g. for gRPC
//!   reflection.

/// CRI protobuf packages.
pub mod runtime {
    /// Package `runtime.v1`: `RuntimeService`, `ImageService` and their
    /// messages.
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of `cri/api.proto` (with
/// source info), as produced by `protox` in the build script.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));
