//! The CRI streaming server: what `Exec`, `Attach` and `PortForward` answer with a URL for,
//! like the kubelet's `k8s.io/kubelet/pkg/cri/streaming` that containerd and CRI-O embed.
//!
//! # Flow
//!
//! 1. The RPC checks the request (the container runs; exec and attach want at least one of
//!    stdin, stdout and stderr, and no stderr with a terminal) and caches it under a
//!    single-use random token ([`cache`], one minute, at most 1000 waiting) and answers
//!    `http://<address>:<port>/{exec,attach,portforward}/<token>`.
//! 2. The client (the kubelet, crictl, a test) opens that URL with `GET` or `POST` and an
//!    upgrade ([`server`]). The token is consumed whatever happens next; an unknown, used or
//!    expired token gets `404`. What runs is what the RPC asked for: query parameters
//!    (`command`, `stdin`, ...) are not read, as upstream does, except `port` for a port
//!    forward whose RPC named no port.
//! 3. The session runs over the upgraded connection:
//!    - WebSocket ([`ws`]): remote command subprotocols `v5.channel.k8s.io`,
//!      `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, `channel.k8s.io`,
//!      `base64.channel.k8s.io` (and none); port forward `v4.channel.k8s.io`,
//!      `v4.base64.channel.k8s.io` (and none, and `portforward.k8s.io`).
//!    - SPDY/3.1 (`Upgrade: SPDY/3.1`, [`spdy`]): remote command `v4.channel.k8s.io`,
//!      `v3.channel.k8s.io`, `v2.channel.k8s.io`, `channel.k8s.io`; port forward
//!      `portforward.k8s.io` (ports from each stream pair's `port` header).
//!
//! # Sessions
//!
//! - [`exec`]: the command runs through the `keelson exec` CLI (pipes, or a pty master
//!   received over a console socket), its exit code goes on the error channel.
//! - [`attach`]: a relay to the container monitor's attach socket.
//! - [`portforward`]: a TCP connection to `127.0.0.1:<port>` made inside the sandbox's network
//!   namespace by a short-lived thread.
//!
//! A connection with no traffic for 4 hours is closed ([`idle`]), as upstream's
//! `StreamIdleTimeout` does.
//!
//! The listener is keelsond's `--stream-address`/`--stream-port` (default `127.0.0.1`, any free
//! port), like containerd's `stream_server_address`/`stream_server_port`.

pub mod attach;
pub mod cache;
pub mod exec;
pub mod idle;
pub mod portforward;
pub mod server;
pub mod session;
pub mod spdy;
pub mod status;
pub mod ws;

pub use cache::{CacheError, RequestCache, StdioOptions, StreamRequest};

use std::sync::OnceLock;

/// The streaming server's state in the daemon: waiting requests and, once it listens, the
/// base of its URLs.
#[derive(Debug, Default)]
pub struct Streams {
    pub cache: RequestCache,
    base_url: OnceLock<String>,
}

/// Why no URL was handed out.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the streaming server is not running")]
    NotServing,
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl From<StreamError> for tonic::Status {
    fn from(e: StreamError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            StreamError::NotServing => tonic::Status::unavailable(msg),
            StreamError::Cache(CacheError::TooManyInFlight) => {
                tonic::Status::resource_exhausted(msg)
            }
            StreamError::Cache(CacheError::Token(_)) => tonic::Status::internal(msg),
        }
    }
}

impl Streams {
    /// `http://<address>:<port>` once the server listens.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url.get().map(String::as_str)
    }

    /// Set once, by the server when it starts listening.
    pub fn set_base_url(&self, url: String) {
        let _ = self.base_url.set(url);
    }

    /// Caches `req` and returns the URL the client opens.
    pub fn url_for(&self, req: StreamRequest) -> Result<String, StreamError> {
        let base = self.base_url().ok_or(StreamError::NotServing)?;
        let kind = req.kind();
        let token = self.cache.insert(req)?;
        Ok(format!("{base}/{kind}/{token}"))
    }
}

/// The checks of an exec (or attach) request's stdio, with upstream's messages.
pub fn check_stdio(opts: &StdioOptions, attach: bool) -> Result<(), String> {
    if opts.tty && opts.stderr {
        // Without multiplexing a terminal has no separate stderr.
        return Err("tty and stderr cannot both be true".into());
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(if attach {
            "one of stdin, stdout, and stderr must be set".into()
        } else {
            "one of stdin, stdout, or stderr must be set".into()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_kind_and_a_consumable_token() {
        let s = Streams::default();
        let req = StreamRequest::Attach {
            container_id: "c".into(),
            opts: StdioOptions {
                stdout: true,
                ..Default::default()
            },
        };
        assert!(matches!(
            s.url_for(req.clone()),
            Err(StreamError::NotServing)
        ));
        s.set_base_url("http://127.0.0.1:1234".into());
        let url = s.url_for(req.clone()).expect("url");
        let token = url
            .strip_prefix("http://127.0.0.1:1234/attach/")
            .expect("prefix");
        assert_eq!(s.cache.consume(token), Some(req));
    }

    #[test]
    fn stdio_checks() {
        let o = |stdin, stdout, stderr, tty| StdioOptions {
            stdin,
            stdout,
            stderr,
            tty,
        };
        assert_eq!(
            check_stdio(&o(false, true, true, true), false),
            Err("tty and stderr cannot both be true".into())
        );
        assert!(check_stdio(&o(false, false, false, false), true).is_err());
        assert!(check_stdio(&o(true, false, false, true), false).is_ok());
    }
}
