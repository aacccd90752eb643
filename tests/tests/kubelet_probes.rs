//! The kubelet's probes, lifecycle hooks, termination messages and sidecars, end to end: the
//! `kubelet` binary against a private keelsond with busybox containers from a local
//! registry; the test drives containers with CRI ExecSync and watches `/pods`, the container
//! logs and an HTTP server of its own (the target of httpGet probes and hooks with
//! `host: 127.0.0.1`).

use keelson_proto::runtime::v1 as pb;
use keelson_tests::kubelet::{
    Stack as Env, WAIT, condition, container_id, container_status, phase, tail,
};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn env(hint: &str) -> Env {
    Env::start(hint)
}

/// This file's helpers on the shared stack.
trait ProbeEnv {
    /// Runs `sh -c script` in the current instance of container `name` of `pod`.
    fn exec_in(&self, pod: &str, name: &str, script: &str) -> pb::ExecSyncResponse;
    /// [`ProbeEnv::exec_in`] that must exit 0.
    fn run(&self, pod: &str, name: &str, script: &str);
    /// The log of instance `restart` of container `name` (CRI format).
    fn container_log(&self, pod: &Value, name: &str, restart: u32) -> String;
}

impl ProbeEnv for Env {
    fn exec_in(&self, pod: &str, name: &str, script: &str) -> pb::ExecSyncResponse {
        let p = self.kl.pod(pod).expect("pod listed");
        let id = container_id(&p, name);
        assert!(!id.is_empty(), "{pod}/{name} has no container id");
        self.exec(&id, script)
    }

    fn run(&self, pod: &str, name: &str, script: &str) {
        let r = self.exec_in(pod, name, script);
        assert_eq!(
            r.exit_code,
            0,
            "{script:?} in {pod}/{name}: {} {}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }

    fn container_log(&self, pod: &Value, name: &str, restart: u32) -> String {
        let dir = format!(
            "default_{}_{}",
            pod["metadata"]["name"].as_str().unwrap_or(""),
            pod["metadata"]["uid"].as_str().unwrap_or("")
        );
        std::fs::read_to_string(
            self.kl
                .pod_logs()
                .join(dir)
                .join(name)
                .join(format!("{restart}.log")),
        )
        .unwrap_or_default()
    }
}

fn cs<'a>(p: &'a Value, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    container_status(p, name).unwrap_or(&NULL)
}

fn running(p: &Value, name: &str) -> bool {
    cs(p, name)["state"]["running"].is_object()
}

fn restarts(p: &Value, name: &str) -> i64 {
    cs(p, name)["restartCount"].as_i64().unwrap_or(0)
}

fn terminated<'a>(p: &'a Value, name: &str) -> &'a Value {
    &cs(p, name)["state"]["terminated"]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// An HTTP server on 127.0.0.1 that answers 200 to everything and keeps the request heads.
