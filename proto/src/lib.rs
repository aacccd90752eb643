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

        /// Honours the `debug_redact` option on the credential fields:
        /// they print as `[redacted]` (or `""` when empty), so a logged
        /// `PullImageRequest` does not leak registry secrets.
        impl std::fmt::Debug for AuthConfig {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fn secret(s: &str) -> &'static str {
                    if s.is_empty() { "" } else { "[redacted]" }
                }
                f.debug_struct("AuthConfig")
                    .field("username", &self.username)
                    .field("password", &secret(&self.password))
                    .field("auth", &secret(&self.auth))
                    .field("server_address", &self.server_address)
                    .field("identity_token", &secret(&self.identity_token))
                    .field("registry_token", &secret(&self.registry_token))
                    .finish()
            }
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of `cri/api.proto` (with
/// source info), as produced by `protox` in the build script.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

#[cfg(test)]
mod tests {
    use super::runtime::v1::{AuthConfig, ImageSpec, PullImageRequest};

    #[test]
    fn auth_config_debug_redacts_secrets() {
        let req = PullImageRequest {
            image: Some(ImageSpec {
                image: "registry.example/app:1".into(),
                ..Default::default()
            }),
            auth: Some(AuthConfig {
                username: "robot".into(),
                password: "pw-secret".into(),
                auth: "YXV0aC1zZWNyZXQ=".into(),
                server_address: "registry.example".into(),
                identity_token: "id-secret".into(),
                registry_token: String::new(),
            }),
            sandbox_config: None,
        };
        let shown = format!("{req:?}");
        for secret in ["pw-secret", "YXV0aC1zZWNyZXQ=", "id-secret"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains(r#"username: "robot""#), "{shown}");
        assert!(
            shown.contains(r#"server_address: "registry.example""#),
            "{shown}"
        );
        assert!(shown.contains(r#"password: "[redacted]""#), "{shown}");
        assert!(shown.contains(r#"registry_token: """#), "{shown}");
    }
}
