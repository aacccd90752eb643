//! A small distribution client on reqwest for the endpoints whose hosts.toml settings
//! oci-client cannot carry: extra request headers (`header`), a TLS client identity
//! (`client`) and an API path other than `/v2` (`override_path`). It does what the pull needs
//! and nothing more: HEAD and GET of manifests, GET of blobs (with a range to resume), and the
//! auth a registry asks for with `WWW-Authenticate` (Basic, or Bearer: a token from the
//! realm for the challenge's service and scope, with the basic credentials if there are some).

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, HeaderMap, HeaderName, HeaderValue, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;

use crate::auth::Endpoint;

/// A blob body.
pub(crate) type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What the registry said yes to.
#[derive(Clone)]
enum Authorized {
    Nothing,
    Basic,
    Token(String),
}

/// The `client_id` of OAuth2 token requests.
const CLIENT_ID: &str = "keelson-image";

pub(crate) struct Direct {
    http: reqwest::Client,
    /// `scheme://host[:port]<api path>`: requests go to `<base>/<repo>/...`.
    base: String,
    repo: String,
    /// hosts.toml `header`s, sent with every request (a name may repeat).
    headers: HeaderMap,
    auth: RegistryAuth,
    /// An OAuth2 refresh token (CRI's identity token) to exchange for access tokens.
    refresh_token: Option<String>,
    state: Mutex<Authorized>,
}

impl Direct {
    pub(crate) fn new(
        ep: &Endpoint,
        repo: &str,
        auth: RegistryAuth,
        refresh_token: Option<String>,
        ca: Vec<reqwest::Certificate>,
        identity: Option<reqwest::Identity>,
    ) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in &ep.options.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header name {k:?}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| format!("header {k} value {v:?}: {e}"))?;
            headers.append(name, value);
        }
        let mut b = reqwest::Client::builder()
            .danger_accept_invalid_certs(ep.options.skip_verify)
            .danger_accept_invalid_hostnames(ep.options.skip_verify)
            .tls_certs_merge(ca);
        if let Some(id) = identity {
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| format!("client: {e}"))?;
        let scheme = if ep.plain_http { "http" } else { "https" };
        let path = if ep.options.override_path {
            ep.path.trim_end_matches('/').to_string()
        } else {
            "/v2".to_string()
        };
        let state = match &auth {
            RegistryAuth::Bearer(t) => Authorized::Token(t.clone()),
            _ => Authorized::Nothing,
        };
        Ok(Self {
            http,
            base: format!("{scheme}://{}{path}", ep.host),
            repo: repo.to_string(),
            headers,
            auth,
            refresh_token,
            state: Mutex::new(state),
        })
    }

    /// Sends a request, answering one auth challenge.
    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
        offset: Option<u64>,
    ) -> Result<reqwest::Response, String> {
        for attempt in 0..2 {
            let mut rb = self.http.request(method.clone(), url);
            for (k, v) in &self.headers {
                rb = rb.header(k, v);
            }
            if let Some(a) = accept {
                rb = rb.header(ACCEPT, a);
            }
            if let Some(o) = offset {
                rb = rb.header(RANGE, format!("bytes={o}-"));
            }
            rb = match (self.state.lock().await.clone(), &self.auth) {
                (Authorized::Token(t), _) => rb.bearer_auth(t),
                (Authorized::Basic, RegistryAuth::Basic(u, p)) => rb.basic_auth(u, Some(p)),
                _ => rb,
            };
            let resp = rb
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| format!("{method} {url}: 401 without a challenge"))?;
                self.authorize(&challenge).await?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(format!("{method} {url}: {}", resp.status()));
            }
            return Ok(resp);
        }
        Err(format!("{method} {url}: unauthorized"))
    }

    async fn authorize(&self, challenge: &str) -> Result<(), String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            if !matches!(self.auth, RegistryAuth::Basic(..)) {
                return Err("the registry wants basic credentials".into());
            }
            *self.state.lock().await = Authorized::Basic;
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("unsupported auth challenge {challenge:?}"));
        }
        let params = parse_params(params);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or("bearer challenge without a realm")?;
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut query = vec![("scope", scope)];
        if let Some(s) = get("service") {
            query.push(("service", s));
        }
        let rb = match &self.refresh_token {
            // OAuth2 (as containerd's FetchTokenWithOAuth): a form POST to the realm.
            Some(rt) => {
                let mut form = query.clone();
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", rt.clone()));
                form.push(("client_id", CLIENT_ID.into()));
                self.http
                    .post(&realm)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form_encode(&form))
            }
            None => {
                let rb = self.http.get(&realm).query(&query);
                match &self.auth {
                    RegistryAuth::Basic(u, p) => rb.basic_auth(u, Some(p)),
                    _ => rb,
                }
            }
        };
        let resp = rb.send().await.map_err(|e| format!("token {realm}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("token {realm}: {}", resp.status()));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token {realm}: {e}"))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("token {realm}: no token in the answer"))?;
        *self.state.lock().await = Authorized::Token(token.to_string());
        Ok(())
    }

    /// The digest a tag names (HEAD, `Docker-Content-Digest`).
    pub(crate) async fn head_digest(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<String, String> {
        let url = format!("{}/{}/manifests/{reference}", self.base, self.repo);
        let resp = self.send(Method::HEAD, &url, Some(accept), None).await?;
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("HEAD {url}: no Docker-Content-Digest"))
    }

    /// A manifest's bytes (at most `limit`).
    pub(crate) async fn manifest(
        &self,
        reference: &str,
        accept: &str,
        limit: u64,
    ) -> Result<Vec<u8>, String> {
        let url = format!("{}/{}/manifests/{reference}", self.base, self.repo);
        let resp = self.send(Method::GET, &url, Some(accept), None).await?;
        let mut out = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.try_next().await.map_err(|e| format!("GET {url}: {e}"))? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > limit {
                return Err(format!("GET {url}: larger than {limit} bytes"));
            }
        }
        Ok(out)
    }

    /// A blob from `offset`; `true` when the answer is partial (206).
    pub(crate) async fn blob(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(ByteStream, bool), String> {
        let url = format!("{}/{}/blobs/{digest}", self.base, self.repo);
        let resp = self
            .send(Method::GET, &url, None, (offset > 0).then_some(offset))
            .await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        Ok((
            resp.bytes_stream().map_err(std::io::Error::other).boxed(),
            partial,
        ))
    }
}

/// `k="v",k2=v2` (quoted values may hold commas).
/// `application/x-www-form-urlencoded` of `pairs` (unreserved bytes as they are, space as
/// `+`, the rest percent-encoded).
fn form_encode(pairs: &[(&str, String)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((k, v));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_bodies() {
        assert_eq!(
            super::form_encode(&[
                ("scope", "repository:a/b:pull".into()),
                ("refresh_token", "x y&z".into())
            ]),
            "scope=repository%3Aa%2Fb%3Apull&refresh_token=x+y%26z"
        );
    }

    #[test]
    fn challenge_params() {
        let p = super::parse_params(
            r#"realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            p,
            [
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "reg".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        assert_eq!(
            super::parse_params("realm=x, service=y"),
            [
                ("realm".to_string(), "x".to_string()),
                ("service".to_string(), "y".to_string())
            ]
        );
    }
}
