//! The prober's actions: one check of a container by exec (CRI ExecSync), HTTP GET, TCP
//! connect or gRPC health check, as upstream's `pkg/probe/{exec,http,tcp,grpc}`. Used by the
//! probe workers (`probes.rs`) and, for exec and httpGet, by the lifecycle hooks.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Container, HTTPHeader};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_proto::runtime::v1 as pb;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Upstream's `kube-probe/<major>.<minor>` User-Agent: the API version this kubelet speaks.
pub const USER_AGENT: &str = "kube-probe/1.35";
/// Upstream reads at most 10 KiB of a probe's response body.
const MAX_BODY: usize = 10 * 1024;

/// A probe's verdict. `Unknown` is an error of the prober itself (bad port name, runtime
/// unreachable): upstream throws such results away instead of counting them.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Success(String),
    Failure(String),
    Unknown(String),
}

/// Where a probe or hook runs.
#[derive(Clone)]
pub struct Target {
    pub runtime: crate::cri::RuntimeClient,
    pub container_id: String,
    /// The pod's IP: the default host of httpGet, tcpSocket and grpc.
    pub pod_ip: String,
}

/// A port given by number or by the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("couldn't find port: {s:?} in container {}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// Runs `cmd` in the container with CRI ExecSync: exit 0 is success. `timeout` 0 = none.
pub async fn exec(t: &Target, cmd: &[String], timeout: i64) -> Outcome {
    let mut rt = t.runtime.clone();
    let req = pb::ExecSyncRequest {
        container_id: t.container_id.clone(),
        cmd: cmd.to_vec(),
        timeout,
    };
    match rt.exec_sync(req).await {
        Ok(r) => {
            let r = r.into_inner();
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            if r.exit_code == 0 {
                Outcome::Success(out)
            } else {
                Outcome::Failure(format!(
                    "command {cmd:?} exited with {}: {}",
                    r.exit_code,
                    out.trim_end()
                ))
            }
        }
        Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
            Outcome::Failure(format!("command {cmd:?} timed out"))
        }
        Err(e) => Outcome::Unknown(format!("exec {cmd:?}: {}", e.message())),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect(host_port(host, port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", host_port(host, port)))
}

/// A TCP connect: success when the connection opens within `timeout`.
pub async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, connect(host, port)).await {
        Ok(Ok(_)) => Outcome::Success(String::new()),
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!("dial tcp {}: i/o timeout", host_port(host, port))),
    }
}

/// An HTTP GET as upstream's prober sends it.
pub struct HttpGet<'a> {
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub headers: &'a [HTTPHeader],
}

/// A probe's HTTP answer: status code, up to 10 KiB of body, the Location header.
pub type HttpAnswer = (u16, String, Option<String>);

