//! The kubelet is runtime-agnostic: a subset of its end-to-end tests (lifecycle, init
//! containers, restart policy, logs, removal) against Debian's containerd with its built-in CRI
//! plugin and runc, set up by the same stack as the `cri` bench (reference CNI plugins in a
//! test host netns, a local registry with busybox and a pause image, cgroups below this
//! process's own).

use keelson_tests::CgroupScope;
use keelson_tests::cni::Plugins;
use keelson_tests::cri_stack::{Daemon, Images, Kind, Shared, build_images};
use keelson_tests::kubelet::{Kubelet, condition, container_status, tail};
use keelson_tests::placement::{Placement, Relative};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// Drop order: the kubelet (so it recreates nothing), containerd (removes every pod, kills
/// shims, removes the pods' cgroups), the cgroup placement and scope, the registry, the
/// async runtime last.
struct Env {
    kl: Kubelet,
    ctd: Daemon,
    _placement: Placement,
    _scope: CgroupScope,
    images: Images,
    _rt: tokio::runtime::Runtime,
}

fn env() -> Env {
    let containerd = PathBuf::from("/usr/bin/containerd");
    let runc = PathBuf::from("/usr/sbin/runc");
    for bin in [&containerd, &runc] {
        // scripts/deps.sh installs both.
        assert!(bin.is_file(), "{} is missing", bin.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let scope = CgroupScope::new("kcd").expect("cgroup scope");
    let placement = Placement::new(&scope, Relative::ToRoot).expect("placement");
    let dirs: Vec<PathBuf> = placement.leaves().map(|(_, d)| d).collect();
    let images = build_images().expect("images");
    let plugins = Plugins::reference();
    let shared = Shared {
        plugins: &plugins,
        cni_launcher: None,
        registry_config_dir: images.certs_d.path(),
        sandbox_image: &images.pause,
        runc: &runc,
        cgroup_base: &placement.cgroups_path,
        cgroup_base_dirs: &dirs,
        ready_timeout: Duration::from_secs(60),
        interrupted: || false,
    };
    let ctd = Daemon::start(Kind::Containerd, &containerd, &shared, rt.handle().clone())
        .expect("containerd with its CRI plugin");
    let kl =
        Kubelet::start_on(ctd.socket(), &ctd.cgroup_parent, ctd.mount_ns_pid()).expect("kubelet");
    Env {
        kl,
        ctd,
        _placement: placement,
        _scope: scope,
        images,
        _rt: rt,
    }
}

impl Env {
    fn fail(&self, why: String) -> ! {
        panic!(
            "{why}\n--- containerd log ---\n{}",
            tail(&self.ctd.log_tail(200), 40)
        )
    }

    fn wait(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.kl
            .wait_pod(name, WAIT, pred)
            .unwrap_or_else(|e| self.fail(e))
    }
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn logs(kl: &Kubelet, pod: &str, container: &str) -> String {
    let (code, body) = kl
        .get(&format!(
            "/containerLogs/default/{pod}-{}/{container}",
            keelson_tests::kubelet::NODE
        ))
        .expect("GET /containerLogs");
    assert_eq!(code, 200, "containerLogs: {body}");
    body
}

#[test]
fn pod_lifecycle_on_containerd() {
    let e = env();
    let image = &e.images.busybox;
    // An init container, then an app container that stays up; its output goes to the log
    // the kubelet asks containerd to write.
    e.kl.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: init
    image: {image}
    command: ["/bin/sh", "-c", "echo init-ran"]
  containers:
  - name: app
    image: {image}
    command: ["/bin/sh", "-c", "echo app-up; echo to-stderr >&2; exec sleep 3600"]
"#
        ),
    )
    .expect("manifest");
    let p = e.wait("web", |p| {
        phase(p) == "Running" && condition(p, "Ready") == Some("True")
    });
    // containerd 1.6 has no GetContainerEvents: the kubelet relists only.
    assert!(
        e.kl.log()
            .contains("the runtime has no container events; relisting only"),
        "{}",
        tail(&e.kl.log(), 30)
    );
    assert_eq!(condition(&p, "Initialized"), Some("True"));
    assert_eq!(condition(&p, "PodReadyToStartContainers"), Some("True"));
    let init = &p["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);
    let app = container_status(&p, "app").expect("app status");
    assert!(app["state"]["running"].is_object(), "{app}");
    let id = app["containerID"].as_str().unwrap_or("");
    assert!(id.starts_with("containerd://"), "containerID {id}");
    assert!(
        p["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()),
        "podIP: {}",
        p["status"]
    );
    assert_eq!(logs(&e.kl, "web", "init").trim(), "init-ran");
    let app_log = logs(&e.kl, "web", "app");
    assert!(
        app_log.contains("app-up") && app_log.contains("to-stderr"),
        "app log: {app_log:?}"
    );

    // A Never pod whose container fails: Failed with the runtime's exit code and reason.
    e.kl.write_manifest(
        "fail.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: fail
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", "exit 3"]
"#
        ),
    )
    .expect("manifest");
    let p = e.wait("fail", |p| phase(p) == "Failed");
    let st = container_status(&p, "main").expect("status");
    assert_eq!(st["state"]["terminated"]["exitCode"], 3, "{st}");
    assert_eq!(st["state"]["terminated"]["reason"], "Error", "{st}");

    // An Always pod that keeps crashing: restarts counted, then CrashLoopBackOff.
    e.kl.write_manifest(
        "crash.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", "echo crashing; exit 1"]
"#
        ),
    )
    .expect("manifest");
    let p = e.wait("crash", |p| {
        container_status(p, "main").is_some_and(|s| {
            s["restartCount"].as_u64().unwrap_or(0) >= 1
                && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    });
    let st = container_status(&p, "main").expect("status");
    assert_eq!(st["lastState"]["terminated"]["exitCode"], 1, "{st}");

    // Removing the manifests removes the pods from the kubelet and from containerd.
    for f in ["web.yaml", "fail.yaml", "crash.yaml"] {
        e.kl.remove_manifest(f).expect("rm manifest");
    }
    for name in ["web", "fail", "crash"] {
        e.kl.wait_pod_gone(name, WAIT)
            .unwrap_or_else(|why| e.fail(why));
    }
    let left = sandboxes(&e);
    assert!(left.is_empty(), "containerd still has sandboxes: {left:?}");
}

/// The sandbox ids containerd lists (after the kubelet removed its pods: none).
fn sandboxes(e: &Env) -> Vec<String> {
    let mut rt = e.ctd.cri.runtime.clone();
    let end = std::time::Instant::now() + WAIT;
    loop {
        let items = e
            ._rt
            .block_on(
                rt.list_pod_sandbox(keelson_proto::runtime::v1::ListPodSandboxRequest {
                    filter: None,
                }),
            )
            .map(|r| r.into_inner().items)
            .unwrap_or_else(|s| e.fail(format!("ListPodSandbox: {s}")));
        if items.is_empty() || std::time::Instant::now() > end {
            return items.into_iter().map(|s| s.id).collect();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
