//! The kubelet server end to end: the `kubelet` binary against a private keelsond with a
//! busybox pod, talked to over HTTPS with the certificate the kubelet generated: the static
//! pod picked up by inotify, `/stats/summary`, `/metrics`, `/metrics/resource`, `/configz`,
//! `/run`, `/exec` over WebSocket through the kubelet's proxy, the /var/log/containers links
//! and log rotation.

use keelson_tests::kubelet::{
    Kubelet, NODE, Stack as Env, WAIT, container_status, kubelet_binary, tail,
};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

fn env(hint: &str, extra_config: &str) -> Env {
    Env::start_with(hint, extra_config)
}

fn get_json(kl: &Kubelet, path: &str) -> Value {
    let (code, body) = kl.get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The value of the sample `series` (name with labels, exactly as printed) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

/// Standard base64 decoded by hand (the PEM body of the kubelet's certificate).
fn unbase64(s: &str) -> Vec<u8> {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ABC.iter().position(|a| *a == ch).expect("base64") as u32;
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

/// The DER of the first certificate of a PEM file.
fn first_pem_der(pem: &str) -> Vec<u8> {
    let body = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|r| r.split("-----END CERTIFICATE-----").next())
        .expect("a certificate in the PEM file");
    unbase64(body)
}

fn wait_for<T>(what: &str, kl: &Kubelet, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "{what}: not within {WAIT:?}\n{}",
            tail(&kl.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The log files of container `main` of the pod (current and rotated).
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

type Ws = tungstenite::WebSocket<native_tls::TlsStream<std::net::TcpStream>>;

/// Opens `path` on the kubelet as a WebSocket (over its TLS port) with `protocols`.
fn ws_open(kl: &Kubelet, path: &str, protocols: &str) -> Result<(Ws, Option<String>), u16> {
    let tls = kl.tls_connect().expect("TLS connect");
    let mut req = format!("wss://127.0.0.1:{}{path}", kl.port)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().expect("header"));
    match tungstenite::client(req, tls) {
        Ok((ws, resp)) => Ok((
            ws,
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        )),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            Err(r.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake on {path}: {e}"),
    }
}

/// Every (channel, bytes) message until the server closes, and the close code.
fn read_channels(ws: &mut Ws) -> (Vec<(u8, Vec<u8>)>, Option<u16>) {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end, "no close within 30s: {got:?}");
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if let Some((c, d)) = b.split_first() {
                    got.push((*c, d.to_vec()));
                }
            }
            Ok(Message::Close(f)) => return (got, f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            ) => return (got, None),
            Err(e) => panic!("reading: {e} after {got:?}"),
        }
    }
}

fn channel(got: &[(u8, Vec<u8>)], ch: u8) -> String {
    String::from_utf8_lossy(
        &got.iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect::<Vec<u8>>(),
    )
    .into_owned()
}

