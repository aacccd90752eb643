//! keelsond's streaming server (Exec, Attach, PortForward URLs) driven like the kubelet and
//! crictl do it: the RPC returns a URL, a WebSocket client speaks the Kubernetes channel
//! protocols on it (stdin 0, stdout 1, stderr 2, error 3, resize 4, v5 close 255; port
//! forward data/error channel pairs).

use keelson_proto::runtime::v1 as pb;
use keelson_tests::cri::registry_with_busybox;
use keelson_tests::cri::{Keelsond, container_config, pod_config};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{
    self, Message, WebSocket, client::IntoClientRequest, handshake::HandshakeError,
};

fn pull(k: &Keelsond, image: &str) {
    k.block_on(async {
        let mut c = k.images().await.expect("client");
        c.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
    })
    .unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", k.log()));
}

fn run_pod(k: &Keelsond, cfg: pb::PodSandboxConfig) -> String {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.run_pod_sandbox(pb::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
    })
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", k.log()))
}

/// Creates and starts a container; returns its ID.
fn run_container(
    k: &Keelsond,
    pod: &str,
    pcfg: &pb::PodSandboxConfig,
    cfg: pb::ContainerConfig,
) -> String {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        let id = c
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cfg),
                sandbox_config: Some(pcfg.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        c.start_container(pb::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        Ok::<_, tonic::Status>(id)
    })
    .unwrap_or_else(|e| panic!("create/start: {e}\n{}", k.log()))
}

fn wait_exited(k: &Keelsond, id: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = k
            .block_on(async {
                let mut c = k.runtime().await.expect("client");
                c.container_status(pb::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
            })
            .expect("status")
            .into_inner()
            .status
            .expect("status");
        if s.state == pb::ContainerState::ContainerExited as i32 {
            return;
        }
        assert!(Instant::now() < end, "{id} does not exit: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exec_req(
    id: &str,
    cmd: &[&str],
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> pb::ExecRequest {
    pb::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
        ..Default::default()
    }
}

fn exec_url(k: &Keelsond, req: pb::ExecRequest) -> Result<String, tonic::Status> {
    k.block_on(async {
        let mut c = k.runtime().await?;
        c.exec(req).await.map(|r| r.into_inner().url)
    })
}

type Ws = WebSocket<TcpStream>;

/// Opens a streaming URL as a WebSocket with these subprotocols; the HTTP status on refusal.
fn ws_open(url: &str, protocols: &[&str]) -> Result<(Ws, Option<String>), u16> {
    let rest = url.strip_prefix("http://").expect("http URL");
    let host = rest.split('/').next().expect("host");
    let tcp = TcpStream::connect(host).expect("connect to the streaming server");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .expect("request");
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().expect("header"),
        );
    }
    match tungstenite::client(req, tcp) {
        Ok((ws, resp)) => {
            let p = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((ws, p))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket handshake with {url}: {e}"),
    }
}

/// What one session sent, channel by channel, in order.
#[derive(Debug, Default)]
struct Received {
    /// (channel, bytes) in arrival order.
    messages: Vec<(u8, Vec<u8>)>,
    /// The code of the server's close frame.
    close_code: Option<u16>,
}

impl Received {
    fn channel(&self, ch: u8) -> Vec<u8> {
        self.messages
            .iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }

    fn text(&self, ch: u8) -> String {
        String::from_utf8_lossy(&self.channel(ch)).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.channel(3))
            .unwrap_or_else(|e| panic!("error channel {:?}: {e}", self.text(3)))
    }
}

