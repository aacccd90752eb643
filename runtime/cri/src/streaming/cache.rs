//! The request cache: what an Exec/Attach/PortForward RPC asked for, kept under a single-use
//! random token until the client connects to the URL carrying it.
//!
//! Like the kubelet's streaming library: tokens are 8 URL-safe base64 characters, they expire
//! one minute after the RPC, at most 1000 requests wait at once (more is `ResourceExhausted`),
//! and consuming a token removes it whether or not it had expired.

use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token stays valid.
pub const TTL: Duration = Duration::from_secs(60);
/// How many requests may wait for their client at once.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Characters in a token.
pub const TOKEN_LEN: usize = 8;

/// Which of stdin, stdout and stderr the client wants, and whether it is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StdioOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A streaming request waiting for its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StdioOptions,
    },
    Attach {
        container_id: String,
        opts: StdioOptions,
    },
    PortForward {
        sandbox_id: String,
        ports: Vec<i32>,
    },
}

impl StreamRequest {
    /// The first path segment of the request's URL.
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

/// Why a request was not cached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("maximum number of in-flight requests exceeded")]
    TooManyInFlight,
    #[error("generating a token: {0}")]
    Token(String),
}

#[derive(Debug)]
struct Entry {
    req: StreamRequest,
    expires: Instant,
}

/// Requests by token.
#[derive(Debug, Default)]
pub struct RequestCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RequestCache {
    /// Caches `req` and returns its token.
    pub fn insert(&self, req: StreamRequest) -> Result<String, CacheError> {
        self.insert_at(req, Instant::now())
    }

    /// The request of `token`, removed from the cache; `None` when unknown or expired.
    pub fn consume(&self, token: &str) -> Option<StreamRequest> {
        self.consume_at(token, Instant::now())
    }

    /// How many requests wait (expired ones included until the next insert).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_at(&self, req: StreamRequest, now: Instant) -> Result<String, CacheError> {
        let mut m = self.lock();
        m.retain(|_, e| e.expires >= now);
        if m.len() >= MAX_IN_FLIGHT {
            return Err(CacheError::TooManyInFlight);
        }
        for _ in 0..10 {
            let token = new_token()?;
            if !m.contains_key(&token) {
                m.insert(
                    token.clone(),
                    Entry {
                        req,
                        expires: now + TTL,
                    },
                );
                return Ok(token);
            }
        }
        Err(CacheError::Token("no unique token after 10 tries".into()))
    }

    fn consume_at(&self, token: &str, now: Instant) -> Option<StreamRequest> {
        let e = self.lock().remove(token)?;
        (now <= e.expires).then_some(e.req)
    }
}

/// [`TOKEN_LEN`] URL-safe base64 characters from the kernel's random source.
fn new_token() -> Result<String, CacheError> {
    let mut raw = [0u8; TOKEN_LEN * 6 / 8];
    let mut f =
        std::fs::File::open("/dev/urandom").map_err(|e| CacheError::Token(e.to_string()))?;
    std::io::Read::read_exact(&mut f, &mut raw).map_err(|e| CacheError::Token(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(port: i32) -> StreamRequest {
        StreamRequest::PortForward {
            sandbox_id: "s".into(),
            ports: vec![port],
        }
    }

    #[test]
    fn tokens_are_single_use_url_safe_and_distinct() {
        let c = RequestCache::default();
        let a = c.insert(pf(1)).expect("insert");
        let b = c.insert(pf(2)).expect("insert");
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert_eq!(t.len(), TOKEN_LEN);
            assert!(
                t.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
                "{t}"
            );
        }
        assert_eq!(c.consume(&b), Some(pf(2)));
        assert_eq!(c.consume(&b), None);
        assert_eq!(c.consume(&a), Some(pf(1)));
        assert_eq!(c.consume("nope"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn tokens_expire_after_the_ttl() {
        let c = RequestCache::default();
        let t0 = Instant::now();
        let a = c.insert_at(pf(1), t0).expect("insert");
        let b = c.insert_at(pf(2), t0).expect("insert");
        assert_eq!(c.consume_at(&a, t0 + TTL), Some(pf(1)));
        // Expired: gone, and consuming removed it.
        assert_eq!(c.consume_at(&b, t0 + TTL + Duration::from_millis(1)), None);
        assert!(c.is_empty());
    }

    #[test]
    fn in_flight_requests_are_bounded_until_they_expire() {
        let c = RequestCache::default();
        let t0 = Instant::now();
        for i in 0..MAX_IN_FLIGHT {
            c.insert_at(pf(i as i32), t0).expect("insert");
        }
        assert_eq!(
            c.insert_at(pf(0), t0 + Duration::from_secs(1)),
            Err(CacheError::TooManyInFlight)
        );
        // Once the others expired, there is room again (and they are collected).
        c.insert_at(pf(0), t0 + TTL + Duration::from_secs(1))
            .expect("insert after expiry");
        assert_eq!(c.len(), 1);
    }
}
