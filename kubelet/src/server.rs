//! The kubelet servers: the main one on `port` (HTTPS, see [`crate::tls`]; anonymous requests
//! with AlwaysAllow, see [`crate::auth`]), the read-only one on `readOnlyPort` (plain HTTP) and
//! the healthz one (plain HTTP).
//!
//! Main: `/healthz`, `/pods`, `/stats/summary`, `/metrics`, `/metrics/resource`, and the
//! debugging handlers `/containerLogs/{ns}/{pod}/{container}`, `/configz`, `/exec`, `/attach`,
//! `/portForward`, `/run`. Read-only: the same without the debugging handlers (as upstream).

use crate::Shared;
use crate::streaming;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long the PLEG may go without a successful relist before /healthz fails (upstream: 3m).
pub const PLEG_THRESHOLD: Duration = Duration::from_secs(180);

type Resp = Response<Full<Bytes>>;

fn text(code: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(body: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// /healthz only.
    Healthz,
    /// The read-only API (no debugging handlers).
    ReadOnly,
    /// Everything.
    Main,
}

/// Serves `listener` until the process ends, over TLS when `tls` is given.
pub async fn serve(
    sh: Arc<Shared>,
    listener: TcpListener,
    mode: Mode,
    tls: Option<tokio_native_tls::TlsAcceptor>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // As Go's net/http (upstream's server) does: no Nagle delay, so a response written in
        // parts does not wait for the client's delayed ACK (40 ms and more per request on a
        // kept-alive connection).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let sh = sh.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(s)) => serve_conn(sh, s, mode).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => serve_conn(sh, stream, mode).await,
            }
        });
    }
}

async fn serve_conn<I>(sh: Arc<Shared>, io: I, mode: Mode)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let sh = sh.clone();
        async move { Ok::<_, Infallible>(handle(sh, req, mode).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "connection");
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn healthz(sh: &Shared) -> Resp {
    let since = sh
        .last_relist
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .elapsed();
    if since > PLEG_THRESHOLD {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "[-]pleg failed: PLEG is not healthy: pleg was last seen active {} ago; threshold is {}\nhealthz check failed\n",
                humantime::format_duration(Duration::from_secs(since.as_secs())),
                humantime::format_duration(PLEG_THRESHOLD)
            ),
        );
    }
    text(StatusCode::OK, "ok")
}

/// `follow=true` logs stream; everything else is one buffer.
async fn handle(
    sh: Arc<Shared>,
    req: Request<Incoming>,
    mode: Mode,
) -> Response<crate::logstream::Body> {
    use http_body_util::BodyExt;
    let q = query(&req);
    if mode == Mode::Main
        && req.method() == Method::GET
        && q.get("follow").is_some_and(|v| v == "true" || v == "1")
        && let Some(rest) = req.uri().path().strip_prefix("/containerLogs/")
    {
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() == 3 {
            let opts = match crate::logstream::Opts::parse(&q) {
                Ok(o) => o,
                Err(e) => return text(StatusCode::BAD_REQUEST, e).map(|b| b.boxed_unsync()),
            };
            return match resolve_container(&sh, parts[0], parts[1], parts[2], &q).await {
                Ok(c) => crate::logstream::follow(sh.clone(), c, opts),
                Err(r) => r.map(|b| b.boxed_unsync()),
            };
        }
    }
    handle_full(sh, req, mode).await.map(|b| b.boxed_unsync())
}