async fn send<S>(io: S, req: hyper::Request<Empty<Bytes>>) -> Result<HttpAnswer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Header names on the wire as Go's net/http writes them (User-Agent, not user-agent).
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let location = resp
        .headers()
        .get(hyper::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while out.len() < MAX_BODY {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    out.truncate(MAX_BODY);
    Ok((code, String::from_utf8_lossy(&out).into_owned(), location))
}

/// Sends the GET (no redirect followed); Ok is the status code, (up to 10 KiB of) the body
/// and the Location header. HTTPS does not verify the server's certificate, like upstream's
/// prober.
pub async fn http_request(g: &HttpGet<'_>) -> Result<HttpAnswer, String> {
    let mut path = if g.path.is_empty() {
        "/".to_string()
    } else {
        g.path.to_string()
    };
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let authority = host_port(g.host, g.port);
    let mut b = hyper::Request::builder().method("GET").uri(&path);
    let has = |n: &str| g.headers.iter().any(|h| h.name.eq_ignore_ascii_case(n));
    if !has("host") {
        b = b.header("Host", &authority);
    }
    if !has("user-agent") {
        b = b.header("User-Agent", USER_AGENT);
    }
    if !has("accept") {
        b = b.header("Accept", "*/*");
    }
    // Upstream's prober does not keep connections alive.
    b = b.header("Connection", "close");
    for h in g.headers {
        b = b.header(h.name.as_str(), h.value.as_str());
    }
    let req = b
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let stream = connect(g.host, g.port).await?;
    if g.https {
        let tls = native_tls::TlsConnector::builder()
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .map_err(|e| e.to_string())?;
        let tls = tokio_native_tls::TlsConnector::from(tls)
            .connect(g.host, stream)
            .await
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        send(tls, req).await
    } else {
        send(stream, req).await
    }
}

/// Where a redirect points: (https, host, port, path and query).
type Hop = (bool, String, u16, String);

/// Resolves a Location header against the URL it came from (absolute, scheme-relative,
/// absolute-path or relative-path references); None when it cannot be parsed.
fn resolve_location(from: &Hop, loc: &str) -> Option<Hop> {
    let absolute = |https: bool, rest: &str| -> Option<Hop> {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let uri: hyper::http::uri::Authority = authority.parse().ok()?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().trim_start_matches('[').trim_end_matches(']');
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Some((https, host.to_string(), port, path))
    };
    let lower = loc.to_ascii_lowercase();
    if lower.starts_with("http://") {
        absolute(false, &loc[7..])
    } else if lower.starts_with("https://") {
        absolute(true, &loc[8..])
    } else if let Some(rest) = loc.strip_prefix("//") {
        absolute(from.0, rest)
    } else if lower.contains("://") {
        None
    } else if loc.starts_with('/') {
        Some((from.0, from.1.clone(), from.2, loc.to_string()))
    } else {
        let base = from.3.split('?').next().unwrap_or("/");
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        Some((from.0, from.1.clone(), from.2, format!("{dir}{loc}")))
    }
}

/// An HTTP probe as upstream's: 200 <= code < 400 is success. Redirects to the same host
/// are followed (at most 10 requests, then a failure); a redirect to another host is not,
/// and counts as success ("Probe terminated redirects", upstream's warning).
pub async fn http(g: &HttpGet<'_>, timeout: Duration) -> Outcome {
    let url = |h: &Hop| {
        let scheme = if h.0 { "https" } else { "http" };
        format!("{scheme}://{}{}", host_port(&h.1, h.2), h.3)
    };
    let first: Hop = (g.https, g.host.to_string(), g.port, g.path.to_string());
    let follow = async {
        let mut cur = first.clone();
        let mut requests = 0;
        loop {
            let req = HttpGet {
                https: cur.0,
                host: &cur.1,
                port: cur.2,
                path: &cur.3,
                headers: g.headers,
            };
            let answer = http_request(&req)
                .await
                .map_err(|e| format!("Get \"{}\": {e}", url(&cur)))?;
            requests += 1;
            let (code, body, location) = answer;
            let Some(loc) = location.filter(|_| (300..400).contains(&code)) else {
                return Ok((code, body, false));
            };
            let next = resolve_location(&cur, &loc).ok_or_else(|| {
                format!(
                    "Get \"{}\": failed to parse Location header {loc:?}",
                    url(&cur)
                )
            })?;
            if next.1 != first.1 {
                return Ok((code, body, true));
            }
            if requests >= 10 {
                return Err(format!(
                    "Get \"{}\": stopped after 10 redirects",
                    url(&next)
                ));
            }
            cur = next;
        }
    };
    match tokio::time::timeout(timeout, follow).await {
        Ok(Ok((_, body, true))) => {
            Outcome::Success(format!("Probe terminated redirects, Response body: {body}"))
        }
        Ok(Ok((code, body, false))) if (200..400).contains(&code) => Outcome::Success(body),
        Ok(Ok((code, body, false))) => Outcome::Failure(format!(
            "HTTP probe failed with statuscode: {code}{}",
            if body.is_empty() {
                String::new()
            } else {
                format!(" ({})", body.trim_end())
            }
        )),
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!(
            "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            url(&first)
        )),
    }
}

