//! The HTTP side: routes, token lookup, upgrade, and the session each request starts.
//!
//! Routes (`GET` or `POST`): `/exec/<token>`, `/attach/<token>`, `/portforward/<token>`.
//! Anything else is `404 page not found`, another method `405`. A token is consumed on first
//! use; one that is unknown, used, expired or of another route is `404`.

use super::attach::{self, ContainerStdio};
use super::cache::StreamRequest;
use super::exec::{self, ExecContext};
use super::idle::{IDLE_TIMEOUT, IdleIo};
use super::portforward;
use super::spdy;
use super::ws::{self, Body, PortOutput, text_response};
use crate::server::Daemon;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keelson_proto::runtime::v1 as pb;
use prost::Message as _;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Binds the streaming listener (port 0: any free port) and publishes its URL base,
/// `http://<address>:<port>`, to the daemon.
pub async fn bind(d: &Daemon, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    d.streams.set_base_url(format!("http://{a}"));
    tracing::info!(address = %a, "streaming server listening");
    Ok(l)
}

/// Serves streaming requests on `listener` (from [`bind`]) until the task is dropped.
pub async fn serve(d: Arc<Daemon>, listener: TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // No Nagle delay (Go's default, which the kubelet's and kubectl's side expect): small
        // frames of an interactive stream go out at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let d = d.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(handle(d, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, error = %e, "streaming connection");
            }
        });
    }
}

fn not_found() -> Response<Body> {
    text_response(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Whether a request asks for SPDY/3.1 (the other transport of the upstream clients).
fn is_spdy(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("SPDY/3.1"))
        })
}

/// Answers one request; an accepted upgrade continues in a task of its own.
pub async fn handle(d: Arc<Daemon>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (kind, token) = match (parts.next(), parts.next(), parts.next()) {
        (Some(k @ ("exec" | "attach" | "portforward")), Some(t), None) if !t.is_empty() => (k, t),
        _ => return not_found(),
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        let mut r = text_response(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, POST"));
        return r;
    }
    let Some(sreq) = d.streams.cache.consume(token) else {
        return not_found();
    };
    if sreq.kind() != kind {
        return not_found();
    }
    if ws::is_websocket(req.headers()) {
        return upgrade_websocket(d, sreq, req);
    }
    if is_spdy(req.headers()) && ws::connection_upgrade(req.headers()) {
        return upgrade_spdy(d, sreq, req);
    }
    text_response(
        StatusCode::BAD_REQUEST,
        "unable to upgrade: missing upgrade headers in request \
         (want Upgrade: websocket or Upgrade: SPDY/3.1)\n",
    )
}

/// The `port` query parameters (repeated or comma-separated), checked like upstream does.
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "port" {
            continue;
        }
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        let v = v.replace("%2C", ",").replace("%2c", ",");
        for p in v.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {v:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {v:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

fn upgrade_websocket(
    d: Arc<Daemon>,
    sreq: StreamRequest,
    req: Request<Incoming>,
) -> Response<Body> {
    let supported = match sreq {
        StreamRequest::PortForward { .. } => ws::PORT_FORWARD,
        _ => ws::REMOTE_COMMAND,
    };
    let (resp, proto) = match ws::accept(req.headers(), supported) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // What a port forward needs is settled before the upgrade, so errors are plain HTTP.
    let forward = match &sreq {
        StreamRequest::PortForward { sandbox_id, ports } => {
            let ports = if ports.is_empty() {
                match query_ports(req.uri().query()) {
                    Ok(p) => p,
                    Err(m) => return text_response(StatusCode::BAD_REQUEST, m + "\n"),
                }
            } else {
                ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect()
            };
            match sandbox_netns(&d, sandbox_id) {
                Ok(netns) => Some((sandbox_id.clone(), ports, netns)),
                Err(m) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, m + "\n"),
            }
        }
        _ => None,
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(idle_io(upgraded), Role::Server, None).await;
        match sreq {
            StreamRequest::Exec {
                container_id,
                cmd,
                opts,
            } => {
                let ctx = exec_context(&d);
                tracing::debug!(container = %container_id, ?cmd, protocol = proto.name, "exec session");
                ws::serve_remote_command(socket, proto, opts, |io| async move {
                    exec::run(&ctx, &container_id, &cmd, opts, io).await
                })
                .await;
            }
            StreamRequest::Attach { container_id, opts } => {
                let sock = d
                    .cfg
                    .container_dir(&container_id)
                    .join(crate::monitor::attach::SOCKET_NAME);
                let stdio = container_stdio(&d, &container_id);
                tracing::debug!(container = %container_id, protocol = proto.name, "attach session");
                ws::serve_remote_command(socket, proto, opts, |io| async move {
                    attach::run(&sock, opts, stdio, io).await
                })
                .await;
            }
            StreamRequest::PortForward { .. } => {
                let Some((sandbox, ports, netns)) = forward else {
                    return;
                };
                tracing::debug!(%sandbox, ?ports, protocol = proto.name, "port forward session");
                ws::serve_port_forward(socket, proto, ports, move |i, port, rx, tx| {
                    forward_port(sandbox.clone(), netns.clone(), i, port, rx, tx)
                })
                .await;
            }
        }
    });
    resp
}

fn upgrade_spdy(d: Arc<Daemon>, sreq: StreamRequest, req: Request<Incoming>) -> Response<Body> {
    let supported = match sreq {
        StreamRequest::PortForward { .. } => spdy::PORT_FORWARD,
        _ => spdy::REMOTE_COMMAND,
    };
    let version = match spdy::negotiate(&spdy::requested_versions(req.headers()), supported) {
        Ok(v) => v,
        Err(m) => {
            let mut r = text_response(StatusCode::FORBIDDEN, m + "\n");
            spdy::accepted_headers(supported, r.headers_mut());
            return r;
        }
    };
    let netns = match &sreq {
        StreamRequest::PortForward { sandbox_id, .. } => match sandbox_netns(&d, sandbox_id) {
            Ok(n) => n,
            Err(m) => return text_response(StatusCode::INTERNAL_SERVER_ERROR, m + "\n"),
        },
        _ => None,
    };
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("SPDY/3.1"),
    );
    if !version.is_empty() {
        h.insert(
            header::HeaderName::from_static(spdy::PROTOCOL_VERSION_HEADER),
            header::HeaderValue::from_static(version),
        );
    }
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => idle_io(u),
            Err(e) => {
                tracing::debug!(error = %e, "SPDY upgrade");
                return;
            }
        };
        let v = spdy::version_number(version);
        match sreq {
            StreamRequest::Exec {
                container_id,
                cmd,
                opts,
            } => {
                let ctx = exec_context(&d);
                tracing::debug!(container = %container_id, ?cmd, protocol = version, "exec session (SPDY)");
                spdy::serve_remote_command(upgraded, v, opts, |io| async move {
                    exec::run(&ctx, &container_id, &cmd, opts, io).await
                })
                .await;
            }
            StreamRequest::Attach { container_id, opts } => {
                let sock = d
                    .cfg
                    .container_dir(&container_id)
                    .join(crate::monitor::attach::SOCKET_NAME);
                let stdio = container_stdio(&d, &container_id);
                tracing::debug!(container = %container_id, protocol = version, "attach session (SPDY)");
                spdy::serve_remote_command(upgraded, v, opts, |io| async move {
                    attach::run(&sock, opts, stdio, io).await
                })
                .await;
            }
            StreamRequest::PortForward { sandbox_id, .. } => {
                tracing::debug!(sandbox = %sandbox_id, "port forward session (SPDY)");
                spdy::serve_port_forward(upgraded, move |port, rx, tx| {
                    forward_spdy(sandbox_id.clone(), netns.clone(), port, rx, tx)
                })
                .await;
            }
        }
    });
    resp
}

