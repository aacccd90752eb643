//! The Kubernetes channel protocols over WebSocket (`k8s.io/apimachinery`'s wsstream):
//! every message carries one channel's bytes, prefixed by the channel number.
//!
//! | subprotocol | framing | use |
//! |---|---|---|
//! | none, `channel.k8s.io` | binary, channel byte | remote command v1 (text errors) |
//! | `base64.channel.k8s.io` | text, channel digit + base64 | remote command v1 |
//! | `v4.channel.k8s.io` | binary | remote command v4 (JSON status), port forward |
//! | `v4.base64.channel.k8s.io` | text | remote command v4, port forward |
//! | `v5.channel.k8s.io` | binary; `[255, n]` closes channel `n` | remote command v5 |
//!
//! The subprotocol is the first one in the client's `Sec-WebSocket-Protocol` list that the
//! server supports; a client that names none gets the unnamed protocol.
//!
//! Remote command channels: 0 stdin, 1 stdout, 2 stderr, 3 error (the final status), 4 resize
//! (JSON `{"Width":w,"Height":h}` objects). The server first sends an empty message on the
//! lowest of stdout, stderr and error it will write, to tell the client the streams are up.
//!
//! Port forward: per requested port a data channel (2i) and an error channel (2i+1); the
//! server starts each of them with the port number (two bytes, little endian).

use super::cache::StdioOptions;
use super::session::{Input, Io, Output, QUEUE, ResizeDecoder};
use super::status::{self, Outcome};
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Remote command channels.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, n]` half-closes channel `n`.
pub const CLOSE: u8 = 255;

/// How messages carry bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary messages, the first byte the channel.
    Binary,
    /// Text messages, the first character the channel's digit, then base64.
    Base64,
}

/// A supported subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    pub name: &'static str,
    pub codec: Codec,
    /// Remote command protocol version: 1 (text errors), 4 (JSON status), 5 (close signal).
    pub version: u8,
}

const fn p(name: &'static str, codec: Codec, version: u8) -> Protocol {
    Protocol {
        name,
        codec,
        version,
    }
}

/// What exec and attach speak.
pub const REMOTE_COMMAND: &[Protocol] = &[
    p("v5.channel.k8s.io", Codec::Binary, 5),
    p("v4.channel.k8s.io", Codec::Binary, 4),
    p("v4.base64.channel.k8s.io", Codec::Base64, 4),
    p("channel.k8s.io", Codec::Binary, 1),
    p("base64.channel.k8s.io", Codec::Base64, 1),
    p("", Codec::Binary, 1),
];

/// What port forward speaks (`portforward.k8s.io`, SPDY's name for it, is taken as binary too).
pub const PORT_FORWARD: &[Protocol] = &[
    p("v4.channel.k8s.io", Codec::Binary, 4),
    p("v4.base64.channel.k8s.io", Codec::Base64, 4),
    p("portforward.k8s.io", Codec::Binary, 4),
    p("", Codec::Binary, 4),
];

/// Whether a request asks for a WebSocket: `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_websocket(h: &HeaderMap) -> bool {
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    upgrade && connection_upgrade(h)
}

/// Whether a `Connection` header names `upgrade`.
pub fn connection_upgrade(h: &HeaderMap) -> bool {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The subprotocols a client asked for, in its order.
pub fn requested_protocols(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first requested protocol the server supports (the unnamed one if none was requested).
pub fn negotiate(requested: &[String], supported: &[Protocol]) -> Result<Protocol, String> {
    let want: Vec<&str> = if requested.is_empty() {
        vec![""]
    } else {
        requested.iter().map(String::as_str).collect()
    };
    for w in &want {
        if let Some(p) = supported.iter().find(|p| p.name == *w) {
            return Ok(*p);
        }
    }
    let names: Vec<&str> = supported.iter().map(|p| p.name).collect();
    Err(format!(
        "requested protocol(s) are not supported: {requested:?}; supports {names:?}"
    ))
}

pub type Body = Full<Bytes>;

/// A plain-text response.
pub fn text_response(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Checks a WebSocket upgrade request and answers it: `101 Switching Protocols` with the
/// chosen subprotocol, or the error response.
pub fn accept(
    h: &HeaderMap,
    supported: &[Protocol],
) -> Result<(Response<Body>, Protocol), Box<Response<Body>>> {
    let version = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if version.trim() != "13" {
        let mut r = text_response(
            StatusCode::BAD_REQUEST,
            format!("unsupported WebSocket version {version:?}; this server speaks 13\n"),
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(r));
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(text_response(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key\n",
        )));
    };
    let proto = negotiate(&requested_protocols(h), supported)
        .map_err(|m| Box::new(text_response(StatusCode::FORBIDDEN, m + "\n")))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !proto.name.is_empty() {
        hs.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(proto.name),
        );
    }
    Ok((r, proto))
}

/// One channel's message.
pub fn frame(codec: Codec, channel: u8, data: &[u8]) -> Message {
    match codec {
        Codec::Binary => {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(v.into())
        }
        Codec::Base64 => {
            let mut s = String::with_capacity(data.len() * 4 / 3 + 5);
            s.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::text(s)
        }
    }
}

/// What a received message means.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data(u8, Vec<u8>),
    /// The client closed the WebSocket.
    Close,
    /// Nothing for a channel (control message, empty or undecodable message).
    Skip,
}

