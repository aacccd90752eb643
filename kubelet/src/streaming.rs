//! `/exec`, `/attach`, `/portForward` and `/run` of the kubelet server.
//!
//! Like upstream (pkg/kubelet/server: getExec/getAttach/getPortForward/getRun): the kubelet
//! asks the runtime for a streaming URL (CRI Exec/Attach/PortForward) and proxies the client's
//! upgrade request (SPDY/3.1 or WebSocket, whatever the client asked for) to it, then copies
//! bytes both ways over the two upgraded connections; the protocol itself (channels, exit
//! status) is between the client and the runtime's streaming server. A request without an
//! upgrade gets 400 "Upgrade request required" (upstream's upgrade-aware proxy with
//! `UpgradeRequired`). `/run` runs `cmd` (split at spaces) with ExecSync and answers its
//! output.

use crate::Shared;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keelson_proto::runtime::v1 as pb;

type Resp = Response<Full<Bytes>>;

fn status(code: StatusCode, msg: impl Into<String>) -> Resp {
    let msg = msg.into();
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::NOT_FOUND => "NotFound",
        _ => "InternalError",
    };
    // A metav1.Status, as upstream's error responses.
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": msg,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query as (key, value) pairs in order, decoded (keys may repeat: `command`, `port`).
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(kk, v)| kk == k && matches!(v.as_str(), "1" | "true" | "True" | "TRUE"))
}

/// Which endpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
    Run,
}

/// `{ns}/{pod}[/{uid}]/{container}` (or `{ns}/{pod}[/{uid}]` for port forward).
fn target(kind: Kind, rest: &str) -> Result<(String, String, Option<String>, String), String> {
    let p: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (kind, p.len()) {
        (Kind::PortForward, 2) => Ok((p[0].into(), p[1].into(), None, String::new())),
        (Kind::PortForward, 3) => Ok((p[0].into(), p[1].into(), Some(p[2].into()), String::new())),
        (Kind::PortForward, _) => Err("expected /portForward/{namespace}/{pod}[/{uid}]".into()),
        (_, 3) => Ok((p[0].into(), p[1].into(), None, p[2].into())),
        (_, 4) => Ok((p[0].into(), p[1].into(), Some(p[2].into()), p[3].into())),
        _ => Err("expected /{exec,attach,run}/{namespace}/{pod}[/{uid}]/{container}".into()),
    }
}

fn pod_uid(sh: &Shared, ns: &str, name: &str, uid: Option<&str>) -> Option<String> {
    sh.pods
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && p.metadata.name.as_deref() == Some(name)
                && uid.is_none_or(|u| p.metadata.uid.as_deref() == Some(u))
        })
        .and_then(|p| p.metadata.uid.clone())
}

