//! The kubelet in standalone mode, end to end: the `kubelet` binary against a private keelsond
//! (CNI bridge network, real containers from a local registry's busybox image), manifests
//! dropped into its static pod directory, statuses read from its `/pods`.

use keelson_tests::kubelet::{
    Kubelet, Stack as Env, WAIT, condition, container_id, container_status, kubelet_binary, phase,
    tail, uid,
};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn env(hint: &str) -> Env {
    Env::start(hint)
}

/// A one-container pod running `script` with `sh -c`.
fn simple_pod(e: &Env, name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", {script:?}]
"#,
        image = e.image
    )
}

#[test]
fn init_container_then_app_container_reach_running() {
    let e = env("kl-run");
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  initContainers:
  - name: setup
    image: {image}
    command: ["/bin/sh", "-c", "echo initialized"]
  containers:
  - name: app
    image: {image}
    command: ["/bin/sh", "-c", "echo hello from $(WHO); echo second line; exec /bin/busybox sleep 1000"]
    env:
    - {{name: WHO, value: app}}
    - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
"#,
        image = e.image
    );
    e.kl.write_manifest("web.yaml", &manifest)
        .expect("manifest");
    let p =
        e.kl.wait_pod("web", WAIT, |p| {
            phase(p) == "Running" && condition(p, "Ready") == Some("True")
        })
        .unwrap_or_else(|m| panic!("{m}\n--- keelsond ---\n{}", tail(&e.k.log(), 30)));
    // keelsond offers GetContainerEvents: the PLEG follows it (the relist is the safety net).
    assert!(
        e.kl.log()
            .contains("following the runtime's container events"),
        "{}",
        tail(&e.kl.log(), 30)
    );
    let s = &p["status"];
    assert_eq!(p["metadata"]["namespace"], "default");
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/config.source"],
        "file"
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/config.hash"],
        uid(&p).as_str()
    );
    assert!(s["podIP"].as_str().is_some_and(|ip| !ip.is_empty()), "{s}");
    assert_eq!(s["podIPs"][0]["ip"], s["podIP"]);
    assert!(s["hostIP"].as_str().is_some_and(|ip| !ip.is_empty()), "{s}");
    assert_eq!(s["qosClass"], "BestEffort");
    for c in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        assert_eq!(condition(&p, c), Some("True"), "{c}: {s}");
    }
    let init = container_status(&p, "setup").expect("init status");
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);
    // Upstream's prober manager: a regular init container that completed is ready.
    assert_eq!(init["ready"], true);
    let app = container_status(&p, "app").expect("app status");
    assert!(app["state"]["running"]["startedAt"].is_string(), "{app}");
    assert_eq!(app["ready"], true);
    assert_eq!(app["started"], true);
    assert_eq!(app["restartCount"], 0);
    assert_eq!(app["image"], e.image.as_str());
    assert!(
        app["imageID"].as_str().is_some_and(|i| !i.is_empty()),
        "{app}"
    );
    let cid = app["containerID"].as_str().unwrap_or("");
    assert!(cid.starts_with("keelsond://"), "{cid}");

    // The CRI objects carry the kubelet's labels and annotations.
    let cs = e.containers_of(&uid(&p));
    let c = cs
        .iter()
        .find(|c| Some(c.id.as_str()) == cid.strip_prefix("keelsond://"))
        .expect("app container in CRI");
    assert_eq!(c.labels["io.kubernetes.container.name"], "app");
    assert_eq!(c.labels["io.kubernetes.pod.name"], "web-kt-node");
    assert_eq!(c.labels["io.kubernetes.pod.namespace"], "default");
    assert_eq!(c.annotations["io.kubernetes.container.restartCount"], "0");
    let sbs = e.sandboxes_of(&uid(&p));
    assert_eq!(sbs.len(), 1, "{sbs:?}");

    // Logs: <podLogsDir>/<ns>_<name>_<uid>/<container>/<restart>.log, and /containerLogs.
    let log =
        e.kl.pod_logs()
            .join(format!("default_web-kt-node_{}", uid(&p)))
            .join("app/0.log");
    assert!(log.is_file(), "{} missing", log.display());
    let (code, body) =
        e.kl.get("/containerLogs/default/web-kt-node/app")
            .expect("logs");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "hello from app\nsecond line\n");
    let (code, body) =
        e.kl.get("/containerLogs/default/web-kt-node/app?tailLines=1&timestamps=true")
            .expect("logs");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.ends_with(" second line\n") && body.len() > 20,
        "{body:?}"
    );
    let (code, body) =
        e.kl.get("/containerLogs/default/web-kt-node/setup")
            .expect("logs");
    assert_eq!((code, body.as_str()), (200, "initialized\n"));
    // healthz on its own port.
    assert_eq!(
        Kubelet::get_on(e.kl.healthz_port, "/healthz").expect("healthz"),
        (200, "ok".to_string())
    );
}