/// One pod, everything the server offers about it. fileCheckFrequency is 5 minutes, so the
/// pod can only be picked up in time through inotify; the log limit is 1Ki with 3 files and
/// a 3 s monitor interval (upstream's minimum), so the chatty container is rotated often.
#[test]
fn https_server_stats_metrics_exec_and_logs() {
    let e = env(
        "ksrv",
        "fileCheckFrequency: 5m\ncontainerLogMaxSize: 1Ki\ncontainerLogMaxFiles: 3\n\
         containerLogMonitorInterval: 3s\nauthentication: {anonymous: {enabled: true}, webhook: {enabled: false}}\n\
         authorization: {mode: AlwaysAllow}\n",
    );
    let kl = &e.kl;

    // HTTPS with the generated certificate: the server presents <cert-dir>/kubelet.crt; plain
    // HTTP on the same port gets no answer; healthz stays plain HTTP.
    let pem = std::fs::read_to_string(kl.dir.path().join("pki/kubelet.crt")).expect("kubelet.crt");
    assert!(kl.dir.path().join("pki/kubelet.key").is_file());
    assert_eq!(
        kl.peer_certificate().expect("peer certificate"),
        first_pem_der(&pem)
    );
    assert!(Kubelet::get_on(kl.port, "/healthz").is_err());
    assert_eq!(
        Kubelet::get_on(kl.healthz_port, "/healthz").expect("healthz"),
        (200, "ok".to_string())
    );

    // A chatty container: ~2.5 KiB of log a second, some CPU; and a web server on the pod's
    // loopback only (for the port forward).
    let web = "head -c 65536 /dev/zero > /scratch/blob && mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let script = "while true; do i=0; while [ $i -lt 40 ]; do echo \"line $i abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz\"; i=$((i+1)); done; sleep 1; done";
    kl.write_manifest(
        "stats.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stats\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {}\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n  - name: web\n    image: {}\n    command: [\"/bin/sh\", \"-c\", {web:?}]\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  volumes: [{{name: scratch, emptyDir: {{}}}}, {{name: host, hostPath: {{path: /tmp}}}}]\n",
            e.image, e.image
        ),
    )
    .expect("manifest");
    let pod = kl
        .wait_pod("stats", WAIT, |p| {
            ["main", "web"]
                .iter()
                .all(|n| container_status(p, n).is_some_and(|c| c["state"]["running"].is_object()))
        })
        .unwrap_or_else(|m| panic!("{m}"));
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    let cid = container_status(&pod, "main").expect("status")["containerID"]
        .as_str()
        .and_then(|s| s.split_once("://"))
        .map(|(_, id)| id.to_string())
        .expect("containerID");
    let pod_name = format!("stats-{NODE}");

    // /stats/summary: the node, the pod with its container, network from the sandbox.
    let find_pod = |s: &Value| -> Option<Value> {
        s["pods"]
            .as_array()?
            .iter()
            .find(|p| p["podRef"]["uid"] == uid.as_str())
            .cloned()
    };
    let first = wait_for("the pod in /stats/summary", kl, || {
        find_pod(&get_json(kl, "/stats/summary"))
            .filter(|p| p["containers"][0]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0))
            // The web container writes its blob right after it starts.
            .filter(|p| p["volume"][0]["usedBytes"].as_u64() >= Some(65536))
    });
    let s = get_json(kl, "/stats/summary");
    assert_eq!(s["node"]["nodeName"], NODE, "{s}");
    assert!(
        s["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{s}"
    );
    assert!(
        s["node"]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{s}"
    );
    assert!(s["node"]["fs"]["capacityBytes"].as_u64() > Some(0), "{s}");
    assert!(s["node"]["startTime"].is_string(), "{s}");
    assert_eq!(first["podRef"]["name"], pod_name.as_str(), "{first}");
    assert_eq!(first["podRef"]["namespace"], "default", "{first}");
    assert_eq!(
        first["containers"].as_array().map(Vec::len),
        Some(2),
        "{first}"
    );
    let c = &first["containers"][0];
    assert_eq!(c["name"], "main", "{first}");
    assert!(c["startTime"].is_string(), "{first}");
    assert!(c["memory"]["workingSetBytes"].as_u64() > Some(0), "{first}");
    assert!(c["memory"]["usageBytes"].as_u64() > Some(0), "{first}");
    assert!(c["logs"]["usedBytes"].as_u64() > Some(0), "{first}");
    assert!(
        first["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{first}"
    );
    assert!(
        first["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{first}"
    );
    let ifaces: Vec<&str> = first["network"]["interfaces"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ifaces.contains(&"eth0"),
        "pod interfaces {ifaces:?}: {first}"
    );
    assert_eq!(first["network"]["name"], "eth0", "{first}");
    // Volumes with figures (the emptyDir, not the hostPath), counted in the pod's ephemeral
    // storage with the logs.
    let vols = first["volume"].as_array().cloned().unwrap_or_default();
    assert_eq!(vols.len(), 1, "{first}");
    assert_eq!(vols[0]["name"], "scratch", "{first}");
    let vol_used = vols[0]["usedBytes"].as_u64().unwrap_or(0);
    assert!(vol_used >= 65536, "{first}");
    assert!(vols[0]["capacityBytes"].as_u64() > Some(0), "{first}");
    assert!(vols[0]["inodesUsed"].as_u64() >= Some(1), "{first}");
    // The container's writable layer, from the runtime's ContainerStats (at least the upper
    // directory itself), is in the pod's ephemeral storage too.
    let rootfs_used = c["rootfs"]["usedBytes"].as_u64().expect("rootfs.usedBytes");
    assert!(c["rootfs"]["inodesUsed"].as_u64() >= Some(1), "{first}");
    assert!(c["rootfs"]["capacityBytes"].as_u64() > Some(0), "{first}");
    assert!(
        first["ephemeral-storage"]["usedBytes"].as_u64()
            >= Some(vol_used + rootfs_used + c["logs"]["usedBytes"].as_u64().unwrap_or(0)),
        "{first}"
    );
    // CPU keeps counting, and with two samples a rate appears.
    let t0 = c["cpu"]["usageCoreNanoSeconds"].as_u64().expect("cpu");
    let later = wait_for("CPU usage to grow", kl, || {
        std::thread::sleep(Duration::from_millis(1200));
        find_pod(&get_json(kl, "/stats/summary")).filter(|p| {
            p["containers"][0]["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(t0)
                && p["containers"][0]["cpu"]["usageNanoCores"].is_u64()
        })
    });
    assert!(later["cpu"]["usageNanoCores"].is_u64(), "{later}");
    let only = get_json(kl, "/stats/summary?only_cpu_and_memory=true");
    let op = find_pod(&only).expect("pod in only_cpu_and_memory");
    assert!(
        op["network"].is_null() && op["containers"][0]["logs"].is_null(),
        "{op}"
    );
    assert!(
        op["containers"][0]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{op}"
    );

    // /metrics: upstream's families, with the pod start and PLEG histograms observed (with
    // keelsond's event stream the PLEG relists every 10 s: wait for a second relist).
    let mut tries = 0;
    let (code, m) = loop {
        let (code, m) = kl.get("/metrics").expect("/metrics");
        tries += 1;
        if code != 200
            || sample(&m, "kubelet_pleg_relist_interval_seconds_count") > Some(0.0)
            || tries > 150
        {
            break (code, m);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 200, "{m}");
    assert!(
        m.contains("# TYPE kubelet_pod_start_duration_seconds histogram"),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kubelet_pod_start_duration_seconds_count"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kubelet_pod_start_duration_seconds_bucket{le=\"+Inf\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "kubelet_pleg_relist_duration_seconds_count") > Some(0.0),
        "{m}"
    );
    assert!(
        sample(&m, "kubelet_pleg_relist_interval_seconds_count") > Some(0.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_pod_worker_duration_seconds_count{operation_type=\"create\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "kubelet_running_pods"), Some(1.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "kubelet_running_containers{container_state=\"running\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_runtime_operations_total{operation_type=\"list_podsandbox\"}"
        ) > Some(0.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_runtime_operations_total{operation_type=\"start_container\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_runtime_operations_duration_seconds_count{operation_type=\"start_container\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_runtime_operations_duration_seconds_bucket{operation_type=\"run_podsandbox\",le=\"+Inf\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "kubelet_started_containers_total{container_type=\"container\"}"
        ) >= Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, &format!("kubelet_node_name{{node=\"{NODE}\"}}")),
        Some(1.0),
        "{m}"
    );
    let (code, r) = kl.get("/metrics/resource").expect("/metrics/resource");
    assert_eq!(code, 200, "{r}");
    let series = format!(
        "container_memory_working_set_bytes{{container=\"main\",namespace=\"default\",pod=\"{pod_name}\"}}"
    );
    assert!(
        r.lines().any(|l| l.starts_with(&series)),
        "{series} in:\n{r}"
    );

    // /configz: the effective configuration with upstream's names.
    let z = get_json(kl, "/configz");
    let kc = &z["kubeletconfig"];
    assert_eq!(kc["fileCheckFrequency"], "5m0s", "{z}");
    assert_eq!(kc["containerLogMaxSize"], "1Ki", "{z}");
    assert_eq!(kc["containerLogMaxFiles"], 3, "{z}");
    assert_eq!(kc["port"], kl.port, "{z}");
    assert_eq!(kc["authorization"]["mode"], "AlwaysAllow", "{z}");
    assert_eq!(kc["authentication"]["anonymous"]["enabled"], true, "{z}");

    // /run: ExecSync's output; POST only; a failing command is a 500.
    let run = format!("/run/default/{pod_name}/main?cmd=echo%20hello%20run");
    assert_eq!(
        kl.request("POST", &run).expect("run"),
        (200, "hello run\n".to_string())
    );
    assert_eq!(kl.get(&run).expect("GET run").0, 405);
    let (code, body) = kl
        .request("POST", &format!("/run/default/{pod_name}/main?cmd=false"))
        .expect("run false");
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        kl.request("POST", &format!("/run/default/{pod_name}/nosuch?cmd=true"))
            .expect("run")
            .0,
        404
    );

    // /exec over WebSocket through the kubelet to keelsond's streaming server: stdout on
    // channel 1, stderr on 2, the v4 status on 3.
    let exec = format!(
        "/exec/default/{pod_name}/main?command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262&output=1&error=1"
    );
    let (mut ws, proto) =
        ws_open(kl, &exec, "v4.channel.k8s.io, channel.k8s.io").expect("exec upgrade");
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let (got, close) = read_channels(&mut ws);
    assert_eq!(channel(&got, 1), "out\n", "{got:?}");
    assert_eq!(channel(&got, 2), "err\n", "{got:?}");
    let st: Value = serde_json::from_str(&channel(&got, 3)).expect("status JSON");
    assert_eq!(st["status"], "Success", "{st}");
    assert_eq!(close, Some(1000), "{got:?}");
    // A failing command: its exit code on the error channel.
    let (mut ws, _) = ws_open(
        kl,
        &format!("/exec/default/{pod_name}/main?command=sh&command=-c&command=exit%207&output=1"),
        "v4.channel.k8s.io",
    )
    .expect("exec upgrade");
    let (got, _) = read_channels(&mut ws);
    let st: Value = serde_json::from_str(&channel(&got, 3)).expect("status JSON");
    assert_eq!(st["details"]["causes"][0]["message"], "7", "{st}");
    // Without an upgrade, without streams, for an unknown pod: refused.
    let (code, body) = kl
        .get(&format!(
            "/exec/default/{pod_name}/main?command=true&output=1"
        ))
        .expect("exec");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Upgrade request required"), "{body}");
    assert_eq!(
        ws_open(
            kl,
            &format!("/exec/default/{pod_name}/main?command=true"),
            "v4.channel.k8s.io"
        )
        .err(),
        Some(400)
    );
    assert_eq!(
        ws_open(
            kl,
            "/exec/default/nosuch/main?command=true&output=1",
            "v4.channel.k8s.io"
        )
        .err(),
        Some(404)
    );

    // /attach over WebSocket through the kubelet: the chatty container's stdout on channel 1.
    let (mut ws, proto) = ws_open(
        kl,
        &format!("/attach/default/{pod_name}/main?output=1"),
        "v4.channel.k8s.io",
    )
    .expect("attach upgrade");
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let end = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !seen.contains("line 39 ") {
        assert!(Instant::now() < end, "no output through /attach: {seen:?}");
        match ws.read() {
            Ok(Message::Binary(b)) if b.first() == Some(&1) => {
                seen.push_str(&String::from_utf8_lossy(&b[1..]));
            }
            Ok(_) => {}
            Err(e) => panic!("attach: {e} after {seen:?}"),
        }
    }
    let _ = ws.close(None);
    assert_eq!(
        ws_open(
            kl,
            &format!("/attach/default/{pod_name}/nosuch?output=1"),
            "v4.channel.k8s.io"
        )
        .err(),
        Some(404)
    );

    // /portForward over WebSocket through the kubelet: each channel pair starts with the port
    // (little endian), then the pod's loopback httpd answers on channel 0.
    let pf = format!("/portForward/default/{pod_name}?port=8080");
    let body = wait_for("the port forward to reach httpd", kl, || {
        let (mut ws, proto) = ws_open(kl, &pf, "v4.channel.k8s.io").expect("port forward upgrade");
        assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
        let mut first = Vec::new();
        while first.len() < 2 {
            if let Message::Binary(b) = ws.read().expect("port headers") {
                first.push(b.to_vec());
            }
        }
        assert_eq!(first, [vec![0u8, 0x90, 0x1f], vec![1u8, 0x90, 0x1f]]);
        let mut m = vec![0u8];
        m.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
        ws.send(Message::Binary(m.into())).expect("send");
        let (got, _) = read_channels(&mut ws);
        let body = channel(&got, 0);
        body.contains("hello-from-pod").then_some(body)
    });
    assert!(body.starts_with("HTTP/1."), "{body}");

    // The /var/log/containers link of the container points at its log file.
    let log_dir = kl
        .pod_logs()
        .join(format!("default_{pod_name}_{uid}"))
        .join("main");
    let link = kl
        .log_links()
        .join(format!("{pod_name}_default_main-{cid}.log"));
    assert_eq!(
        std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display())),
        log_dir.join("0.log")
    );

    // Rotation: rotated files appear, older ones compressed, never more than 3 files.
    let gz = wait_for("a compressed rotated log", kl, || {
        let files = log_files(&log_dir);
        assert!(
            files.len() <= 3,
            "more than containerLogMaxFiles: {files:?}"
        );
        files
            .into_iter()
            .find(|f| f.to_string_lossy().ends_with(".gz"))
    });
    let name = gz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // 0.log.YYYYMMDD-hhmmss.gz
    let stamp = name
        .strip_prefix("0.log.")
        .and_then(|r| r.strip_suffix(".gz"))
        .unwrap_or_else(|| panic!("rotated name {name}"));
    assert!(
        stamp.len() == 15 && stamp.as_bytes()[8] == b'-',
        "timestamp in {name}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz).expect("open gz"))
        .read_to_string(&mut text)
        .expect("gunzip");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains(" stdout F line ")),
        "a CRI log: {text:?}"
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(3));
        let files = log_files(&log_dir);
        assert!(
            files.len() <= 3,
            "more than containerLogMaxFiles: {files:?}"
        );
    }
    // The runtime writes to the new file, and /containerLogs reads it (right after a rotation
    // the new file may still be empty: the container writes every second).
    let logs = format!("/containerLogs/default/{pod_name}/main");
    let lines_in = |query: &str| {
        let (code, body) = kl.get(&format!("{logs}{query}")).expect("logs");
        assert_eq!(code, 200, "{body}");
        body.starts_with("line ").then_some(body)
    };
    let body = wait_for("a line via tailLines=1", kl, || lines_in("?tailLines=1"));
    assert_eq!(body.lines().count(), 1, "{body}");
    // sinceTime / sinceSeconds filter by the CRI timestamps; both at once is refused.
    assert_eq!(
        kl.get(&format!("{logs}?sinceTime=2100-01-01T00:00:00Z"))
            .expect("logs"),
        (200, String::new())
    );
    wait_for("lines via sinceSeconds", kl, || {
        lines_in("?sinceSeconds=3600")
    });
    assert_eq!(
        kl.get(&format!(
            "{logs}?sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z"
        ))
        .expect("logs")
        .0,
        400
    );
    // follow=true streams new lines, across rotations, without losing any: the container
    // numbers its lines 0..39 in each burst.
    let mut tls = kl.tls_connect().expect("tls");
    write!(
        tls,
        "GET {logs}?follow=true&tailLines=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let end = Instant::now() + Duration::from_secs(60);
    let numbers = |raw: &[u8]| -> Vec<u32> {
        String::from_utf8_lossy(raw)
            .split('\n')
            .filter_map(|l| l.strip_prefix("line "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    };
    while numbers(&raw).len() < 200 {
        assert!(
            Instant::now() < end,
            "follow: {}",
            String::from_utf8_lossy(&raw)
        );
        let n = tls.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "reading the followed log: {e}: {}\n{}",
                String::from_utf8_lossy(&raw),
                tail(&kl.log(), 40)
            )
        });
        assert!(
            n > 0,
            "follow ended early: {}\n{}",
            String::from_utf8_lossy(&raw),
            tail(&kl.log(), 40)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ns = numbers(&raw);
    for w in ns.windows(2) {
        assert!(
            w[1] == w[0] + 1 || (w[0] == 39 && w[1] == 0),
            "a line went missing while following: {ns:?}"
        );
    }
    drop(tls);

    // Removing the manifest: the pod goes (inotify again) and its link with it.
    kl.remove_manifest("stats.yaml").expect("rm");
    kl.wait_pod_gone("stats", WAIT)
        .unwrap_or_else(|m| panic!("{m}"));
    wait_for("the log link to go", kl, || {
        (!link.exists() && std::fs::symlink_metadata(&link).is_err()).then_some(())
    });

    // A restart reuses the generated pair; with tlsCertFile/tlsPrivateKeyFile the kubelet
    // serves those files and generates nothing.
    let mut e = e;
    e.kl.restart().expect("restart");
    assert_eq!(
        e.kl.peer_certificate().expect("peer certificate"),
        first_pem_der(&pem),
        "the generated certificate is kept"
    );
    let pki = e.kl.dir.path().join("pki");
    let own = e.kl.dir.path().join("own");
    std::fs::create_dir_all(&own).expect("mkdir");
    std::fs::rename(pki.join("kubelet.crt"), own.join("serving.crt")).expect("mv crt");
    std::fs::rename(pki.join("kubelet.key"), own.join("serving.key")).expect("mv key");
    let mut cfg = std::fs::read_to_string(e.kl.config_path()).expect("config");
    cfg.push_str(&format!(
        "tlsCertFile: {}\ntlsPrivateKeyFile: {}\n",
        own.join("serving.crt").display(),
        own.join("serving.key").display()
    ));
    std::fs::write(e.kl.config_path(), cfg).expect("config");
    e.kl.restart().expect("restart with tlsCertFile");
    assert_eq!(
        e.kl.peer_certificate().expect("peer certificate"),
        first_pem_der(&pem)
    );
    assert!(
        !pki.join("kubelet.crt").exists(),
        "nothing generated when tlsCertFile is set"
    );
    assert_eq!(
        get_json(&e.kl, "/configz")["kubeletconfig"]["tlsCertFile"],
        own.join("serving.crt").display().to_string()
    );
}

/// Settings the standalone server cannot honour are refused at start with a clear reason.
#[test]
fn server_settings_that_need_an_apiserver_are_refused() {
    let bin = kubelet_binary().expect("kubelet binary");
    let dir = tempfile::tempdir().expect("tmp");
    let head = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n";
    for (body, want) in [
        ("authorization: {mode: Webhook}\n", "needs the apiserver"),
        (
            "authentication: {webhook: {enabled: true}}\n",
            "needs the apiserver",
        ),
        ("tlsCertFile: /nonexistent.crt\n", "together"),
        ("containerLogMaxFiles: 1\n", "containerLogMaxFiles"),
        (
            "containerLogMonitorInterval: 1s\n",
            "containerLogMonitorInterval",
        ),
    ] {
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, format!("{head}{body}")).expect("w");
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&f)
            .arg("--container-runtime-endpoint")
            .arg("unix:///nonexistent.sock")
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .arg("--cert-dir")
            .arg(dir.path().join("pki"))
            .output()
            .expect("run kubelet");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{body}: {err}");
        assert!(err.contains(want), "{body}: {err}");
    }
    assert!(
        !dir.path().join("pki").exists(),
        "nothing generated for a refused configuration"
    );
}