pub async fn handle(sh: &Shared, mut req: Request<Incoming>, kind: Kind, rest: &str) -> Resp {
    let (ns, pod, uid, container) = match target(kind, rest) {
        Ok(t) => t,
        Err(e) => return status(StatusCode::BAD_REQUEST, e),
    };
    let Some(uid) = pod_uid(sh, &ns, &pod, uid.as_deref()) else {
        return status(
            StatusCode::NOT_FOUND,
            format!("pod does not exist: {ns}/{pod}"),
        );
    };
    let q = query_pairs(req.uri().query());
    let mut cri = sh.cri.clone();
    let rt = match cri.pod(&uid).await {
        Ok(rt) => rt,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    let container_id = if kind == Kind::PortForward {
        String::new()
    } else {
        match rt
            .latest(&container)
            .filter(|c| c.state == pb::ContainerState::ContainerRunning)
        {
            Some(c) => c.id.clone(),
            None => {
                return status(
                    StatusCode::NOT_FOUND,
                    format!("container not found (\"{container}\")"),
                );
            }
        }
    };
    if kind == Kind::Run {
        let cmd: Vec<String> = q
            .iter()
            .find(|(k, _)| k == "cmd")
            .map(|(_, v)| v.split(' ').map(str::to_string).collect())
            .unwrap_or_default();
        if cmd.iter().all(|c| c.is_empty()) {
            return status(StatusCode::BAD_REQUEST, "missing the cmd query parameter");
        }
        return match cri
            .runtime
            .exec_sync(pb::ExecSyncRequest {
                container_id,
                cmd: cmd.clone(),
                timeout: 0,
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let mut out = r.stdout;
                out.extend(r.stderr);
                if r.exit_code != 0 {
                    return status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "command '{}' exited with {}: {}",
                            cmd.join(" "),
                            r.exit_code,
                            String::from_utf8_lossy(&out)
                        ),
                    );
                }
                let mut resp = Response::new(Full::new(Bytes::from(out)));
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
        };
    }
    // Upstream's remotecommand option checks, before anything reaches the runtime.
    let upgrade = req
        .headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        && req.headers().contains_key(hyper::header::UPGRADE);
    let url = match kind {
        Kind::Exec | Kind::Attach => {
            let (stdin, stdout, stderr, tty) = (
                flag(&q, "input"),
                flag(&q, "output"),
                flag(&q, "error"),
                flag(&q, "tty"),
            );
            if !stdin && !stdout && !stderr {
                return status(
                    StatusCode::BAD_REQUEST,
                    "you must specify at least 1 of stdin, stdout, stderr",
                );
            }
            if tty && stderr {
                return status(
                    StatusCode::BAD_REQUEST,
                    "stdout and stderr cannot both be streamed with a tty",
                );
            }
            if !upgrade {
                return status(StatusCode::BAD_REQUEST, "Upgrade request required");
            }
            if kind == Kind::Exec {
                let cmd: Vec<String> = q
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.clone())
                    .collect();
                if cmd.is_empty() {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "missing the command query parameter",
                    );
                }
                cri.runtime
                    .exec(pb::ExecRequest {
                        container_id,
                        cmd,
                        tty,
                        stdin,
                        stdout,
                        stderr,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().url)
            } else {
                cri.runtime
                    .attach(pb::AttachRequest {
                        container_id,
                        stdin,
                        tty,
                        stdout,
                        stderr,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().url)
            }
        }
        Kind::PortForward => {
            if !upgrade {
                return status(StatusCode::BAD_REQUEST, "Upgrade request required");
            }
            let mut ports = Vec::new();
            for (k, v) in q.iter().filter(|(k, _)| k == "port") {
                match v.parse::<i32>() {
                    Ok(p) if (1..=65535).contains(&p) => ports.push(p),
                    _ => {
                        return status(
                            StatusCode::BAD_REQUEST,
                            format!("invalid {k} {v:?}: must be 1-65535"),
                        );
                    }
                }
            }
            let Some(sb) = rt.ready_sandbox() else {
                return status(
                    StatusCode::NOT_FOUND,
                    format!("pod {ns}/{pod} has no ready sandbox"),
                );
            };
            cri.runtime
                .port_forward(pb::PortForwardRequest {
                    pod_sandbox_id: sb.id.clone(),
                    port: ports,
                })
                .await
                .map(|r| r.into_inner().url)
        }
        // Answered above.
        Kind::Run => return status(StatusCode::INTERNAL_SERVER_ERROR, "run"),
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    match proxy(req, &url, on_upgrade).await {
        Ok(r) => r,
        Err(e) => status(
            StatusCode::BAD_GATEWAY,
            format!("proxying to the runtime's streaming server {url}: {e}"),
        ),
    }
}

/// Sends the client's request (method, headers) to `url` and, on 101, joins the two
/// upgraded connections.
async fn proxy(
    req: Request<Incoming>,
    url: &str,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Resp, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// streaming URLs are supported".into());
    }
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming backend connection");
        }
    });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut b = Request::builder().method(req.method()).uri(path);
    for (k, v) in req.headers() {
        if k != hyper::header::HOST {
            b = b.header(k, v);
        }
    }
    b = b.header(hyper::header::HOST, format!("{host}:{port}"));
    let breq = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let mut bresp = sender.send_request(breq).await.map_err(|e| e.to_string())?;
    let code = bresp.status();
    let mut out = Response::builder().status(code);
    for (k, v) in bresp.headers() {
        out = out.header(k, v);
    }
    if code != StatusCode::SWITCHING_PROTOCOLS {
        let body = bresp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return out.body(Full::new(body)).map_err(|e| e.to_string());
    }
    let backend_upgrade = hyper::upgrade::on(&mut bresp);
    tokio::spawn(async move {
        let (client, backend) = match tokio::join!(on_upgrade, backend_upgrade) {
            (Ok(c), Ok(b)) => (c, b),
            (c, b) => {
                tracing::warn!(client = ?c.err(), backend = ?b.err(), "stream upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "stream proxy ended");
        }
    });
    out.body(Full::new(Bytes::new())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_targets() {
        let q = query_pairs(Some(
            "command=echo&command=hello%20world&command=a+b&input=1&tty=true",
        ));
        assert_eq!(
            q.iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>(),
            ["echo", "hello world", "a b"]
        );
        assert!(flag(&q, "input") && flag(&q, "tty") && !flag(&q, "output"));
        assert_eq!(pct_decode("100%"), "100%");
        assert_eq!(
            target(Kind::Exec, "ns/p/c"),
            Ok(("ns".into(), "p".into(), None, "c".into()))
        );
        assert_eq!(
            target(Kind::Exec, "ns/p/u/c"),
            Ok(("ns".into(), "p".into(), Some("u".into()), "c".into()))
        );
        assert!(target(Kind::Exec, "ns/p").is_err());
        assert!(target(Kind::PortForward, "ns/p").is_ok());
    }
}
