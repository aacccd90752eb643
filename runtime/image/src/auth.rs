//! Registry credentials and host settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

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
    /// An OAuth2 refresh token: exchanged at the registry's token endpoint (an OAuth2 POST
    /// with `grant_type=refresh_token`) for access tokens, as containerd does.
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

    /// The OAuth2 refresh token to exchange, when the pull uses one (an identity token and
    /// no registry token).
    pub fn refresh_token(&self) -> Option<&str> {
        (self.registry_token.is_empty() && !self.identity_token.is_empty())
            .then_some(self.identity_token.as_str())
    }

    /// The oci-client form: anonymous, basic or bearer. With an identity token it is
    /// anonymous: the refresh token ([`AuthConfig::refresh_token`]) is the credential, used by
    /// the store's own client.
    pub fn to_registry_auth(&self) -> Result<RegistryAuth> {
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            return Ok(RegistryAuth::Anonymous);
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
///
/// Filled by hand or from a containerd-style `certs.d` directory
/// ([`RegistryHosts::load_dir`]): `<dir>/<registry host>/hosts.toml` with `server = URL` and
/// `[host."URL"]` tables (`capabilities`, `skip_verify`, `ca`) tried in file order before the
/// server.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    /// Registries (`host` or `host:port`) reached over plain HTTP. `localhost`, `127.0.0.1`
    /// and `::1` always are, as in containerd.
    pub plain_http: Vec<String>,
    /// Mirrors tried in order before the registry itself: registry → `[http://]host[:port]`.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Where a registry really is (`server` in hosts.toml): registry → `[http[s]://]host[:port]`.
    pub servers: HashMap<String, String>,
    /// TLS and request settings per endpoint host (`host[:port]`).
    pub options: HashMap<String, HostOptions>,
}

/// Settings of one endpoint host (hosts.toml's per-host keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostOptions {
    /// Do not verify the TLS certificate (`skip_verify`).
    pub skip_verify: bool,
    /// PEM CA certificates trusted for this host in addition to the system's (`ca`).
    pub ca: Vec<PathBuf>,
    /// TLS client certificates: (PEM certificate, PKCS#8 PEM key; `None`: the key is in the
    /// certificate's file) (`client`). The first one is presented.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Headers sent with every request to the host (`header`; a name may repeat).
    pub headers: Vec<(String, String)>,
    /// The URL's path is the API root, `/v2` is not added (`override_path`).
    pub override_path: bool,
}

impl HostOptions {
    /// Whether oci-client cannot reach the host (extra headers, a client identity or another
    /// API path): the store's own small client does.
    pub(crate) fn needs_direct(&self) -> bool {
        !self.headers.is_empty() || !self.client.is_empty() || self.override_path
    }
}

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    /// The URL's path (`/custom/v2` in `https://host/custom/v2`), used with `override_path`.
    pub path: String,
    pub plain_http: bool,
    pub options: HostOptions,
}

#[derive(Deserialize)]
struct HostsFile {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    host: toml::Table,
    #[serde(flatten)]
    server_entry: HostEntry,
}