async fn handle_full(sh: Arc<Shared>, req: Request<Incoming>, mode: Mode) -> Resp {
    let path = req.uri().path().to_string();
    let streaming = [
        ("/exec/", streaming::Kind::Exec),
        ("/attach/", streaming::Kind::Attach),
        ("/portForward/", streaming::Kind::PortForward),
        ("/run/", streaming::Kind::Run),
    ]
    .into_iter()
    .find_map(|(p, k)| path.strip_prefix(p).map(|rest| (k, rest.to_string())));
    let allowed = match &streaming {
        Some((streaming::Kind::Run, _)) => req.method() == Method::POST,
        Some(_) => req.method() == Method::GET || req.method() == Method::POST,
        None => req.method() == Method::GET || req.method() == Method::HEAD,
    };
    if !allowed {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    if path == "/healthz" || path == "/healthz/" {
        return healthz(&sh);
    }
    if mode == Mode::Healthz {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    match path.as_str() {
        "/stats/summary" | "/stats/summary/" => {
            let only = query(&req)
                .get("only_cpu_and_memory")
                .is_some_and(|v| v == "true" || v == "1");
            return match crate::stats::summary(&sh, only).await {
                Ok(v) => json(&v),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to get summary stats: {}", e.message()),
                ),
            };
        }
        "/metrics" => return metrics_text(render_metrics(&sh).await),
        "/metrics/resource" => {
            return match crate::stats::summary(&sh, true).await {
                Ok(v) => metrics_text(crate::stats::resource_metrics(&v)),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to get resource stats: {}", e.message()),
                ),
            };
        }
        _ => {}
    }
    // Upstream's debugging handlers: not on the read-only port.
    let debug = mode == Mode::Main;
    if debug && path == "/configz" {
        return json(&crate::configz::configz(&sh.cfg));
    }
    if debug && let Some((kind, rest)) = streaming {
        return streaming::handle(&sh, req, kind, &rest).await;
    }
    if path == "/pods" || path == "/pods/" {
        let items: Vec<serde_json::Value> = sh
            .pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("kind".into(), "Pod".into());
                    o.insert("apiVersion".into(), "v1".into());
                }
                v
            })
            .collect();
        return json(&serde_json::json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": items,
        }));
    }
    if debug && let Some(rest) = path.strip_prefix("/containerLogs/") {
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != 3 {
            return text(
                StatusCode::BAD_REQUEST,
                "expected /containerLogs/{namespace}/{pod}/{container}",
            );
        }
        return container_logs(&sh, parts[0], parts[1], parts[2], &query(&req)).await;
    }
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn metrics_text(body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// /metrics: the recorded families plus the gauges counted from the runtime now.
async fn render_metrics(sh: &Shared) -> String {
    let mut cri = sh.cri.clone();
    let mut running_pods = 0;
    let mut containers: std::collections::BTreeMap<&'static str, u64> = Default::default();
    if let Ok(r) = cri
        .runtime
        .list_pod_sandbox(keelson_proto::runtime::v1::ListPodSandboxRequest { filter: None })
        .await
    {
        running_pods = r
            .into_inner()
            .items
            .iter()
            .filter(|s| s.state == keelson_proto::runtime::v1::PodSandboxState::SandboxReady as i32)
            .count() as u64;
    }
    if let Ok(r) = cri
        .runtime
        .list_containers(keelson_proto::runtime::v1::ListContainersRequest { filter: None })
        .await
    {
        use keelson_proto::runtime::v1::ContainerState as S;
        for c in r.into_inner().containers {
            let state = match S::try_from(c.state) {
                Ok(S::ContainerCreated) => "created",
                Ok(S::ContainerRunning) => "running",
                Ok(S::ContainerExited) => "exited",
                _ => "unknown",
            };
            *containers.entry(state).or_default() += 1;
        }
    }
    crate::metrics::render(&crate::metrics::Gauges {
        node_name: sh.cfg.node_name.clone(),
        running_pods,
        containers,
    })
}

/// The lines of a CRI log (partial lines joined), each with the time of its first part.
pub fn read_cri_log(data: &str) -> Vec<(String, String)> {
    let mut j = crate::logstream::Joiner::default();
    data.lines().filter_map(|l| j.feed(l)).collect()
}

/// The container instance a log request is about (the current one, or the previous one).
async fn resolve_container(
    sh: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Result<crate::cri::Container, Resp> {
    // The pod's UID, and (upstream's `validateContainerLogStatus`) the container its status
    // names as the last terminated instance.
    let (uid, last_terminated) = sh
        .pods
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(pod)
        })
        .map(|p| {
            let last = p
                .status
                .iter()
                .flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
                .find(|c| c.name == container)
                .and_then(|c| {
                    c.last_state
                        .as_ref()?
                        .terminated
                        .as_ref()?
                        .container_id
                        .clone()
                })
                .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()));
            (p.metadata.uid.clone(), last)
        })
        .unwrap_or_default();
    let Some(uid) = uid else {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" not found"),
        ));
    };
    let mut cri = sh.cri.clone();
    let rt = match cri.pod(&uid).await {
        Ok(rt) => rt,
        Err(e) => {
            return Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.message().to_string(),
            ));
        }
    };
    let previous = q.get("previous").is_some_and(|v| v == "true" || v == "1");
    let mut inst = rt.instances(container);
    let chosen = match (previous, &last_terminated) {
        (true, Some(id)) => rt.instances(container).find(|c| &c.id == id),
        (true, None) => inst.nth(1),
        (false, _) => inst.next(),
    };
    let Some(c) = chosen else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return Err(text(StatusCode::BAD_REQUEST, msg));
    };
    Ok(c.clone())
}

async fn container_logs(
    sh: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Resp {
    let opts = match crate::logstream::Opts::parse(q) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let c = match resolve_container(sh, ns, pod, container, q).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let data = match tokio::fs::read(&c.log_path).await {
        Ok(d) => String::from_utf8_lossy(&d).into_owned(),
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}", c.log_path),
            );
        }
    };
    let mut lines = read_cri_log(&data);
    lines.retain(|(ts, _)| opts.keep(ts));
    if let Some(n) = opts.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let mut body = String::new();
    for (ts, l) in lines {
        opts.format(&ts, &l, &mut body);
    }
    if let Some(n) = opts.limit
        && body.len() > n
    {
        let mut cut = n;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    text(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines() {
        let data = "2024-01-01T00:00:00.1Z stdout F hello\n2024-01-01T00:00:01Z stdout P par\n2024-01-01T00:00:02Z stderr F err\n2024-01-01T00:00:03Z stdout F tial\nbroken\n2024-01-01T00:00:04Z stdout F \n";
        let l = read_cri_log(data);
        let s: Vec<(&str, &str)> = l.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            s,
            [
                ("2024-01-01T00:00:00.1Z", "hello"),
                ("2024-01-01T00:00:02Z", "err"),
                ("2024-01-01T00:00:01Z", "partial"),
                ("2024-01-01T00:00:04Z", ""),
            ]
        );
    }
}