/// Standard base64 (with padding), decoded by hand: the test's own independent reading.
fn unbase64(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.bytes().filter(|c| *c != b'=') {
        let v = ABC.iter().position(|a| *a == ch).expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Decodes one message of a binary or base64 channel protocol.
fn decode(msg: Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    match msg {
        Message::Binary(b) if !base64 => b.split_first().map(|(c, d)| (*c, d.to_vec())),
        Message::Text(t) if base64 => {
            let (c, d) = t.as_str().split_at(1);
            Some((c.as_bytes()[0] - b'0', unbase64(d)))
        }
        other => panic!("unexpected message {other:?}"),
    }
}

/// Reads until the server closes, or until `until` holds for what came so far.
fn read_until(ws: &mut Ws, got: &mut Received, base64: bool, until: impl Fn(&Received) -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !until(got) {
        assert!(Instant::now() < end, "nothing more within 30s: {got:?}");
        match ws.read() {
            Ok(Message::Close(f)) => {
                got.close_code = f.map(|f| u16::from(f.code));
                return;
            }
            Ok(m @ (Message::Binary(_) | Message::Text(_))) => {
                if let Some(x) = decode(m, base64) {
                    got.messages.push(x);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return,
            // A server that ended the stream (a port nothing listens on yet) while our request
            // was still unread resets the connection: what it sent before is what counts.
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return;
            }
            Err(e) => panic!("reading: {e} after {got:?}"),
        }
    }
}

fn read_to_end(ws: &mut Ws, base64: bool) -> Received {
    let mut got = Received::default();
    read_until(ws, &mut got, base64, |_| false);
    got
}

fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut m = vec![channel];
    m.extend_from_slice(data);
    ws.send(Message::Binary(m.into())).expect("send");
}

/// A raw HTTP request to a streaming URL; returns the status code and body.
fn raw_request(url: &str, headers: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let mut tcp = TcpStream::connect(host).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        tcp,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    let _ = tcp.read_to_string(&mut resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn exec_streams_output_exit_codes_stdin_and_tty() {
    let (_reg, image) = registry_with_busybox("sexec");
    let k = Keelsond::start("sexec").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "sexec");
    let pod = run_pod(&k, cfg.clone());
    let c = run_container(
        &k,
        &pod,
        &cfg,
        container_config("sleeper", &image, "sleep 1000"),
    );

    // Output on stdout and stderr, the exit code on the error channel (v4 status).
    let url = exec_url(
        &k,
        exec_req(
            &c,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            true,
            true,
            false,
        ),
    )
    .unwrap_or_else(|e| panic!("Exec: {e}\n{}", k.log()));
    assert!(url.contains("/exec/"), "{url}");
    let (mut ws, proto) = ws_open(&url, &["v4.channel.k8s.io", "channel.k8s.io"]).expect("open");
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let got = read_to_end(&mut ws, false);
    assert_eq!(
        got.messages.first(),
        Some(&(1u8, Vec::new())),
        "ready signal first: {got:?}"
    );
    assert_eq!(got.text(1), "out\n", "{got:?}");
    assert_eq!(got.text(2), "err\n", "{got:?}");
    let st = got.status();
    assert_eq!(st["status"], "Failure", "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode", "{st}");
    assert_eq!(st["details"]["causes"][0]["message"], "3", "{st}");
    assert_eq!(got.close_code, Some(1000), "a normal closure");

    // The token was used: 404. An unknown token: 404.
    assert_eq!(ws_open(&url, &["v4.channel.k8s.io"]).err(), Some(404));
    let base = url.rsplit_once('/').expect("token").0;
    assert_eq!(
        ws_open(&format!("{base}/AAAAAAAA"), &["v4.channel.k8s.io"]).err(),
        Some(404)
    );
    assert_eq!(raw_request(&format!("{base}/AAAAAAAA"), "").0, 404);
    // An attach token on the exec route is not found either (and is used up).
    let attach_url = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.attach(pb::AttachRequest {
                container_id: c.clone(),
                stdin: false,
                tty: false,
                stdout: true,
                stderr: false,
                ..Default::default()
            })
            .await
        })
        .expect("attach")
        .into_inner()
        .url;
    let token = attach_url.rsplit_once('/').expect("token").1;
    assert_eq!(ws_open(&format!("{base}/{token}"), &[]).err(), Some(404));

    // Stdin: cat echoes it; closing stdin (v5) ends cat with status Success.
    let url = exec_url(&k, exec_req(&c, &["cat"], true, true, true, false)).expect("exec");
    let (mut ws, proto) = ws_open(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).expect("open");
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    send(&mut ws, 0, b"hello streaming\n");
    let mut got = Received::default();
    read_until(&mut ws, &mut got, false, |g| {
        g.text(1).contains("hello streaming\n")
    });
    assert_eq!(got.text(1), "hello streaming\n");
    send(&mut ws, 0, b"second line\n");
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .expect("close stdin");
    read_until(&mut ws, &mut got, false, |_| false);
    assert_eq!(got.text(1), "hello streaming\nsecond line\n");
    assert_eq!(got.status()["status"], "Success", "{got:?}");

    // The base64 protocol (text messages) carries the same.
    let url = exec_url(
        &k,
        exec_req(&c, &["echo", "b64"], false, true, false, false),
    )
    .expect("exec");
    let (mut ws, proto) = ws_open(&url, &["v4.base64.channel.k8s.io"]).expect("open");
    assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
    let got = read_to_end(&mut ws, true);
    assert_eq!(got.text(1), "b64\n");
    assert_eq!(got.status()["status"], "Success");

    // A terminal: `tty` names a pty; a resize reaches it (stty size prints rows cols).
    let url = exec_url(&k, exec_req(&c, &["sh"], true, true, false, true)).expect("exec tty");
    let (mut ws, _) = ws_open(&url, &["v5.channel.k8s.io"]).expect("open");
    send(&mut ws, 4, br#"{"Width":80,"Height":24}"#);
    send(&mut ws, 0, b"busybox stty size\n");
    let mut got = Received::default();
    read_until(&mut ws, &mut got, false, |g| g.text(1).contains("24 80"));
    send(&mut ws, 4, br#"{"Width":123,"Height":45}"#);
    send(&mut ws, 0, b"busybox tty; busybox stty size; exit 0\n");
    read_until(&mut ws, &mut got, false, |_| false);
    let out = got.text(1);
    assert!(out.contains("/dev/pts/"), "tty: {out:?}");
    assert!(out.contains("45 123"), "size after resize: {out:?}");
    assert!(got.channel(2).is_empty(), "no stderr with a tty");
    assert_eq!(got.status()["status"], "Success", "{got:?}");

    // A command that cannot start: an internal error on the error channel.
    let url = exec_url(
        &k,
        exec_req(&c, &["/no/such/binary"], false, true, true, false),
    )
    .expect("exec");
    let (mut ws, _) = ws_open(&url, &["v4.channel.k8s.io"]).expect("open");
    let got = read_to_end(&mut ws, false);
    assert_eq!(got.status()["status"], "Failure", "{got:?}");
    let url = exec_url(
        &k,
        exec_req(&c, &["/no/such/binary"], false, true, false, true),
    )
    .expect("exec");
    let (mut ws, _) = ws_open(&url, &["v4.channel.k8s.io"]).expect("open");
    let got = read_to_end(&mut ws, false);
    let st = got.status();
    assert_eq!(st["status"], "Failure", "{got:?}");
    assert_eq!(st["reason"], "InternalError", "{got:?}");

    // SPDY with no version in common is refused naming ours; no upgrade is a bad request.
    let url = exec_url(&k, exec_req(&c, &["true"], false, true, false, false)).expect("exec");
    let (code, body) = raw_request(
        &url,
        "Upgrade: SPDY/3.1\r\nConnection: Upgrade\r\nX-Stream-Protocol-Version: v9.nothing\r\n",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("v4.channel.k8s.io"), "{body}");
    let url = exec_url(&k, exec_req(&c, &["true"], false, true, false, false)).expect("exec");
    assert_eq!(raw_request(&url, "").0, 400);

    // Bad requests and stopped containers get gRPC errors, not URLs.
    let e = exec_url(&k, exec_req(&c, &["sh"], false, true, true, true)).expect_err("tty+stderr");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = exec_url(&k, exec_req(&c, &["sh"], false, false, false, false)).expect_err("no stdio");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e =
        exec_url(&k, exec_req("no-such", &["sh"], false, true, false, false)).expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let done = run_container(&k, &pod, &cfg, container_config("done", &image, "exit 0"));
    wait_exited(&k, &done);
    let e =
        exec_url(&k, exec_req(&done, &["true"], false, true, false, false)).expect_err("stopped");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
}

#[test]
fn attach_relays_stdin_and_output() {
    let (_reg, image) = registry_with_busybox("sattach");
    let k = Keelsond::start("sattach").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "sattach");
    let pod = run_pod(&k, cfg.clone());
    let mut cc = container_config("cat", &image, "cat");
    cc.stdin = true;
    let c = run_container(&k, &pod, &cfg, cc);
    let attach = |stdin: bool| {
        k.block_on(async {
            let mut rt = k.runtime().await?;
            rt.attach(pb::AttachRequest {
                container_id: c.clone(),
                stdin,
                tty: false,
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await
        })
        .unwrap_or_else(|e| panic!("Attach: {e}\n{}", k.log()))
        .into_inner()
        .url
    };

    let (mut ws, _) = ws_open(&attach(true), &["v5.channel.k8s.io"]).expect("open");
    send(&mut ws, 0, b"ping\n");
    let mut got = Received::default();
    read_until(&mut ws, &mut got, false, |g| g.text(1).contains("ping\n"));
    // Closing stdin ends this attach (the container is not stdin_once: it keeps running).
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .expect("close stdin");
    read_until(&mut ws, &mut got, false, |_| false);
    assert_eq!(got.text(1), "ping\n");
    assert_eq!(got.status()["status"], "Success", "{got:?}");

    // A second client gets what the container prints from now on.
    let (mut ws, _) = ws_open(&attach(true), &["v4.channel.k8s.io"]).expect("open");
    send(&mut ws, 0, b"pong\n");
    let mut got = Received::default();
    read_until(&mut ws, &mut got, false, |g| g.text(1).contains("pong\n"));
    assert_eq!(got.text(1), "pong\n");
    drop(ws);

    // When the container ends, the attach ends with it.
    let (mut ws, _) = ws_open(&attach(false), &["v4.channel.k8s.io"]).expect("open");
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        rt.stop_container(pb::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
    })
    .expect("stop");
    let got = read_to_end(&mut ws, false);
    assert_eq!(got.status()["status"], "Success", "{got:?}");

    let e = k
        .block_on(async {
            let mut rt = k.runtime().await.expect("client");
            rt.attach(pb::AttachRequest {
                container_id: c.clone(),
                stdin: false,
                tty: false,
                stdout: true,
                stderr: false,
                ..Default::default()
            })
            .await
        })
        .expect_err("stopped");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
}

#[test]
fn port_forward_reaches_localhost_inside_the_pod() {
    let (_reg, image) = registry_with_busybox("spf");
    let k = Keelsond::start("spf").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "spf");
    let pod = run_pod(&k, cfg.clone());
    // httpd on the pod's own loopback only: reachable from inside its netns alone.
    run_container(
        &k,
        &pod,
        &cfg,
        container_config(
            "web",
            &image,
            "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && \
             exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www",
        ),
    );
    let forward = |ports: Vec<i32>| {
        k.block_on(async {
            let mut rt = k.runtime().await?;
            rt.port_forward(pb::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: ports,
            })
            .await
        })
        .map(|r| r.into_inner().url)
    };
    let get = |url: &str| {
        let (mut ws, proto) = ws_open(url, &["v4.channel.k8s.io"]).expect("open");
        assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
        let mut got = Received::default();
        // Each channel starts with the port (little endian).
        read_until(&mut ws, &mut got, false, |g| g.messages.len() >= 2);
        assert_eq!(
            got.messages[..2],
            [(0u8, vec![0x90, 0x1f]), (1u8, vec![0x90, 0x1f])]
        );
        got.messages.clear();
        send(&mut ws, 0, b"GET /index.html HTTP/1.0\r\n\r\n");
        read_until(&mut ws, &mut got, false, |_| false);
        got
    };
    // httpd may need a moment to listen.
    let end = Instant::now() + Duration::from_secs(20);
    let got = loop {
        let url = forward(vec![8080]).unwrap_or_else(|e| panic!("PortForward: {e}\n{}", k.log()));
        let got = get(&url);
        if got.text(0).contains("hello-from-pod") || Instant::now() > end {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let body = got.text(0);
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello-from-pod"),
        "{got:?}"
    );
    assert!(got.channel(1).is_empty(), "no error: {}", got.text(1));

    // No port in the RPC: the `port` query parameter names it.
    let url = forward(Vec::new()).expect("port forward");
    let got = get(&format!("{url}?port=8080"));
    assert!(got.text(0).contains("hello-from-pod"), "{got:?}");

    // Nothing listens on 8081: the error channel says so.
    let url = forward(vec![8081]).expect("port forward");
    let (mut ws, _) = ws_open(&url, &["v4.channel.k8s.io"]).expect("open");
    let got = read_to_end(&mut ws, false);
    let err = got.text(1);
    assert!(
        err.contains("8081") && err.contains("failed to connect"),
        "{got:?}"
    );

    let e = forward(vec![70000]).expect_err("bad port");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.port_forward(pb::PortForwardRequest {
                pod_sandbox_id: "no-such-pod".into(),
                port: vec![80],
            })
            .await
        })
        .expect_err("unknown pod");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
}