/// One SPDY port forward connection; the error is the error stream's message.
async fn forward_spdy(
    sandbox: String,
    netns: Option<PathBuf>,
    port: u16,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let conn = portforward::connect(netns, port).await.map_err(|e| {
        format!(
            "error forwarding port {port} to pod {sandbox}, uid : failed to connect to \
             localhost:{port} inside namespace \"{sandbox}\": {e}"
        )
    })?;
    portforward::relay(conn, rx, tx, |d| d)
        .await
        .map_err(|e| format!("error forwarding port {port} to pod {sandbox}, uid : {e}"))
}

/// An upgraded connection with upstream's idle timeout.
fn idle_io(u: hyper::upgrade::Upgraded) -> IdleIo<TokioIo<hyper::upgrade::Upgraded>> {
    IdleIo::new(TokioIo::new(u), IDLE_TIMEOUT)
}

fn exec_context(d: &Daemon) -> ExecContext {
    ExecContext {
        keelson_bin: d.cfg.keelson_bin.clone(),
        engine_root: d.cfg.engine_root(),
        scratch: d.cfg.state.join("streams"),
    }
}

/// How the container was created (tty, stdin_once), from its record.
fn container_stdio(d: &Daemon, id: &str) -> ContainerStdio {
    d.container(id)
        .ok()
        .and_then(|r| pb::ContainerConfig::decode(r.config.as_slice()).ok())
        .map(|c| ContainerStdio {
            tty: c.tty,
            stdin_once: c.stdin_once,
        })
        .unwrap_or_default()
}

/// The network namespace to connect in: the sandbox's pinned one, `None` on the host network.
fn sandbox_netns(d: &Daemon, id: &str) -> Result<Option<PathBuf>, String> {
    let r = d.sandbox(id).map_err(|e| e.to_string())?;
    let cfg = pb::PodSandboxConfig::decode(r.config.as_slice()).map_err(|e| e.to_string())?;
    let host_net = cfg
        .linux
        .and_then(|l| l.security_context)
        .and_then(|s| s.namespace_options)
        .is_some_and(|n| n.network == pb::NamespaceMode::Node as i32);
    if host_net {
        return Ok(None);
    }
    match r.infra.netns {
        Some(p) => Ok(Some(p)),
        None => Err(format!(
            "sandbox {id} has no network namespace (is it stopped?)"
        )),
    }
}

async fn forward_port(
    sandbox: String,
    netns: Option<PathBuf>,
    i: usize,
    port: u16,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    tx: tokio::sync::mpsc::Sender<PortOutput>,
) {
    let fail = |e: std::io::Error| {
        format!(
            "error forwarding port {port} to pod {sandbox}, uid : failed to connect to \
             localhost:{port} inside namespace \"{sandbox}\": {e}"
        )
    };
    let conn = match portforward::connect(netns, port).await {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(PortOutput::Error(i, fail(e))).await;
            return;
        }
    };
    let data_tx = tx.clone();
    if let Err(e) = portforward::relay(conn, rx, data_tx, move |d| PortOutput::Data(i, d)).await {
        let msg = format!("error forwarding port {port} to pod {sandbox}, uid : {e}");
        let _ = tx.send(PortOutput::Error(i, msg)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_query_parameters() {
        assert_eq!(
            query_ports(Some("port=80&port=8080,9090")),
            Ok(vec![80, 8080, 9090])
        );
        assert_eq!(query_ports(Some("x=1&port=22%2C23")), Ok(vec![22, 23]));
        assert!(query_ports(None).is_err());
        assert!(query_ports(Some("port=")).is_err());
        assert!(query_ports(Some("port=0")).is_err());
        assert!(query_ports(Some("port=70000")).is_err());
    }
}