/// A gRPC health check (`grpc.health.v1.Health/Check`): SERVING is success.
pub async fn grpc(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let addr = host_port(host, port);
    let check = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("failed to connect service {addr:?} within {timeout:?}: {e}"))?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map(|r| r.into_inner().status)
            .map_err(|e| {
                format!(
                    "health rpc probe failed: rpc error: code = {:?} desc = {}",
                    e.code(),
                    e.message()
                )
            })
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(s)) if s == ServingStatus::Serving as i32 => Outcome::Success(String::new()),
        Ok(Ok(s)) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::try_from(s)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN")
        )),
        Ok(Err(e)) => Outcome::Failure(e),
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn ports_by_number_and_name() {
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("web".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    /// HTTPS probes do not verify the certificate (self-signed, for another name) and read
    /// the status; plain HTTP to the TLS port fails.
    #[tokio::test]
    async fn https_probe_without_verification() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("tmp");
        let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=not-this-host", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success());
        let id = native_tls::Identity::from_pkcs8(
            &std::fs::read(&cert).expect("cert"),
            &std::fs::read(&key).expect("key"),
        )
        .expect("identity");
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            native_tls::TlsAcceptor::new(id).expect("acceptor"),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(s).await else {
                    continue;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = if head.starts_with("GET /ok ") {
                    200
                } else {
                    500
                };
                let _ = tls
                    .write_all(
                        format!("HTTP/1.1 {code} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody")
                            .as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let get = |path: &'static str, https: bool| HttpGet {
            https,
            host: "127.0.0.1",
            port,
            path,
            headers: &[],
        };
        let t = Duration::from_secs(10);
        assert_eq!(
            http(&get("/ok", true), t).await,
            Outcome::Success("body".into())
        );
        match http(&get("/bad", true), t).await {
            Outcome::Failure(m) => assert!(m.contains("statuscode: 500"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            http(&get("/ok", false), Duration::from_secs(3)).await,
            Outcome::Failure(_)
        ));
        server.abort();
    }

    #[test]
    fn locations_resolve_like_urls() {
        let from: Hop = (false, "10.0.0.1".into(), 8080, "/a/b?x=1".into());
        let r = |l: &str| resolve_location(&from, l);
        assert_eq!(r("/c"), Some((false, "10.0.0.1".into(), 8080, "/c".into())));
        assert_eq!(
            r("c?y"),
            Some((false, "10.0.0.1".into(), 8080, "/a/c?y".into()))
        );
        assert_eq!(
            r("https://other:9443/p"),
            Some((true, "other".into(), 9443, "/p".into()))
        );
        assert_eq!(
            r("//10.0.0.1/q"),
            Some((false, "10.0.0.1".into(), 80, "/q".into()))
        );
        assert_eq!(r("http://h"), Some((false, "h".into(), 80, "/".into())));
        assert_eq!(r("ftp://h/x"), None);
    }

    /// Same-host redirects are followed (at most 10 requests), another host's is not and
    /// counts as success, a redirect without a Location is a success too.
    #[tokio::test]
    async fn http_probe_redirects() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let (code, extra) = match path.as_str() {
                    "/start" => (302, format!("Location: http://127.0.0.1:{port}/mid\r\n")),
                    "/mid" => (301, "Location: end\r\n".to_string()),
                    "/end" => (500, String::new()),
                    "/ok" => (307, "Location: /fine\r\n".to_string()),
                    "/fine" => (200, String::new()),
                    "/away" => (302, "Location: http://192.0.2.1/x\r\n".to_string()),
                    "/loop" => (302, "Location: /loop\r\n".to_string()),
                    _ => (300, String::new()),
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {code} X\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\nhi")
                            .as_bytes(),
                    )
                    .await;
                let _ = s.shutdown().await;
            }
        });
        let get = |path: &'static str| HttpGet {
            https: false,
            host: "127.0.0.1",
            port,
            path,
            headers: &[],
        };
        let t = Duration::from_secs(10);
        match http(&get("/start"), t).await {
            Outcome::Failure(m) => assert!(m.contains("statuscode: 500"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(http(&get("/ok"), t).await, Outcome::Success("hi".into()));
        match http(&get("/away"), t).await {
            Outcome::Success(m) => assert!(m.starts_with("Probe terminated redirects"), "{m}"),
            o => panic!("{o:?}"),
        }
        match http(&get("/loop"), t).await {
            Outcome::Failure(m) => assert!(m.contains("stopped after 10 redirects"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(http(&get("/other"), t).await, Outcome::Success("hi".into()));
        server.abort();
    }

    /// The gRPC client against a real grpc.health.v1 server (tonic-health's) on loopback:
    /// SERVING, NOT_SERVING, an unknown service and nothing listening.
    #[tokio::test]
    async fn grpc_health_check() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("good", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("bad", ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let t = Duration::from_secs(5);
        // The overall server status ("") is SERVING by default.
        assert!(matches!(
            grpc("127.0.0.1", port, "", t).await,
            Outcome::Success(_)
        ));
        assert!(matches!(
            grpc("127.0.0.1", port, "good", t).await,
            Outcome::Success(_)
        ));
        match grpc("127.0.0.1", port, "bad", t).await {
            Outcome::Failure(m) => assert!(m.contains("NOT_SERVING"), "{m}"),
            o => panic!("{o:?}"),
        }
        match grpc("127.0.0.1", port, "other", t).await {
            Outcome::Failure(m) => assert!(m.contains("NotFound"), "{m}"),
            o => panic!("{o:?}"),
        }
        server.abort();
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = free.local_addr().expect("addr").port();
        drop(free);
        assert!(matches!(
            grpc("127.0.0.1", closed, "", t).await,
            Outcome::Failure(_)
        ));
    }
}