/// Reads one received message (either message type is taken, as upstream does).
pub fn unframe(codec: Codec, msg: Message) -> Frame {
    let raw: Bytes = match msg {
        Message::Binary(b) => b,
        Message::Text(t) => Bytes::from(t.as_str().to_owned()),
        Message::Close(_) => return Frame::Close,
        _ => return Frame::Skip,
    };
    let Some((&first, rest)) = raw.split_first() else {
        return Frame::Skip;
    };
    match codec {
        Codec::Binary => Frame::Data(first, rest.to_vec()),
        Codec::Base64 => match base64::engine::general_purpose::STANDARD.decode(rest) {
            Ok(d) => Frame::Data(first.wrapping_sub(b'0'), d),
            Err(e) => {
                tracing::debug!(error = %e, "undecodable base64 channel message");
                Frame::Skip
            }
        },
    }
}

/// The sending half, which stops sending after the first failure.
struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    codec: Codec,
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    async fn send(&mut self, channel: u8, data: &[u8]) {
        if self.broken {
            return;
        }
        if let Err(e) = self.sink.send(frame(self.codec, channel, data)).await {
            tracing::debug!(error = %e, "WebSocket send");
            self.broken = true;
        }
    }

    /// Sends a normal closure (1000: clients take a close without a code as an error).
    async fn close(&mut self) {
        if !self.broken {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = self.sink.send(Message::Close(Some(frame))).await;
            let _ = self.sink.close().await;
        }
    }
}

/// Runs an exec or attach `session` over a WebSocket: client messages become [`Input`],
/// [`Output`] becomes messages, and the session's [`Outcome`] goes on the error channel
/// before the server closes.
pub async fn serve_remote_command<S, F, Fut>(
    ws: WebSocketStream<S>,
    proto: Protocol,
    opts: StdioOptions,
    session: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Io) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let codec = proto.codec;
    let (sink, mut stream) = ws.split();
    let mut w = Writer {
        sink,
        codec,
        broken: false,
    };
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    w.send(first, &[]).await;
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE);
    let v5 = proto.version >= 5;
    let reader = tokio::spawn(async move {
        let mut resize = ResizeDecoder::default();
        while let Some(Ok(msg)) = stream.next().await {
            let (ch, data) = match unframe(codec, msg) {
                Frame::Close => break,
                Frame::Skip => continue,
                Frame::Data(ch, data) => (ch, data),
            };
            let inputs = match ch {
                STDIN if opts.stdin && !data.is_empty() => vec![Input::Stdin(data)],
                RESIZE => resize
                    .push(&data)
                    .into_iter()
                    .map(|(width, height)| Input::Resize { width, height })
                    .collect(),
                CLOSE if v5 && opts.stdin && data.first() == Some(&STDIN) => {
                    vec![Input::StdinEnd]
                }
                _ => Vec::new(),
            };
            for i in inputs {
                if in_tx.send(i).await.is_err() {
                    return;
                }
            }
        }
    });
    let fut = session(Io {
        input: in_rx,
        output: out_tx,
    });
    tokio::pin!(fut);
    let outcome = loop {
        tokio::select! {
            o = &mut fut => break o,
            Some(out) = out_rx.recv() => send_output(&mut w, opts, out).await,
        }
    };
    while let Ok(out) = out_rx.try_recv() {
        send_output(&mut w, opts, out).await;
    }
    let payload = if proto.version >= 4 {
        status::v4_json(&outcome)
    } else {
        status::v1_text(&outcome)
    };
    if let Some(p) = payload {
        w.send(ERROR, &p).await;
    }
    w.close().await;
    reader.abort();
}

