//! Registry credentials and host settings.

use std::collections::HashMap;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Credentials for one pull, in the shape of CRI's `AuthConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthConfig {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// base64 of `username:password` (what `~/.docker/config.json` holds).
    #[serde(default)]
    pub auth: String,
    #[serde(default)]
    pub server_address: String,
    /// An OAuth2 refresh token: not supported yet.
    #[serde(default)]
    pub identity_token: String,
    /// A bearer token sent as is.
    #[serde(default)]
    pub registry_token: String,
}

impl AuthConfig {
    /// Basic credentials.
    pub fn basic(username: &str, password: &str) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            ..Default::default()
        }
    }

    /// The oci-client form: anonymous, basic or bearer.
    pub fn to_registry_auth(&self) -> Result<RegistryAuth> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            return Err(Error::Unimplemented(
                "AuthConfig.identity_token (OAuth2 refresh tokens)".into(),
            ));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|e| Error::InvalidReference {
                    reference: "AuthConfig.auth".into(),
                    reason: format!("not base64: {e}"),
                })?;
            let s = String::from_utf8(raw).map_err(|_| Error::InvalidReference {
                reference: "AuthConfig.auth".into(),
                reason: "not UTF-8".into(),
            })?;
            let (u, p) = s.split_once(':').ok_or_else(|| Error::InvalidReference {
                reference: "AuthConfig.auth".into(),
                reason: "not username:password".into(),
            })?;
            return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// Where and how to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    /// Registries (`host` or `host:port`) reached over plain HTTP. `localhost`, `127.0.0.1`
    /// and `::1` always are, as in containerd.
    pub plain_http: Vec<String>,
    /// Mirrors tried in order before the registry itself: registry → `[http://]host[:port]`.
    pub mirrors: HashMap<String, Vec<String>>,
}

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
}

impl RegistryHosts {
    fn is_plain(&self, host: &str) -> bool {
        let bare = crate::reference::ImageRef::host_of(host);
        matches!(bare, "localhost" | "127.0.0.1" | "::1")
            || self.plain_http.iter().any(|h| h == host || h == bare)
    }

    /// The endpoints for `registry`: its mirrors, then itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for m in self.mirrors.get(registry).into_iter().flatten() {
            let (host, plain) = if let Some(h) = m.strip_prefix("http://") {
                (h.trim_end_matches('/').to_string(), true)
            } else {
                let h = m
                    .strip_prefix("https://")
                    .unwrap_or(m)
                    .trim_end_matches('/');
                (h.to_string(), self.is_plain(h))
            };
            out.push(Endpoint {
                host,
                plain_http: plain,
            });
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: self.is_plain(registry),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        assert!(matches!(
            AuthConfig::default().to_registry_auth().unwrap(),
            RegistryAuth::Anonymous
        ));
        let a = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p"),
            ..Default::default()
        };
        assert!(
            matches!(a.to_registry_auth().unwrap(), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        let b = AuthConfig {
            registry_token: "t".into(),
            ..Default::default()
        };
        assert!(matches!(b.to_registry_auth().unwrap(), RegistryAuth::Bearer(t) if t == "t"));
    }

    #[test]
    fn endpoints_with_mirrors() {
        let mut h = RegistryHosts::default();
        h.mirrors
            .insert("docker.io".into(), vec!["http://m:5000".into()]);
        let e = h.endpoints("docker.io");
        assert_eq!(
            e[0],
            Endpoint {
                host: "m:5000".into(),
                plain_http: true
            }
        );
        assert_eq!(
            e[1],
            Endpoint {
                host: "docker.io".into(),
                plain_http: false
            }
        );
        assert!(h.endpoints("127.0.0.1:5000")[0].plain_http);
    }
}
