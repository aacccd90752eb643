//! The Kubernetes streaming protocols over SPDY/3.1, the transport of kubectl and the kubelet
//! before WebSocket (`k8s.io/apimachinery/pkg/util/httpstream/spdy`).
//!
//! The request carries `Connection: Upgrade`, `Upgrade: SPDY/3.1` and the protocol versions
//! the client speaks in `X-Stream-Protocol-Version` (preferred first). The server answers
//! `101 Switching Protocols` with the chosen version, or `403` listing its versions in
//! `X-Accepted-Stream-Protocol-Versions`.
//!
//! - Remote command (`v4.channel.k8s.io`, `v3.channel.k8s.io`, `v2.channel.k8s.io`,
//!   `channel.k8s.io`; none named means `channel.k8s.io`): the client opens one stream per
//!   `streamType` header: `error`, and `stdin`, `stdout`, `stderr`, `resize` (v3+, with a
//!   terminal) as the request asked for them. The server waits up to 30 s for all of them,
//!   relays, then ends stdout/stderr, writes the status on `error` (JSON from v4, the failure
//!   text before), and sends GOAWAY.
//! - Port forward (`portforward.k8s.io`): each forwarded connection is a pair of streams, the
//!   `error` and `data` stream with the same `requestID` header and a `port` header. The server
//!   connects to the port in the pod and relays the data stream; a failure goes on the error
//!   stream. The connection carries pairs until the client closes it.

pub mod conn;
pub mod frame;

use super::cache::StdioOptions;
use super::session::{Input, Io, Output, QUEUE, ResizeDecoder};
use super::status::{self, Outcome};
use conn::{Cmd, Conn, Stream};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub const PROTOCOL_VERSION_HEADER: &str = "x-stream-protocol-version";
pub const ACCEPTED_VERSIONS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Remote command versions over SPDY, preferred first.
pub const REMOTE_COMMAND: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port forward versions over SPDY.
pub const PORT_FORWARD: &[&str] = &["portforward.k8s.io"];