/// A stand-in for the apiserver + kubelet pair in front of keelsond, enough for real kubectl:
/// discovery, `GET pod`, and the `exec`/`attach`/`portforward` subresources, which it turns
/// into the CRI RPC and then proxies, bytes as they are, to the URL keelsond returned (what
/// the kubelet does with a CRI streaming URL).
mod fake_api {
    use keelson_proto::runtime::v1 as pb;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::time::Duration;

    #[derive(Clone)]
    pub struct Target {
        pub socket: PathBuf,
        pub pod: String,
        pub sandbox: String,
        pub container: String,
        pub container_id: String,
    }

    /// Serves on 127.0.0.1 until the process ends; returns the address.
    pub fn start(t: Target) -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let t = t.clone();
                std::thread::spawn(move || {
                    let _ = serve(c, &t);
                });
            }
        });
        addr
    }

    fn respond(w: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
        write!(
            w,
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn serve(conn: TcpStream, t: &Target) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut w = conn.try_clone()?;
        let mut r = BufReader::new(conn);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h)?;
                let h = h.trim_end().to_string();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body)?;
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let pod_path = format!("/api/v1/namespaces/default/pods/{}", t.pod);
            match path {
                "/api" => respond(
                    &mut w,
                    200,
                    r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#,
                )?,
                "/apis" => respond(
                    &mut w,
                    200,
                    r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#,
                )?,
                "/api/v1" => respond(
                    &mut w,
                    200,
                    r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
                        {"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},
                        {"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},
                        {"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},
                        {"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#,
                )?,
                p if p == pod_path => respond(
                    &mut w,
                    200,
                    &format!(
                        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{}","namespace":"default","uid":"u1"}},
                        "spec":{{"containers":[{{"name":"{}","image":"busybox","stdin":true}}]}},
                        "status":{{"phase":"Running","containerStatuses":[{{"name":"{}","ready":true,"state":{{"running":{{}}}}}}]}}}}"#,
                        t.pod, t.container, t.container
                    ),
                )?,
                p if p.starts_with(&pod_path) => {
                    let sub = &p[pod_path.len()..];
                    let url = match stream_url(t, sub, query) {
                        Ok(u) => u,
                        Err(e) => {
                            return respond(&mut w, 500, &format!("{{\"message\":{e:?}}}"));
                        }
                    };
                    return proxy(w, r, &method, &url, &headers);
                }
                _ => respond(
                    &mut w,
                    404,
                    r#"{"kind":"Status","status":"Failure","code":404}"#,
                )?,
            }
        }
    }

    /// The CRI RPC for a subresource request; returns the streaming URL.
    fn stream_url(t: &Target, sub: &str, query: &str) -> Result<String, String> {
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), unescape(v)))
            .collect();
        let flag = |name: &str| {
            params
                .iter()
                .any(|(k, v)| k == name && (v == "true" || v == "1"))
        };
        let cmd: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let ch =
                tonic::transport::Endpoint::from_shared(format!("unix://{}", t.socket.display()))
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
            let mut c = pb::runtime_service_client::RuntimeServiceClient::new(ch);
            let r = match sub {
                "/exec" => c
                    .exec(pb::ExecRequest {
                        container_id: t.container_id.clone(),
                        cmd,
                        tty: flag("tty"),
                        stdin: flag("stdin"),
                        stdout: flag("stdout"),
                        stderr: flag("stderr"),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().url),
                "/attach" => c
                    .attach(pb::AttachRequest {
                        container_id: t.container_id.clone(),
                        tty: flag("tty"),
                        stdin: flag("stdin"),
                        stdout: flag("stdout"),
                        stderr: flag("stderr"),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().url),
                "/portforward" => c
                    .port_forward(pb::PortForwardRequest {
                        pod_sandbox_id: t.sandbox.clone(),
                        port: Vec::new(),
                    })
                    .await
                    .map(|r| r.into_inner().url),
                other => return Err(format!("no subresource {other}")),
            };
            r.map_err(|e| e.to_string())
        })
    }

    fn unescape(v: &str) -> String {
        let b = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends the client's request on to `url` and copies bytes both ways until both ended.
    fn proxy(
        mut client_w: TcpStream,
        client_r: BufReader<TcpStream>,
        method: &str,
        url: &str,
        headers: &[(String, String)],
    ) -> std::io::Result<()> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut up = TcpStream::connect(host)?;
        let mut head = format!("{method} /{path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            if !k.eq_ignore_ascii_case("host") {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        up.write_all(head.as_bytes())?;
        // Bytes the client sent after its request head are in the reader's buffer.
        let buffered = client_r.buffer().to_vec();
        up.write_all(&buffered)?;
        let mut up_r = up.try_clone()?;
        let mut client = client_r.into_inner();
        client.set_read_timeout(None)?;
        let t = std::thread::spawn(move || {
            let _ = std::io::copy(&mut client, &mut up);
            let _ = up.shutdown(Shutdown::Write);
        });
        let _ = std::io::copy(&mut up_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Write);
        let _ = t.join();
        Ok(())
    }
}