#[derive(Deserialize, Default)]
struct HostEntry {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: bool,
    #[serde(default)]
    ca: Option<StringOrList>,
    #[serde(default)]
    client: Option<toml::Value>,
    #[serde(default)]
    header: Option<toml::Table>,
    #[serde(default)]
    override_path: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl HostEntry {
    /// The options, with relative paths taken from `base` (the hosts.toml's directory, as
    /// containerd does).
    fn options(&self, base: &Path, file: &Path) -> Result<HostOptions> {
        let bad = |what: String| crate::error::malformed(file.display().to_string(), what);
        let ca = match &self.ca {
            None => Vec::new(),
            Some(StringOrList::One(p)) => vec![p.clone()],
            Some(StringOrList::Many(v)) => v.clone(),
        };
        let path_of = |v: &toml::Value| -> Result<PathBuf> {
            v.as_str()
                .map(|p| base.join(p))
                .ok_or_else(|| bad(format!("client: {v:?} is not a path")))
        };
        let pair = |v: &toml::Value| -> Result<(PathBuf, Option<PathBuf>)> {
            match v {
                toml::Value::String(_) => Ok((path_of(v)?, None)),
                toml::Value::Array(a) if a.len() == 2 => {
                    let key = match a[1].as_str() {
                        Some("") => None,
                        _ => Some(path_of(&a[1])?),
                    };
                    Ok((path_of(&a[0])?, key))
                }
                other => Err(bad(format!(
                    "client: {other:?} is neither a path nor [cert, key]"
                ))),
            }
        };
        let client = match &self.client {
            None => Vec::new(),
            Some(v @ toml::Value::String(_)) => vec![pair(v)?],
            Some(toml::Value::Array(a)) if a.iter().all(|x| x.is_array()) => {
                a.iter().map(pair).collect::<Result<_>>()?
            }
            Some(v) => vec![pair(v)?],
        };
        let mut headers = Vec::new();
        for (k, v) in self.header.iter().flatten() {
            match v {
                toml::Value::String(s) => headers.push((k.clone(), s.clone())),
                toml::Value::Array(a) => {
                    for x in a {
                        let s = x
                            .as_str()
                            .ok_or_else(|| bad(format!("header {k}: {x:?} is not a string")))?;
                        headers.push((k.clone(), s.to_string()));
                    }
                }
                other => return Err(bad(format!("header {k}: {other:?} is not a string"))),
            }
        }
        Ok(HostOptions {
            skip_verify: self.skip_verify,
            ca: ca.into_iter().map(|p| base.join(p)).collect(),
            client,
            headers,
            override_path: self.override_path,
        })
    }
}

impl RegistryHosts {
    fn is_plain(&self, host: &str) -> bool {
        let bare = crate::reference::ImageRef::host_of(host);
        matches!(bare, "localhost" | "127.0.0.1" | "::1")
            || self.plain_http.iter().any(|h| h == host || h == bare)
    }

    fn endpoint(&self, url: &str) -> Endpoint {
        // An explicit scheme decides; a bare host is plain HTTP when configured so (and for
        // localhost).
        let (host, scheme) = if let Some(h) = url.strip_prefix("http://") {
            (h, Some(true))
        } else if let Some(h) = url.strip_prefix("https://") {
            (h, Some(false))
        } else {
            (url, None)
        };
        // hosts.toml URLs may carry the API path (`https://host/v2`); without
        // `override_path` the client adds its own.
        let (host, path) = match host.find('/') {
            Some(i) => (host[..i].to_string(), host[i..].to_string()),
            None => (host.to_string(), String::new()),
        };
        Endpoint {
            options: self.options.get(&host).cloned().unwrap_or_default(),
            path,
            plain_http: scheme.unwrap_or_else(|| self.is_plain(&host)),
            host,
        }
    }

    /// The endpoints for `registry`: its mirrors, then its server (itself by default).
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| self.endpoint(m))
            .collect();
        out.push(match self.servers.get(registry) {
            Some(server) => self.endpoint(server),
            None => self.endpoint(registry),
        });
        out
    }

    /// Reads `<dir>/<registry>/hosts.toml` files (containerd's format; a missing `dir` is an
    /// empty configuration). Hosts without the `pull` capability are skipped.
    pub fn load_dir(dir: &std::path::Path) -> Result<Self> {
        let mut hosts = Self::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(hosts),
            Err(e) => return Err(crate::error::io_err("read dir", dir)(e)),
        };
        for e in entries {
            let e = e.map_err(crate::error::io_err("read dir", dir))?;
            let registry = e.file_name().to_string_lossy().into_owned();
            let file = e.path().join("hosts.toml");
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(crate::error::io_err("read", &file)(err)),
            };
            let parsed: HostsFile = toml::from_str(&text)
                .map_err(|err| crate::error::malformed(file.display().to_string(), err))?;
            let base = e.path();
            let mut mirrors = Vec::new();
            for (url, v) in parsed.host {
                let entry: HostEntry = v.try_into().map_err(|err| {
                    crate::error::malformed(format!("{}: host {url:?}", file.display()), err)
                })?;
                if entry
                    .capabilities
                    .as_ref()
                    .is_some_and(|c| !c.iter().any(|c| c == "pull"))
                {
                    continue;
                }
                let ep = hosts.endpoint(&url);
                hosts.options.insert(ep.host, entry.options(&base, &file)?);
                mirrors.push(url);
            }
            if !mirrors.is_empty() {
                hosts.mirrors.insert(registry.clone(), mirrors);
            }
            let server_url = parsed.server.clone().unwrap_or_else(|| registry.clone());
            let opts = parsed.server_entry.options(&base, &file)?;
            if opts != HostOptions::default() {
                let ep = hosts.endpoint(&server_url);
                hosts.options.insert(ep.host, opts);
            }
            if let Some(server) = parsed.server {
                hosts.servers.insert(registry, server);
            }
        }
        Ok(hosts)
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
        let i = AuthConfig {
            identity_token: "r".into(),
            ..Default::default()
        };
        assert_eq!(i.refresh_token(), Some("r"));
        assert!(matches!(
            i.to_registry_auth().unwrap(),
            RegistryAuth::Anonymous
        ));
        assert_eq!(b.refresh_token(), None);
    }

    #[test]
    fn endpoints_with_mirrors() {
        let mut h = RegistryHosts::default();
        h.mirrors
            .insert("docker.io".into(), vec!["http://m:5000".into()]);
        let e = h.endpoints("docker.io");
        assert_eq!(e[0].host, "m:5000");
        assert!(e[0].plain_http);
        assert_eq!(e[1].host, "docker.io");
        assert!(!e[1].plain_http);
        assert!(h.endpoints("127.0.0.1:5000")[0].plain_http);
    }

    #[test]
    fn hosts_toml() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("docker.io");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"server = "https://registry-1.docker.io"