/// How long the client has to open the streams of a remote command.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The versions a client asked for, in its order (repeated headers or comma lists).
pub fn requested_versions(h: &HeaderMap) -> Vec<String> {
    h.get_all(PROTOCOL_VERSION_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The version to speak: the client's first supported one; `""` when it named none.
pub fn negotiate(requested: &[String], supported: &[&'static str]) -> Result<&'static str, String> {
    if requested.is_empty() {
        return Ok("");
    }
    for r in requested {
        if let Some(s) = supported.iter().find(|s| **s == r.as_str()) {
            return Ok(s);
        }
    }
    Err(format!(
        "unable to upgrade: unable to negotiate protocol: client supports {requested:?}, server accepts {supported:?}"
    ))
}

/// The headers of a refusal: every supported version.
pub fn accepted_headers(supported: &[&'static str], h: &mut HeaderMap) {
    for s in supported {
        h.append(
            HeaderName::from_static(ACCEPTED_VERSIONS_HEADER),
            HeaderValue::from_static(s),
        );
    }
}

/// The remote command version number of a negotiated name (none: v1).
pub fn version_number(name: &str) -> u8 {
    match name {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// The streams of one remote command session.
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Runs an exec or attach `session` over an upgraded SPDY connection.
pub async fn serve_remote_command<S, F, Fut>(io: S, version: u8, opts: StdioOptions, session: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnOnce(Io) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut conn = match Conn::start(io) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "SPDY connection");
            return;
        }
    };
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version >= 3);
    let mut got = Streams::default();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while count < expected {
        let s = match tokio::time::timeout_at(deadline, conn.streams.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                conn.close().await;
                return;
            }
            Err(_) => {
                tracing::warn!("SPDY: timed out waiting for client to create streams");
                conn.close().await;
                return;
            }
        };
        let slot = match s.header("streamtype").unwrap_or("") {
            "error" => &mut got.error,
            "stdin" => &mut got.stdin,
            "stdout" => &mut got.stdout,
            "stderr" => &mut got.stderr,
            "resize" => &mut got.resize,
            other => {
                tracing::debug!(stream_type = other, "SPDY: unexpected stream type");
                continue;
            }
        };
        *slot = Some(s);
        count += 1;
    }
    // Later streams are refused.
    drop(std::mem::replace(&mut conn.streams, mpsc::channel(1).1));
    let tx = conn.sender();
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE);
    let mut closed = conn.closed.clone();
    let mut stdin = got.stdin.take().map(|s| s.data);
    let mut resize = got.resize.take().map(|s| s.data);
    let feeder = tokio::spawn(async move {
        let mut decoder = ResizeDecoder::default();
        loop {
            let inputs = tokio::select! {
                _ = closed.wait_for(|c| *c) => return,
                d = recv_opt(&mut stdin), if stdin.is_some() => match d {
                    Some(d) => vec![Input::Stdin(d)],
                    None => {
                        stdin = None;
                        vec![Input::StdinEnd]
                    }
                },
                d = recv_opt(&mut resize), if resize.is_some() => match d {
                    Some(d) => decoder
                        .push(&d)
                        .into_iter()
                        .map(|(width, height)| Input::Resize { width, height })
                        .collect(),
                    None => {
                        resize = None;
                        Vec::new()
                    }
                },
            };
            for i in inputs {
                if in_tx.send(i).await.is_err() {
                    return;
                }
            }
        }
    });
    let stdout_id = got.stdout.as_ref().map(|s| s.id);
    let stderr_id = got.stderr.as_ref().map(|s| s.id);
    let error_id = got.error.as_ref().map(|s| s.id);
    let fut = session(Io {
        input: in_rx,
        output: out_tx,
    });
    tokio::pin!(fut);
    let send_out = |o: Output| {
        let id = match o {
            Output::Stdout(_) => stdout_id,
            Output::Stderr(_) => stderr_id,
        };
        let data = match o {
            Output::Stdout(d) | Output::Stderr(d) => d,
        };
        (id, data)
    };
    let outcome = loop {
        tokio::select! {
            o = &mut fut => break o,
            Some(o) = out_rx.recv() => {
                if let (Some(id), data) = send_out(o) {
                    tx.send(Cmd::Data { id, data, fin: false }).await;
                }
            }
        }
    };
    while let Ok(o) = out_rx.try_recv() {
        if let (Some(id), data) = send_out(o) {
            tx.send(Cmd::Data {
                id,
                data,
                fin: false,
            })
            .await;
        }
    }
    feeder.abort();
    if outcome != Outcome::ClientGone {
        for id in [stdout_id, stderr_id].into_iter().flatten() {
            tx.send(Cmd::Data {
                id,
                data: Vec::new(),
                fin: true,
            })
            .await;
        }
        if let Some(id) = error_id {
            let payload = if version >= 4 {
                status::v4_json(&outcome)
            } else {
                status::v1_text(&outcome)
            };
            tx.send(Cmd::Data {
                id,
                data: payload.unwrap_or_default(),
                fin: true,
            })
            .await;
        }
    }
    drop(tx);
    conn.close().await;
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A half-made port forward pair.
#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
    since: Option<tokio::time::Instant>,
}

/// Runs port forwarding over an upgraded SPDY connection until the client closes it.
/// `forward(port, from_client, to_client)` relays one connection and returns its error.
pub async fn serve_port_forward<S, F, Fut>(io: S, forward: F)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: Fn(u16, mpsc::Receiver<Vec<u8>>, mpsc::Sender<Vec<u8>>) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut conn = match Conn::start(io) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "SPDY connection");
            return;
        }
    };
    let tx = conn.sender();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let s = tokio::select! {
            s = conn.streams.recv() => match s {
                Some(s) => s,
                None => break,
            },
            Some(_) = tasks.join_next() => continue,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                pairs.retain(|id, p| {
                    let fresh = p.since.is_none_or(|t| now.duration_since(t) < STREAM_CREATION_TIMEOUT);
                    if !fresh {
                        tracing::debug!(request = %id, "SPDY port forward: timed out waiting for the stream pair");
                    }
                    fresh
                });
                continue;
            }
        };
        let kind = s.header("streamtype").unwrap_or("").to_string();
        // Clients before requestID: the data stream follows its error stream.
        let request = match s.header("requestid") {
            Some(r) => r.to_string(),
            None if kind == "data" => s.id.saturating_sub(2).to_string(),
            None => s.id.to_string(),
        };
        let p = pairs.entry(request.clone()).or_default();
        p.since.get_or_insert_with(tokio::time::Instant::now);
        match kind.as_str() {
            "data" => p.data = Some(s),
            "error" => p.error = Some(s),
            other => {
                tracing::debug!(
                    stream_type = other,
                    "SPDY port forward: unexpected stream type"
                );
                tx.send(Cmd::Rst {
                    id: s.id,
                    status: frame::RST_PROTOCOL_ERROR,
                })
                .await;
                continue;
            }
        }
        if p.data.is_none() || p.error.is_none() {
            continue;
        }
        let Some(Pair {
            data: Some(data),
            error: Some(error),
            ..
        }) = pairs.remove(&request)
        else {
            continue;
        };
        let port_text = data.header("port").unwrap_or("").to_string();
        let (data_id, error_id) = (data.id, error.id);
        let tx = tx.clone();
        let port = port_text.parse::<u16>().ok().filter(|p| *p > 0);
        let (to_client, mut to_client_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let fwd = port.map(|p| forward(p, data.data, to_client));
        tasks.spawn(async move {
            let pump = {
                let tx = tx.clone();
                async move {
                    while let Some(d) = to_client_rx.recv().await {
                        let c = Cmd::Data {
                            id: data_id,
                            data: d,
                            fin: false,
                        };
                        if !tx.send(c).await {
                            break;
                        }
                    }
                }
            };
            let work = async move {
                match fwd {
                    Some(f) => f.await,
                    None => Err(format!("invalid port {port_text:?}")),
                }
            };
            let (result, ()) = tokio::join!(work, pump);
            if let Err(msg) = result {
                tracing::debug!(error = %msg, "SPDY port forward");
                tx.send(Cmd::Data {
                    id: error_id,
                    data: msg.into_bytes(),
                    fin: false,
                })
                .await;
            }
            for id in [data_id, error_id] {
                tx.send(Cmd::Data {
                    id,
                    data: Vec::new(),
                    fin: true,
                })
                .await;
            }
        });
    }
    tasks.abort_all();
    drop(tx);
    conn.close().await;
}