async fn send_output<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Writer<S>,
    opts: StdioOptions,
    out: Output,
) {
    match out {
        Output::Stdout(d) if opts.stdout => w.send(STDOUT, &d).await,
        Output::Stderr(d) if opts.stderr => w.send(STDERR, &d).await,
        _ => {}
    }
}

/// What a port's forwarder sends toward the client.
#[derive(Debug)]
pub enum PortOutput {
    Data(usize, Vec<u8>),
    Error(usize, String),
}

/// Runs port forwarding over a WebSocket: `forward(i, port, from_client, to_client)` runs once
/// per port and the connection closes when all of them returned.
pub async fn serve_port_forward<S, F, Fut>(
    ws: WebSocketStream<S>,
    proto: Protocol,
    ports: Vec<u16>,
    forward: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(usize, u16, mpsc::Receiver<Vec<u8>>, mpsc::Sender<PortOutput>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let codec = proto.codec;
    let (sink, mut stream) = ws.split();
    let mut w = Writer {
        sink,
        codec,
        broken: false,
    };
    for (i, port) in ports.iter().enumerate() {
        let Ok(ch) = u8::try_from(i * 2) else { break };
        w.send(ch, &port.to_le_bytes()).await;
        w.send(ch + 1, &port.to_le_bytes()).await;
    }
    let (out_tx, mut out_rx) = mpsc::channel(QUEUE);
    let mut to_ports = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE);
        to_ports.push(tx);
        tasks.push(tokio::spawn(forward(i, *port, rx, out_tx.clone())));
    }
    drop(out_tx);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match unframe(codec, msg) {
                Frame::Close => break,
                Frame::Skip => {}
                Frame::Data(ch, data) => {
                    let i = usize::from(ch / 2);
                    if ch % 2 == 0
                        && !data.is_empty()
                        && let Some(tx) = to_ports.get(i)
                    {
                        // A port whose forwarder ended takes no more data.
                        let _ = tx.send(data).await;
                    }
                }
            }
        }
    });
    while let Some(out) = out_rx.recv().await {
        match out {
            PortOutput::Data(i, d) => {
                if let Ok(ch) = u8::try_from(i * 2) {
                    w.send(ch, &d).await;
                }
            }
            PortOutput::Error(i, m) => {
                if let Ok(ch) = u8::try_from(i * 2 + 1) {
                    w.send(ch, m.as_bytes()).await;
                }
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    w.close().await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let req = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let n = |r: &[&str]| negotiate(&req(r), REMOTE_COMMAND).map(|p| p.name);
        assert_eq!(n(&[]), Ok(""));
        assert_eq!(
            n(&["v5.channel.k8s.io", "v4.channel.k8s.io"]),
            Ok("v5.channel.k8s.io")
        );
        assert_eq!(
            n(&["bogus", "v4.base64.channel.k8s.io"]),
            Ok("v4.base64.channel.k8s.io")
        );
        assert!(n(&["bogus"]).is_err_and(|e| e.contains("not supported")));
        let pf = negotiate(&req(&["v5.channel.k8s.io"]), PORT_FORWARD);
        assert!(pf.is_err());
    }

    #[test]
    fn accept_answers_rfc6455_with_the_chosen_protocol() {
        let h = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "sec-websocket-protocol",
                "v4.channel.k8s.io, channel.k8s.io",
            ),
        ]);
        assert!(is_websocket(&h));
        let (r, p) = accept(&h, REMOTE_COMMAND).expect("accepted");
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(p.version, 4);
        // RFC 6455's own example key and answer.
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            "v4.channel.k8s.io"
        );
        let bad = headers(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "x"),
            ("sec-websocket-protocol", "nope"),
        ]);
        let e = accept(&bad, REMOTE_COMMAND).expect_err("refused");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(!is_websocket(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn frames_round_trip_in_both_codecs() {
        for codec in [Codec::Binary, Codec::Base64] {
            let m = frame(codec, STDERR, b"foo\n");
            assert_eq!(unframe(codec, m), Frame::Data(STDERR, b"foo\n".to_vec()));
        }
        assert_eq!(
            frame(Codec::Base64, STDIN, b"foo\n"),
            Message::text("0Zm9vCg==")
        );
        assert_eq!(
            frame(Codec::Binary, STDOUT, b""),
            Message::Binary(vec![1u8].into())
        );
        assert_eq!(unframe(Codec::Base64, Message::text("1!!")), Frame::Skip);
        assert_eq!(
            unframe(Codec::Binary, Message::Binary(Vec::new().into())),
            Frame::Skip
        );
        assert_eq!(unframe(Codec::Binary, Message::Close(None)), Frame::Close);
    }
}
