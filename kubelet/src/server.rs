//! The kubelet server (plain HTTP for now; TLS and authn/authz come with the apiserver
//! issue) and the healthz server: `/healthz`, `/pods`, `/containerLogs/{ns}/{pod}/{container}`.

use crate::Shared;
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

/// Serves `listener` until the process ends; `full` adds the API beyond /healthz.
pub async fn serve(sh: Arc<Shared>, listener: TcpListener, full: bool) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let sh = sh.clone();
                async move { Ok::<_, Infallible>(handle(sh, req, full).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection");
            }
        });
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

async fn handle(sh: Arc<Shared>, req: Request<Incoming>, full: bool) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
    }
    let path = req.uri().path().to_string();
    if path == "/healthz" || path == "/healthz/" {
        return healthz(&sh);
    }
    if !full {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
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
    if let Some(rest) = path.strip_prefix("/containerLogs/") {
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

/// One CRI log line: `<RFC3339Nano> <stream> <P|F> <content>`.
fn parse_cri_line(line: &str) -> Option<(&str, &str, bool, &str)> {
    let mut it = line.splitn(4, ' ');
    let ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or("");
    Some((ts, stream, tag.starts_with('F'), content))
}

/// The lines of a CRI log (partial lines joined), each with the time of its first part.
pub fn read_cri_log(data: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut partial: HashMap<String, (String, String)> = HashMap::new();
    for line in data.lines() {
        let Some((ts, stream, full, content)) = parse_cri_line(line) else {
            continue;
        };
        let entry = partial
            .entry(stream.to_string())
            .or_insert_with(|| (ts.to_string(), String::new()));
        entry.1.push_str(content);
        if full {
            if let Some((t, c)) = partial.remove(stream) {
                out.push((t, c));
            }
        }
    }
    out
}

async fn container_logs(
    sh: &Shared,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Resp {
    let uid = sh
        .pods
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(pod)
        })
        .and_then(|p| p.metadata.uid.clone());
    let Some(uid) = uid else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" not found"),
        );
    };
    let mut cri = sh.cri.clone();
    let rt = match cri.pod(&uid).await {
        Ok(rt) => rt,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()),
    };
    let previous = q.get("previous").is_some_and(|v| v == "true" || v == "1");
    let mut inst = rt.instances(container);
    let chosen = if previous { inst.nth(1) } else { inst.next() };
    let Some(c) = chosen else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return text(StatusCode::BAD_REQUEST, msg);
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
    if let Some(n) = q.get("tailLines").and_then(|v| v.parse::<usize>().ok()) {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let timestamps = q.get("timestamps").is_some_and(|v| v == "true" || v == "1");
    let mut body = String::new();
    for (ts, l) in lines {
        if timestamps {
            body.push_str(&ts);
            body.push(' ');
        }
        body.push_str(&l);
        body.push('\n');
    }
    if let Some(n) = q.get("limitBytes").and_then(|v| v.parse::<usize>().ok())
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