/// Runs kubectl against the stand-in apiserver at `api`.
fn kubectl(api: &str, env: &[(&str, &str)], args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut c = Command::new("kubectl");
    c.arg(format!("--server=http://{api}"))
        .arg("--kubeconfig=/dev/null")
        .arg("--request-timeout=60s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("kubectl");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).expect("kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl");
    eprintln!(
        "kubectl {args:?} {env:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A kubectl process killed and reaped however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kubectl_exec_and_port_forward_over_websocket_and_spdy() {
    use std::io::BufRead;
    let (_reg, image) = registry_with_busybox("skctl");
    let k = Keelsond::start("skctl").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "skctl");
    let pod = run_pod(&k, cfg.clone());
    let c = run_container(
        &k,
        &pod,
        &cfg,
        container_config(
            "main",
            &image,
            "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && \
             exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www",
        ),
    );
    let api = fake_api::start(fake_api::Target {
        socket: k.socket(),
        pod: "web".into(),
        sandbox: pod.clone(),
        container: "main".into(),
        container_id: c.clone(),
    });
    let spdy = [
        ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
        ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
    ];
    for env in [&[][..], &spdy[..]] {
        // Output on both streams and the exit code, as kubectl reports them.
        let out = kubectl(
            &api,
            env,
            &[
                "exec",
                "web",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(3), "{env:?}\n{}", k.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
        // Stdin to its end: cat gets EOF and exits 0.
        let out = kubectl(
            &api,
            env,
            &["exec", "-i", "web", "-c", "main", "--", "cat"],
            b"piped line\n",
        );
        assert_eq!(out.status.code(), Some(0), "{env:?}\n{}", k.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "piped line\n");
        // A terminal: kubectl wants one of its own (`script` gives it a pty) and sends its size.
        let cmd = format!(
            "stty cols 123 rows 45; kubectl --server=http://{api} --kubeconfig=/dev/null \
             exec -it web -c main -- sh -c 'busybox sleep 1; busybox tty; busybox stty size'"
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("/dev/pts/") && text.contains("45 123"),
            "{env:?}: {text:?} {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            k.log()
        );
    }
    assert!(
        k.log().contains("exec session (SPDY)"),
        "SPDY was used: {}",
        k.log()
    );

    // Port forward over SPDY: two connections through one kubectl session.
    let mut pf = std::process::Command::new("kubectl");
    pf.arg(format!("--server=http://{api}"))
        .arg("--kubeconfig=/dev/null")
        .args(["port-forward", "web", ":8080"])
        .envs(spdy)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut pf = Reaped(pf.spawn().expect("kubectl port-forward"));
    let mut lines = std::io::BufReader::new(pf.0.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let local = first
        .strip_prefix("Forwarding from ")
        .and_then(|r| r.split(" -> ").next())
        .unwrap_or_else(|| panic!("kubectl port-forward said {first:?}\n{}", k.log()))
        .to_string();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&local).expect("connect to kubectl's port");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.contains("hello-from-pod"), "{resp:?}\n{}", k.log());
    }
    assert!(
        k.log().contains("port forward session (SPDY)"),
        "{}",
        k.log()
    );
    drop(pf);
}

#[test]
fn tokens_expire_after_a_minute_and_waiting_requests_are_bounded() {
    let k = Keelsond::start("sttl").expect("keelsond");
    let cfg = pod_config(&k, "sttl");
    let pod = run_pod(&k, cfg);
    let forward = || {
        k.block_on(async {
            let mut rt = k.runtime().await?;
            rt.port_forward(pb::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![80],
            })
            .await
        })
        .map(|r| r.into_inner().url)
    };
    let url = forward().unwrap_or_else(|e| panic!("PortForward: {e}\n{}", k.log()));
    // 1000 requests may wait for their client; the next one is refused.
    let refused = k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        for i in 1..1000 {
            rt.port_forward(pb::PortForwardRequest {
                pod_sandbox_id: pod.clone(),
                port: vec![80],
            })
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        }
        rt.port_forward(pb::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![80],
        })
        .await
        .expect_err("the 1001st")
    });
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    std::thread::sleep(Duration::from_secs(61));
    assert_eq!(ws_open(&url, &["v4.channel.k8s.io"]).err(), Some(404));
    // Expired requests no longer count.
    forward().expect("room again after the minute");
}