[host."http://mirror-b:5000"]
  capabilities = ["pull", "resolve"]
[host."https://mirror-a/v2"]
  capabilities = ["pull"]
  skip_verify = true
[host."https://push-only"]
  capabilities = ["push"]
"#,
        )
        .unwrap();
        let bad = dir.path().join("bad.example");
        std::fs::create_dir(&bad).unwrap();
        let h = RegistryHosts::load_dir(dir.path().join("missing").as_path()).unwrap();
        assert!(h.mirrors.is_empty());
        std::fs::write(bad.join("hosts.toml"), "server = [").unwrap();
        assert!(RegistryHosts::load_dir(dir.path()).is_err());
        std::fs::remove_dir_all(&bad).unwrap();
        let h = RegistryHosts::load_dir(dir.path()).unwrap();
        let e = h.endpoints("docker.io");
        let got: Vec<(&str, bool, bool)> = e
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.options.skip_verify))
            .collect();
        assert_eq!(
            got,
            [
                ("mirror-b:5000", true, false),
                ("mirror-a", false, true),
                ("registry-1.docker.io", false, false)
            ]
        );

        let t = dir.path().join("tls.example");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(
            t.join("hosts.toml"),
            r#"ca = "ca.pem"
[host."https://m.example:5000"]
  ca = ["/abs/a.pem", "b.pem"]
  skip_verify = true
  override_path = true
  client = [["c.pem", "c.key"], ["/d.pem", ""]]
  [host."https://m.example:5000".header]
    x-custom = ["1", "2"]
"#,
        )
        .unwrap();
        let h = RegistryHosts::load_dir(dir.path()).unwrap();
        let e = h.endpoints("tls.example");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].host, "m.example:5000");
        assert_eq!(
            e[0].options,
            HostOptions {
                skip_verify: true,
                ca: vec![PathBuf::from("/abs/a.pem"), t.join("b.pem")],
                client: vec![
                    (t.join("c.pem"), Some(t.join("c.key"))),
                    (PathBuf::from("/d.pem"), None)
                ],
                headers: vec![
                    ("x-custom".into(), "1".into()),
                    ("x-custom".into(), "2".into())
                ],
                override_path: true,
            }
        );
        assert_eq!(e[0].path, "");
        assert_eq!(e[1].host, "tls.example");
        assert!(!e[1].plain_http);
        assert_eq!(e[1].options.ca, vec![t.join("ca.pem")]);
        assert!(!e[1].options.needs_direct());
        assert!(e[0].options.needs_direct());
        // An explicit https:// is TLS even for 127.0.0.1.
        let mut h = RegistryHosts::default();
        h.servers
            .insert("x".into(), "https://127.0.0.1:5000".into());
        assert!(!h.endpoints("x")[0].plain_http);
    }
}