#[test]
fn never_policy_container_exiting_1_fails_the_pod() {
    let e = env("kl-fail");
    e.kl.write_manifest(
        "fail.yaml",
        &simple_pod(&e, "fail", "Never", "echo bye; exit 1"),
    )
    .expect("manifest");
    let p =
        e.kl.wait_pod("fail", WAIT, |p| phase(p) == "Failed")
            .unwrap_or_else(|m| panic!("{m}"));
    let c = container_status(&p, "main").expect("status");
    let t = &c["state"]["terminated"];
    assert_eq!(t["reason"], "Error", "{c}");
    assert_eq!(t["exitCode"], 1, "{c}");
    assert_eq!(c["restartCount"], 0);
    assert_eq!(c["ready"], false);
    assert_eq!(condition(&p, "Ready"), Some("False"));
    // Stays failed: nothing restarts it.
    std::thread::sleep(Duration::from_secs(3));
    let p = e.kl.pod("fail").expect("pod");
    assert_eq!(phase(&p), "Failed");
    assert_eq!(
        container_status(&p, "main").expect("status")["restartCount"],
        0
    );
    assert_eq!(e.containers_of(&uid(&p)).len(), 1);
}

#[test]
fn always_policy_crash_goes_into_crash_loop_back_off() {
    let e = env("kl-crash");
    e.kl.write_manifest("crash.yaml", &simple_pod(&e, "crash", "Always", "exit 1"))
        .expect("manifest");
    let p =
        e.kl.wait_pod("crash", WAIT, |p| {
            container_status(p, "main").is_some_and(|c| {
                c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                    && c["restartCount"].as_i64().unwrap_or(0) >= 1
            })
        })
        .unwrap_or_else(|m| panic!("{m}"));
    let c = container_status(&p, "main").expect("status");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("back-off 10s restarting failed container=main")),
        "{c}"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error", "{c}");
    assert_eq!(phase(&p), "Running");
    assert_eq!(condition(&p, "ContainersReady"), Some("False"));
}