struct Recorder {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Recorder {
            port,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_for(&self, path: &str) -> String {
        let end = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < end {
            if let Some(h) = self
                .heads()
                .into_iter()
                .find(|h| h.starts_with(&format!("GET {path} ")))
            {
                return h;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no request for {path}; got {:?}", self.heads());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// exec (startup, liveness), httpGet by port name with a header (readiness) on busybox
/// httpd, and httpGet and tcpSocket to the test's own server. The pod uses the host's
/// network and the probes name `host: 127.0.0.1`: the pods' own network lives in a test
/// netns the kubelet is not in, so pod IPs are not reachable from it here. startup gates the other probes,
/// readiness drives `ready` and the Ready/ContainersReady conditions both ways, a failed
/// liveness probe kills the container and it restarts with restartCount incremented.
#[test]
fn probes_drive_started_ready_and_restarts() {
    let e = env("kl-probes");
    let rec = Recorder::start();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 5
  hostNetwork: true
  containers:
  - name: web
    image: {image}
    command: ["/bin/sh", "-c", "/bin/busybox mkdir -p /www; exec /bin/busybox httpd -f -p 127.0.0.1:{web_port} -h /www"]
    ports:
    - {{name: http, containerPort: {web_port}}}
    startupProbe:
      exec: {{command: ["/bin/sh", "-c", "echo x >> /tmp/startup-runs; test -f /tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 120
    livenessProbe:
      exec: {{command: ["/bin/sh", "-c", "echo x >> /tmp/liveness-runs; test ! -f /tmp/dead"]}}
      periodSeconds: 1
      failureThreshold: 2
    readinessProbe:
      httpGet: {{host: 127.0.0.1, path: /ready, port: http, httpHeaders: [{{name: X-Probe, value: "yes"}}]}}
      periodSeconds: 1
  - name: peer
    image: {image}
    command: ["/bin/sh", "-c", "exec /bin/busybox sleep 100000"]
    readinessProbe:
      httpGet: {{host: 127.0.0.1, port: {port}, path: "/check?x=1", httpHeaders: [{{name: X-Test, value: probe}}]}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{host: 127.0.0.1, port: {port}}}
      periodSeconds: 1
"#,
        image = e.image,
        port = rec.port,
        web_port = free_port(),
    );
    e.kl.write_manifest("probed.yaml", &manifest)
        .expect("manifest");
    let nostart = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nostart
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: never-starts
    image: {image}
    command: ["/bin/sh", "-c", "exec /bin/busybox sleep 100000"]
    startupProbe:
      tcpSocket: {{host: 127.0.0.1, port: {closed_port}}}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 3
"#,
        image = e.image,
        closed_port = free_port(),
    );
    e.kl.write_manifest("nostart.yaml", &nostart)
        .expect("manifest");

    // The startup probe runs and fails: not started, not ready, and liveness/readiness of
    // `web` do not run.
    let p = e.wait("probed", "web running, startup probe run 3 times", |p| {
        running(p, "web") && cs(p, "web")["started"] == false
    });
    assert_eq!(cs(&p, "web")["ready"], false);
    let end = std::time::Instant::now() + WAIT;
    loop {
        let out = e.exec_in("probed", "web", "/bin/busybox wc -l < /tmp/startup-runs");
        let n: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < end, "startup probe not running");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = e.exec_in("probed", "web", "test -f /tmp/liveness-runs");
    assert_ne!(
        out.exit_code, 0,
        "the liveness probe ran before the startup probe succeeded"
    );
    let p = e.kl.pod("probed").expect("pod");
    assert_eq!(cs(&p, "web")["started"], false);
    assert_eq!(condition(&p, "Ready"), Some("False"));

    // The peer's probes reach the test's server with upstream's headers.
    let head = rec.wait_for("/check?x=1");
    assert!(head.starts_with("GET /check?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("User-Agent: kube-probe/1.35\r\n"), "{head}");
    assert!(head.contains("X-Test: probe\r\n"), "{head}");
    assert!(head.contains("Accept: */*\r\n"), "{head}");
    e.wait("probed", "peer ready", |p| cs(p, "peer")["ready"] == true);

    // Startup passes: started; not ready until /ready answers 200.
    e.run("probed", "web", "/bin/busybox touch /tmp/started");
    let p = e.wait("probed", "web started", |p| cs(p, "web")["started"] == true);
    assert_eq!(cs(&p, "web")["ready"], false);
    e.run("probed", "web", "echo ok > /www/ready");
    let p = e.wait("probed", "pod ready", |p| {
        condition(p, "Ready") == Some("True") && condition(p, "ContainersReady") == Some("True")
    });
    assert_eq!(cs(&p, "web")["ready"], true);
    assert_eq!(restarts(&p, "web"), 0);
    // The liveness probe runs now that the container started.
    assert_eq!(
        e.exec_in("probed", "web", "test -f /tmp/liveness-runs")
            .exit_code,
        0
    );

    // Readiness failing: not ready again, the container keeps running.
    e.run("probed", "web", "/bin/busybox rm /www/ready");
    let p = e.wait("probed", "pod unready", |p| {
        condition(p, "Ready") == Some("False") && cs(p, "web")["ready"] == false
    });
    assert!(running(&p, "web"));
    let ready_cond = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready_cond["reason"], "ContainersNotReady");
    assert!(
        ready_cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("web")),
        "{ready_cond}"
    );

    // Liveness failing: killed and restarted, restartCount 1, lastState terminated.
    e.run("probed", "web", "/bin/busybox touch /tmp/dead");
    let p = e.wait("probed", "web restarted", |p| {
        restarts(p, "web") >= 1 && running(p, "web")
    });
    assert!(
        cs(&p, "web")["lastState"]["terminated"].is_object(),
        "{p:#}"
    );
    // The new instance starts over: not started, not ready.
    assert_eq!(cs(&p, "web")["started"], false);
    assert_eq!(cs(&p, "web")["ready"], false);
    let log = e.kl.log();
    assert!(
        log.contains("Container web failed liveness probe, will be restarted"),
        "{}",
        tail(&log, 40)
    );
    assert_eq!(restarts(&p, "peer"), 0);

    // A startup probe that never passes kills its container with the probe's own grace
    // period; it restarts.
    let p = e.wait("nostart", "never-starts restarted", |p| {
        restarts(p, "never-starts") >= 1
    });
    assert_eq!(cs(&p, "never-starts")["ready"], false);
    let log = e.kl.log();
    assert!(
        log.contains(
            "Stopping container never-starts: Container never-starts failed startup probe, will be restarted container=never-starts grace=3"
        ),
        "{}",
        tail(&log, 40)
    );
}

/// postStart/preStop hooks (exec, httpGet, sleep), a failing postStart hook, the grace
/// period, and termination messages from the file, a custom path and the log fallback.
#[test]
fn hooks_grace_and_termination_messages() {
    let e = env("kl-hooks");
    let rec = Recorder::start();
    let hooks = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: hooks
spec:
  terminationGracePeriodSeconds: 6
  containers:
  - name: exec-hooks
    image: {image}
    command: ["/bin/sh", "-c", "while ! test -f /tmp/poststart; do /bin/busybox sleep 0.2; done; echo saw $(cat /tmp/poststart); trap 'echo got TERM; exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      postStart:
        exec: {{command: ["/bin/sh", "-c", "echo poststart-ran > /tmp/poststart"]}}
      preStop:
        exec: {{command: ["/bin/sh", "-c", "echo prestop-ran > /proc/1/fd/1"]}}
  - name: http-hooks
    image: {image}
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      postStart:
        httpGet: {{host: 127.0.0.1, port: {port}, path: /poststart}}
      preStop:
        httpGet: {{host: 127.0.0.1, port: {port}, path: /prestop}}
  - name: stubborn
    image: {image}
    command: ["/bin/sh", "-c", "trap 'echo ignoring TERM' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      preStop:
        sleep: {{seconds: 1}}
"#,
        image = e.image,
        port = rec.port
    );
    let failing = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: badhook
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", "trap 'exit 7' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      postStart:
        exec: {{command: ["/bin/sh", "-c", "echo no; exit 3"]}}
"#,
        image = e.image
    );
    let messages = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: messages
spec:
  restartPolicy: Never
  containers:
  - name: file
    image: {image}
    command: ["/bin/sh", "-c", "printf 'custom message' > /dev/termination-log; exit 3"]
  - name: custom-path
    image: {image}
    terminationMessagePath: /tmp/my-message
    command: ["/bin/sh", "-c", "echo from custom path > /tmp/my-message"]
  - name: fallback
    image: {image}
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["/bin/sh", "-c", "echo first line; echo last line >&2; exit 1"]
  - name: fallback-ok
    image: {image}
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["/bin/sh", "-c", "echo all good"]
  - name: file-wins
    image: {image}
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["/bin/sh", "-c", "echo log line; printf 'from file' > /dev/termination-log; exit 2"]
"#,
        image = e.image
    );
    e.kl.write_manifest("hooks.yaml", &hooks).expect("manifest");
    e.kl.write_manifest("badhook.yaml", &failing)
        .expect("manifest");
    e.kl.write_manifest("messages.yaml", &messages)
        .expect("manifest");

    // postStart: exec ran in the container, httpGet reached the server.
    let p = e.wait("hooks", "hooks running", |p| {
        ["exec-hooks", "http-hooks", "stubborn"]
            .iter()
            .all(|c| running(p, c))
    });
    rec.wait_for("/poststart");
    let end = std::time::Instant::now() + WAIT;
    while !e
        .container_log(&p, "exec-hooks", 0)
        .contains("saw poststart-ran")
    {
        assert!(
            std::time::Instant::now() < end,
            "postStart exec hook did not run"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A failing postStart hook kills the container; with restartPolicy Never the pod fails.
    let bad = e.wait("badhook", "badhook failed", |p| phase(p) == "Failed");
    let t = terminated(&bad, "main");
    assert!(t.is_object(), "terminated for good: {bad:#}");
    assert_ne!(t["exitCode"], 0, "killed by the kubelet: {bad:#}");
    assert_eq!(cs(&bad, "main")["started"], false);
    assert!(e.kl.log().contains("FailedPostStartHook"));

    // Termination messages.
    let m = e.wait("messages", "messages done", |p| {
        [
            "file",
            "custom-path",
            "fallback",
            "fallback-ok",
            "file-wins",
        ]
        .iter()
        .all(|c| terminated(p, c).is_object())
    });
    assert_eq!(terminated(&m, "file")["message"], "custom message");
    assert_eq!(terminated(&m, "file")["exitCode"], 3);
    assert_eq!(
        terminated(&m, "custom-path")["message"],
        "from custom path\n"
    );
    assert_eq!(
        terminated(&m, "fallback")["message"],
        "first line\nlast line\n"
    );
    assert!(terminated(&m, "fallback-ok")["message"].is_null(), "{m:#}");
    assert_eq!(terminated(&m, "file-wins")["message"], "from file");
    assert_eq!(phase(&m), "Failed");
    // The message files live under <root-dir>/pods/<uid>/containers/<name>/.
    let uid = m["metadata"]["uid"].as_str().unwrap_or("");
    let files = keelson_tests::kubelet::files_below(
        &e.kl
            .dir
            .path()
            .join("root/pods")
            .join(uid)
            .join("containers/file"),
    );
    assert_eq!(files.len(), 1, "{files:?}");

    // Removal: preStop hooks run, then the containers stop within the grace period; the one
    // ignoring SIGTERM is killed when the grace period ends.
    e.kl.remove_manifest("hooks.yaml").expect("remove");
    rec.wait_for("/prestop");
    e.kl.wait_pod_gone("hooks", WAIT).expect("gone");
    let hooks_uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let end = std::time::Instant::now() + WAIT;
    while !e
        .kl
        .log()
        .lines()
        .any(|l| l.contains("pod terminated") && l.contains(&hooks_uid))
    {
        assert!(
            std::time::Instant::now() < end,
            "hooks not torn down\n{}",
            tail(&e.kl.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let exec_log = e.container_log(&p, "exec-hooks", 0);
    let prestop_at = exec_log.find("prestop-ran");
    let term_at = exec_log.find("got TERM");
    assert!(
        prestop_at.is_some() && term_at.is_some() && prestop_at < term_at,
        "preStop before SIGTERM: {exec_log}\n{}",
        tail(&e.kl.log(), 60)
    );
    let stubborn = e.container_log(&p, "stubborn", 0);
    assert!(stubborn.contains("ignoring TERM"), "{stubborn}");
    let log = e.kl.log();
    // The 1 s preStop sleep is taken from the 6 s grace period.
    assert!(
        log.contains("Stopping container stubborn container=stubborn grace=5"),
        "{}",
        tail(&log, 40)
    );
    assert!(
        log.contains("running the preStop hook"),
        "{}",
        tail(&log, 40)
    );
    // The termination message files of a removed pod are gone.
    assert!(
        !e.kl
            .dir
            .path()
            .join("root/pods")
            .join(&hooks_uid)
            .join("containers")
            .exists()
    );
}

/// Sidecars (init containers with restartPolicy Always): started in order, the next one only
/// after the previous started (its startup probe passed); they restart on their own while the
/// main container runs; when the main container completes they are stopped last, in reverse
/// order, and the pod Succeeds.
#[test]
fn sidecars_order_restart_and_completion() {
    let e = env("kl-sidecar");
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: side
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  initContainers:
  - name: setup
    image: {image}
    command: ["/bin/sh", "-c", "echo setup done"]
  - name: side1
    image: {image}
    restartPolicy: Always
    command: ["/bin/sh", "-c", "trap 'echo side1 TERM; exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    startupProbe:
      exec: {{command: ["/bin/busybox", "test", "-f", "/tmp/up"]}}
      periodSeconds: 1
      failureThreshold: 300
  - name: side2
    image: {image}
    restartPolicy: Always
    command: ["/bin/sh", "-c", "trap 'echo side2 TERM; exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    readinessProbe:
      exec: {{command: ["/bin/busybox", "true"]}}
      periodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", "while ! test -f /tmp/finish; do /bin/busybox sleep 0.2; done; echo main done"]
"#,
        image = e.image
    );
    e.kl.write_manifest("side.yaml", &manifest)
        .expect("manifest");

    // side1 runs but has not started: side2 and main wait; the pod is Pending.
    let p = e.wait("side", "side1 running, not started", |p| {
        running(p, "side1") && cs(p, "side1")["started"] == false
    });
    assert_eq!(terminated(&p, "setup")["exitCode"], 0);
    assert_eq!(cs(&p, "setup")["ready"], true);
    assert!(cs(&p, "side2")["containerID"].is_null(), "{p:#}");
    assert!(cs(&p, "main")["containerID"].is_null(), "{p:#}");
    assert_eq!(phase(&p), "Pending");
    assert_eq!(condition(&p, "Initialized"), Some("False"));

    // side1 started → side2, then main.
    e.run("side", "side1", "/bin/busybox touch /tmp/up");
    let p = e.wait("side", "all running", |p| {
        running(p, "side1")
            && running(p, "side2")
            && running(p, "main")
            && condition(p, "Ready") == Some("True")
    });
    assert_eq!(phase(&p), "Running");
    assert_eq!(condition(&p, "Initialized"), Some("True"));
    assert_eq!(cs(&p, "side2")["ready"], true);
    let started_at = |c: &str| {
        cs(&p, c)["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(started_at("side1") <= started_at("side2"));
    assert!(started_at("side2") <= started_at("main"));
    let log = e.kl.log();
    let order: Vec<usize> = ["side1", "side2", "main"]
        .iter()
        .map(|c| {
            log.find(&format!("container started container={c} "))
                .unwrap_or(usize::MAX)
        })
        .collect();
    assert!(
        order[0] < order[1] && order[1] < order[2],
        "start order {order:?}\n{}",
        tail(&log, 40)
    );

    // side2 dies: it restarts while main keeps running.
    e.run("side", "side2", "kill 1");
    let p = e.wait("side", "side2 restarted", |p| {
        restarts(p, "side2") >= 1 && running(p, "side2")
    });
    assert!(running(&p, "main"));
    assert_eq!(restarts(&p, "main"), 0);
    assert_eq!(phase(&p), "Running");

    // main completes: the sidecars are stopped (side2 before side1) and the pod Succeeds.
    e.run("side", "main", "/bin/busybox touch /tmp/finish");
    let p = e.wait("side", "pod succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(terminated(&p, "main")["exitCode"], 0);
    assert!(terminated(&p, "side1").is_object(), "{p:#}");
    assert!(terminated(&p, "side2").is_object(), "{p:#}");
    let log = e.kl.log();
    let stop1 = log.find("Stopping container side1");
    let stop2 = log.find("Stopping container side2");
    assert!(
        stop1.is_some() && stop2.is_some() && stop2 < stop1,
        "stop order\n{}",
        tail(&log, 40)
    );
    let side1_log = e.container_log(&p, "side1", 0);
    assert!(side1_log.contains("side1 TERM"), "{side1_log}");

    // A pod with a sidecar removed: every preStop hook starts at once (the sidecar's too),
    // the sidecar is stopped only after the main container, whose hook takes a second.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sidestop
spec:
  terminationGracePeriodSeconds: 8
  initContainers:
  - name: helper
    image: {image}
    restartPolicy: Always
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      preStop:
        exec: {{command: ["/bin/busybox", "true"]}}
  containers:
  - name: app
    image: {image}
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do /bin/busybox sleep 0.2; done"]
    lifecycle:
      preStop:
        sleep: {{seconds: 1}}
"#,
        image = e.image
    );
    e.kl.write_manifest("sidestop.yaml", &manifest)
        .expect("manifest");
    e.wait("sidestop", "both running", |p| {
        running(p, "helper") && running(p, "app")
    });
    let before = e.kl.log().len();
    e.kl.remove_manifest("sidestop.yaml").expect("rm");
    e.wait_until("the sidecar is stopped", || {
        e.kl.log()
            .get(before..)
            .is_some_and(|l| l.contains("Stopping container helper"))
    });
    let log = e.kl.log().get(before..).unwrap_or_default().to_string();
    let at = |needle: &str| log.find(needle).unwrap_or(usize::MAX);
    let helper_hook = at("running the preStop hook container=helper");
    let app_stop = at("Stopping container app");
    let helper_stop = at("Stopping container helper");
    assert!(
        helper_hook < app_stop && app_stop < helper_stop,
        "hook/stop order {helper_hook} {app_stop} {helper_stop}\n{}",
        tail(&log, 40)
    );
}

/// The node IP the kubelet gives host-network pods (its first IPv4 address on an interface
/// that is up and not loopback), where a gRPC probe of such a pod connects.
fn node_ip() -> String {
    use nix::net::if_::InterfaceFlags;
    nix::ifaddrs::getifaddrs()
        .expect("getifaddrs")
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .find_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|s| s.ip().to_string()))
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// A grpc.health.v1 server of the test on the node IP; its status of service "kt" is
/// switched by the test.
struct HealthServer {
    port: u16,
    reporter: tonic_health::server::HealthReporter,
    rt: tokio::runtime::Runtime,
}

impl HealthServer {
    fn start(ip: &str) -> HealthServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio");
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(format!("{ip}:0")))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        HealthServer { port, reporter, rt }
    }

    fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.rt
            .block_on(self.reporter.set_service_status("kt", status));
    }
}

#[test]
fn grpc_probe_readiness_follows_the_health_service() {
    let e = env("kl-grpc");
    let health = HealthServer::start(&node_ip());
    health.set(true);
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: grpc
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["/bin/busybox", "sleep", "1000"]
    readinessProbe:
      grpc: {{port: {port}, service: kt}}
      periodSeconds: 1
      failureThreshold: 1
"#,
        image = e.image,
        port = health.port
    );
    e.kl.write_manifest("grpc.yaml", &manifest)
        .expect("manifest");
    e.wait("grpc", "ready through the gRPC probe", |p| {
        condition(p, "Ready") == Some("True") && cs(p, "main")["ready"] == true
    });
    health.set(false);
    let p = e.wait("grpc", "not ready once the service says NOT_SERVING", |p| {
        condition(p, "Ready") == Some("False") && cs(p, "main")["ready"] == false
    });
    // Readiness never restarts the container.
    assert!(running(&p, "main"));
    assert_eq!(restarts(&p, "main"), 0);
    health.set(true);
    e.wait("grpc", "ready again", |p| {
        condition(p, "Ready") == Some("True")
    });
}