#[test]
fn removing_the_manifest_removes_the_pod() {
    let e = env("kl-rm");
    e.kl.write_manifest(
        "gone.yaml",
        &simple_pod(
            &e,
            "gone",
            "Always",
            "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done",
        ),
    )
    .expect("manifest");
    let p =
        e.kl.wait_pod("gone", WAIT, |p| phase(p) == "Running")
            .unwrap_or_else(|m| panic!("{m}"));
    let uid = uid(&p);
    assert_eq!(e.sandboxes_of(&uid).len(), 1);
    e.kl.remove_manifest("gone.yaml").expect("rm");
    e.kl.wait_pod_gone("gone", WAIT)
        .unwrap_or_else(|m| panic!("{m}"));
    let end = std::time::Instant::now() + WAIT;
    while !(e.sandboxes_of(&uid).is_empty() && e.containers_of(&uid).is_empty()) {
        assert!(
            std::time::Instant::now() < end,
            "sandboxes left: {:?}\n{}",
            e.sandboxes_of(&uid),
            tail(&e.kl.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn invalid_manifests_are_reported_and_others_run() {
    let e = env("kl-bad");
    e.kl.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: [oops\n",
    )
    .expect("w");
    e.kl.write_manifest(
        "unknown.yaml",
        &simple_pod(&e, "unknown", "Always", "true")
            .replace("  restartPolicy:", "  notAField: 1\n  restartPolicy:"),
    )
    .expect("w");
    e.kl.write_manifest(
        "badname.yaml",
        &simple_pod(&e, "Bad_Name", "Always", "true"),
    )
    .expect("w");
    e.kl.write_manifest(
        "good.yaml",
        &simple_pod(&e, "good", "Always", "exec /bin/busybox sleep 1000"),
    )
    .expect("w");
    e.kl.wait_pod("good", WAIT, |p| phase(p) == "Running")
        .unwrap_or_else(|m| panic!("{m}"));
    let names: Vec<String> = e.kl.pods().expect("pods")["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["good-kt-node"]);
    let log = e.kl.log();
    for (file, why) in [
        ("broken.yaml", "invalid static pod manifest"),
        ("unknown.yaml", "notAField"),
        ("badname.yaml", "metadata.name"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(file) && l.contains(why)),
            "{file}: no line with {why:?} in\n{}",
            tail(&log, 40)
        );
    }
}

#[test]
fn kubelet_restart_keeps_running_containers() {
    let mut e = env("kl-restart");
    let manifest = format!(
        "{}  initContainers:\n  - name: init\n    image: {}\n    command: [\"/bin/sh\", \"-c\", \"true\"]\n",
        simple_pod(&e, "keep", "Always", "exec /bin/busybox sleep 1000"),
        e.image
    );
    e.kl.write_manifest("keep.yaml", &manifest)
        .expect("manifest");
    let before =
        e.kl.wait_pod("keep", WAIT, |p| phase(p) == "Running")
            .unwrap_or_else(|m| panic!("{m}"));
    let ids = |p: &Value| {
        (
            container_status(p, "main").map(|c| c["containerID"].clone()),
            container_status(p, "init").map(|c| c["containerID"].clone()),
            container_status(p, "main").map(|c| c["restartCount"].clone()),
        )
    };
    let cri_before: Vec<String> = e
        .containers_of(&uid(&before))
        .into_iter()
        .map(|c| c.id)
        .collect();
    e.kl.restart().expect("restart");
    // The rebuilt status comes from the runtime: same containers, same counts.
    let after =
        e.kl.wait_pod("keep", WAIT, |p| {
            phase(p) == "Running" && condition(p, "Ready") == Some("True")
        })
        .unwrap_or_else(|m| panic!("{m}"));
    assert_eq!(uid(&after), uid(&before));
    assert_eq!(ids(&after), ids(&before));
    // Give the new kubelet a few syncs to (wrongly) act.
    std::thread::sleep(Duration::from_secs(4));
    let later = e.kl.pod("keep").expect("pod");
    assert_eq!(ids(&later), ids(&before));
    let mut cri_after: Vec<String> = e
        .containers_of(&uid(&later))
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut cri_before = cri_before;
    cri_before.sort();
    cri_after.sort();
    assert_eq!(cri_after, cri_before);
    assert_eq!(e.sandboxes_of(&uid(&later)).len(), 1);
}

#[test]
fn missing_image_is_err_image_pull_then_back_off() {
    let e = env("kl-pull");
    let manifest = simple_pod(&e, "nopull", "Always", "true")
        .replace(&e.image, &e.image.replace("kt/busybox:1", "kt/missing:1"));
    e.kl.write_manifest("nopull.yaml", &manifest)
        .expect("manifest");
    let p =
        e.kl.wait_pod("nopull", WAIT, |p| {
            container_status(p, "main")
                .is_some_and(|c| c["state"]["waiting"]["reason"] == "ImagePullBackOff")
        })
        .unwrap_or_else(|m| panic!("{m}"));
    let c = container_status(&p, "main").expect("status");
    assert!(
        c["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Back-off pulling image") && m.contains("kt/missing:1")),
        "{c}"
    );
    assert_eq!(phase(&p), "Pending");
    assert!(
        e.kl.log().contains("ErrImagePull"),
        "{}",
        tail(&e.kl.log(), 30)
    );
}

#[test]
fn invalid_configuration_exits_with_a_one_line_reason() {
    let bin = kubelet_binary().expect("kubelet binary");
    let dir = tempfile::tempdir().expect("tmp");
    let head = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n";
    for (body, want) in [
        ("cgroupDriver: systemd\n", "systemd"),
        ("bogusField: 1\n", "bogusField"),
        ("fileCheckFrequency: soon\n", "fileCheckFrequency"),
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
            .output()
            .expect("run kubelet");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{body}: {err}");
        assert!(err.contains(want), "{body}: {err}");
    }
}

#[test]
fn changed_manifest_replaces_the_pod_and_orphans_go_after_a_restart() {
    let mut e = env("kl-upd");
    let v1 = simple_pod(&e, "upd", "Always", "echo v1; exec /bin/busybox sleep 1000");
    e.kl.write_manifest("upd.yaml", &v1).expect("manifest");
    let first =
        e.kl.wait_pod("upd", WAIT, |p| phase(p) == "Running")
            .unwrap_or_else(|m| panic!("{m}"));
    // A spec change: a new UID (the hash of the manifest), the old pod torn down.
    let v2 = v1.replace("echo v1", "echo v2");
    e.kl.write_manifest("upd.yaml", &v2).expect("manifest");
    let second =
        e.kl.wait_pod("upd", WAIT, |p| {
            uid(p) != uid(&first) && phase(p) == "Running"
        })
        .unwrap_or_else(|m| panic!("{m}"));
    let end = std::time::Instant::now() + WAIT;
    while !e.sandboxes_of(&uid(&first)).is_empty() {
        assert!(std::time::Instant::now() < end, "old sandbox left");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, body) =
        e.kl.get("/containerLogs/default/upd-kt-node/main")
            .expect("logs");
    assert_eq!(body, "v2\n");
    // The manifest goes while the kubelet is down: the restarted kubelet finds the pod in
    // the runtime, wanted by no source, and removes it.
    e.kl.kill9();
    e.kl.remove_manifest("upd.yaml").expect("rm");
    assert_eq!(e.sandboxes_of(&uid(&second)).len(), 1);
    e.kl.restart().expect("restart");
    let end = std::time::Instant::now() + WAIT;
    while !e.sandboxes_of(&uid(&second)).is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "orphan sandbox left\n{}",
            tail(&e.kl.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(e.kl.pod("upd").is_none());
}

#[test]
fn admission_rejects_pods_that_do_not_fit_the_node() {
    let e = env("kl-admit");
    let with = |name: &str, extra: &str| {
        simple_pod(&e, name, "Always", "exec /bin/busybox sleep 1000")
            .replace("  restartPolicy:", &format!("{extra}  restartPolicy:"))
    };
    e.kl.write_manifest(
        "cpu.yaml",
        &with("cpu", "").replace(
            "    command:",
            "    resources: {requests: {cpu: \"1000\"}}\n    command:",
        ),
    )
    .expect("w");
    e.kl.write_manifest(
        "elsewhere.yaml",
        &with(
            "elsewhere",
            "  nodeSelector: {kubernetes.io/hostname: another-node}\n",
        ),
    )
    .expect("w");
    e.kl.write_manifest(
        "linux.yaml",
        &with("linux", "  nodeSelector: {kubernetes.io/os: linux}\n"),
    )
    .expect("w");
    e.kl.wait_pod("linux", WAIT, |p| phase(p) == "Running")
        .unwrap_or_else(|m| panic!("{m}"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let p =
        e.kl.wait_pod("cpu", WAIT, |p| phase(p) == "Failed")
            .unwrap_or_else(|m| panic!("{m}"));
    assert_eq!(p["status"]["reason"], "OutOfcpu", "{}", p["status"]);
    assert_eq!(
        p["status"]["message"],
        format!(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: {}",
            cores * 1000
        )
    );
    let p =
        e.kl.wait_pod("elsewhere", WAIT, |p| phase(p) == "Failed")
            .unwrap_or_else(|m| panic!("{m}"));
    assert_eq!(p["status"]["reason"], "NodeAffinity", "{}", p["status"]);
    assert_eq!(
        p["status"]["message"],
        "Pod was rejected: Predicate NodeAffinity failed"
    );
    // Rejected pods never reach the runtime.
    for name in ["cpu", "elsewhere"] {
        let p = e.kl.pod(name).expect("listed");
        assert!(e.sandboxes_of(&uid(&p)).is_empty(), "{name} has a sandbox");
    }
}

#[test]
fn keelsond_kill9_the_kubelet_reconnects_and_the_node_recovers() {
    let mut e = env("kl-rtkill");
    let sleep = "exec /bin/busybox sleep 1000";
    let (a, b) = (
        simple_pod(&e, "a", "Always", sleep),
        simple_pod(&e, "b", "Always", sleep),
    );
    e.kl.write_manifest("a.yaml", &a).expect("manifest");
    let before = e.wait("a", "a running", |p| phase(p) == "Running");
    let id = container_id(&before, "main");
    assert!(!id.is_empty());

    e.k.kill9();
    // The runtime is gone: the kubelet stays up and keeps serving.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        e.kl.pid().is_some(),
        "the kubelet exited without its runtime"
    );
    let (code, _) =
        e.kl.get("/pods")
            .expect("GET /pods while the runtime is down");
    assert_eq!(code, 200);

    e.k.restart().expect("keelsond restart");
    // The node recovers: a new pod starts, and the pod that ran is left as it was.
    e.kl.write_manifest("b.yaml", &b).expect("manifest");
    e.wait("b", "b running after the runtime restart", |p| {
        phase(p) == "Running" && condition(p, "Ready") == Some("True")
    });
    let after = e.wait("a", "a still running", |p| {
        phase(p) == "Running" && condition(p, "Ready") == Some("True")
    });
    assert_eq!(container_id(&after, "main"), id);
    assert_eq!(
        container_status(&after, "main").expect("status")["restartCount"],
        0
    );
    assert_eq!(e.containers_of(&uid(&after)).len(), 1);
}
