//! keelsond over its real gRPC socket, in the areas of the upstream CRI validation suite:
//! runtime info, sandbox lifecycle with networking and DNS, container lifecycle with exit
//! codes and CRI logs, exec sync, OOM, idempotence, restarts, images and bad input.

use keelson_proto::runtime::v1 as pb;
use keelson_tests::cri::registry_with_busybox;
use keelson_tests::cri::{Keelsond, container_config, pod_config};
use std::time::{Duration, Instant};

fn pull(k: &Keelsond, image: &str) -> String {
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
        .map(|r| r.into_inner().image_ref)
    })
    .unwrap_or_else(|e| panic!("pull {image}: {e}\n{}", k.log()))
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

fn create(
    k: &Keelsond,
    pod: &str,
    pcfg: &pb::PodSandboxConfig,
    cfg: pb::ContainerConfig,
) -> String {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pcfg.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
    })
    .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", k.log()))
}

fn start(k: &Keelsond, id: &str) {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.start_container(pb::StartContainerRequest {
            container_id: id.into(),
        })
        .await
    })
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", k.log()));
}

fn status(k: &Keelsond, id: &str) -> pb::ContainerStatus {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.container_status(pb::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
    })
    .unwrap_or_else(|e| panic!("ContainerStatus: {e}"))
    .into_inner()
    .status
    .expect("status")
}

fn pod_status(k: &Keelsond, id: &str) -> pb::PodSandboxStatus {
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.pod_sandbox_status(pb::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
    })
    .unwrap_or_else(|e| panic!("PodSandboxStatus: {e}"))
    .into_inner()
    .status
    .expect("status")
}

fn wait_state(k: &Keelsond, id: &str, want: pb::ContainerState) -> pb::ContainerStatus {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(k, id);
        if s.state == want as i32 {
            return s;
        }
        assert!(
            Instant::now() < end,
            "container {id} stays in {:?}, want {want:?}: {s:?}\n{}",
            pb::ContainerState::try_from(s.state),
            k.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The message lines of a CRI log file (checked for the `<time> <stream> <tag> ` shape).
fn log_lines(path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap_or("");
            let stream = f.next().unwrap_or("").to_string();
            let tag = f.next().unwrap_or("");
            let msg = f.next().unwrap_or("").to_string();
            assert!(ts.contains('T') && ts.ends_with('Z'), "timestamp in {l:?}");
            assert!(stream == "stdout" || stream == "stderr", "stream in {l:?}");
            assert!(tag == "F" || tag == "P", "tag in {l:?}");
            (stream, msg)
        })
        .collect()
}

#[test]
fn version_status_and_runtime_config() {
    let k = Keelsond::start("info").expect("keelsond");
    k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        let v = c
            .version(pb::VersionRequest {
                version: "v1".into(),
            })
            .await
            .expect("version")
            .into_inner();
        assert_eq!(v.runtime_name, "keelsond");
        assert_eq!(v.runtime_api_version, "v1");
        let st = c
            .status(pb::StatusRequest { verbose: true })
            .await
            .expect("status")
            .into_inner();
        let conds = st.status.expect("conditions").conditions;
        let get = |t: &str| conds.iter().find(|c| c.r#type == t).cloned().expect(t);
        assert!(get("RuntimeReady").status);
        assert!(get("NetworkReady").status, "{conds:?}");
        let rc = c
            .runtime_config(pb::RuntimeConfigRequest {})
            .await
            .expect("runtime config")
            .into_inner();
        assert_eq!(
            rc.linux.expect("linux").cgroup_driver,
            pb::CgroupDriver::Cgroupfs as i32
        );
        let e = c
            .checkpoint_container(pb::CheckpointContainerRequest::default())
            .await
            .expect_err("checkpoint");
        assert_eq!(e.code(), tonic::Code::Unimplemented);
    });
    // A broken conf dir: NetworkReady false, naming the file.
    let conf = k.dir.path().join("net.d/10-kt.conflist");
    let good = std::fs::read(&conf).expect("conf");
    std::fs::write(&conf, b"{ not json").expect("break");
    let conds = k.block_on(async {
        let mut c = k.runtime().await.expect("client");
        c.status(pb::StatusRequest { verbose: false })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("conds")
            .conditions
    });
    let net = conds
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    assert!(!net.status);
    assert!(net.message.contains("10-kt.conflist"), "{net:?}");
    std::fs::write(&conf, good).expect("restore");
}

#[test]
fn sandbox_lifecycle_network_dns_and_idempotence() {
    let (_reg, image) = registry_with_busybox("sb");
    let k = Keelsond::start("sandbox").expect("keelsond");
    pull(&k, &image);
    let mut cfg = pod_config(&k, "web");
    cfg.dns_config = Some(pb::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    cfg.labels.insert("app".into(), "kt".into());
    let pod = run_pod(&k, cfg.clone());
    let st = pod_status(&k, &pod);
    assert_eq!(st.state, pb::PodSandboxState::SandboxReady as i32);
    let ip = st.network.expect("network").ip;
    assert!(
        ip.starts_with(&k.net.prefix),
        "pod IP {ip} outside {}",
        k.net.subnet()
    );
    // The pod IP answers from the host side of the bridge.
    assert!(
        keelson_tests::cni::ping(&k.net.host, &ip).expect("ping"),
        "{ip} does not answer from the host side"
    );

    // What a container sees: the pod's hostname, DNS and IP.
    let c = create(
        &k,
        &pod,
        &cfg,
        container_config(
            "probe",
            &image,
            "hostname; cat /etc/resolv.conf; echo lo-flags=$(cat /sys/class/net/lo/flags); \
             ip -4 addr show eth0 2>/dev/null || cat /proc/net/fib_trie",
        ),
    );
    start(&k, &c);
    let s = wait_state(&k, &c, pb::ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 0, "{s:?}");
    let out: String = log_lines(&s.log_path)
        .into_iter()
        .map(|(_, m)| m + "\n")
        .collect();
    assert!(out.lines().next() == Some("web"), "{out}");
    assert!(out.contains("search default.svc.cluster.local"), "{out}");
    assert!(out.contains("nameserver 10.96.0.10"), "{out}");
    assert!(out.contains("options ndots:5"), "{out}");
    assert!(out.contains(&ip), "{out}");
    // `lo` is up (IFF_UP | IFF_LOOPBACK), set so by the infra process.
    assert!(out.contains("lo-flags=0x9\n"), "{out}");

    // Filters.
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let mut sel = std::collections::HashMap::new();
        sel.insert("app".to_string(), "kt".to_string());
        let l = rt
            .list_pod_sandbox(pb::ListPodSandboxRequest {
                filter: Some(pb::PodSandboxFilter {
                    label_selector: sel.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(l.items.len(), 1);
        sel.insert("app".to_string(), "other".to_string());
        let l = rt
            .list_pod_sandbox(pb::ListPodSandboxRequest {
                filter: Some(pb::PodSandboxFilter {
                    label_selector: sel,
                    ..Default::default()
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(l.items.is_empty());
        // A second sandbox with the same metadata is refused.
        let e = rt
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("duplicate");
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    });

    // Stop: NOTREADY, the IP is released; stop and remove twice succeed.
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        for _ in 0..2 {
            rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("stop");
        }
    });
    assert_eq!(
        pod_status(&k, &pod).state,
        pb::PodSandboxState::SandboxNotready as i32
    );
    // A stopped sandbox holds no mount (namespace pins, shm) in keelsond's namespace.
    assert_eq!(
        mounts_under(&k, &format!("sandboxes/{pod}")),
        Vec::<String>::new()
    );
    assert!(
        k.net.allocated_ips().is_empty(),
        "IPs still allocated: {:?}",
        k.net.allocated_ips()
    );
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        for _ in 0..2 {
            rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .expect("remove");
        }
        let e = rt
            .pod_sandbox_status(pb::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .expect_err("gone");
        assert_eq!(e.code(), tonic::Code::NotFound);
        let l = rt
            .list_containers(pb::ListContainersRequest { filter: None })
            .await
            .expect("list")
            .into_inner();
        assert!(l.containers.is_empty(), "{:?}", l.containers);
    });
    // Nothing of the pod stays mounted in keelsond's mount namespace.
    let left = mounts_under(&k, "");
    assert!(left.is_empty(), "mounts left: {left:#?}");
}

/// The mount points in keelsond's mount namespace below `<state dir>/<sub>`.
fn mounts_under(k: &Keelsond, sub: &str) -> Vec<String> {
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", k.mount_ns_pid()))
        .expect("mountinfo");
    let dir = k.state().join(sub);
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| std::path::Path::new(p).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

#[test]
fn container_lifecycle_exit_codes_stop_and_logs() {
    let (_reg, image) = registry_with_busybox("life");
    let k = Keelsond::start("life").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "life");
    let pod = run_pod(&k, cfg.clone());

    // created -> running -> exited with its code, output in the CRI log.
    let c = create(
        &k,
        &pod,
        &cfg,
        container_config(
            "fails",
            &image,
            "echo to-out; echo to-err >&2; sleep 1; exit 3",
        ),
    );
    assert_eq!(
        status(&k, &c).state,
        pb::ContainerState::ContainerCreated as i32
    );
    start(&k, &c);
    let s = status(&k, &c);
    assert_eq!(
        s.state,
        pb::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    assert!(s.started_at > 0);
    let s = wait_state(&k, &c, pb::ContainerState::ContainerExited);
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at, "{s:?}");
    let lines = log_lines(&s.log_path);
    assert!(
        lines.contains(&("stdout".into(), "to-out".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "to-err".into())),
        "{lines:?}"
    );
    // Starting an exited container is refused.
    let e = k
        .block_on(async {
            let mut rt = k.runtime().await.expect("client");
            rt.start_container(pb::StartContainerRequest {
                container_id: c.clone(),
            })
            .await
        })
        .expect_err("restart of exited");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");

    // exit 0 is Completed.
    let ok = create(&k, &pod, &cfg, container_config("ok", &image, "exit 0"));
    start(&k, &ok);
    let s = wait_state(&k, &ok, pb::ContainerState::ContainerExited);
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    // StopContainer: a process that ignores SIGTERM is killed after the timeout.
    let stubborn = create(
        &k,
        &pod,
        &cfg,
        container_config(
            "stubborn",
            &image,
            "trap '' TERM; while true; do sleep 1; done",
        ),
    );
    start(&k, &stubborn);
    let t0 = Instant::now();
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        rt.stop_container(pb::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await
    })
    .expect("stop");
    let s = status(&k, &stubborn);
    assert_eq!(s.state, pb::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert!(t0.elapsed() >= Duration::from_secs(1));

    // A polite one stops on SIGTERM with its own code.
    let polite = create(
        &k,
        &pod,
        &cfg,
        container_config(
            "polite",
            &image,
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ),
    );
    start(&k, &polite);
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        rt.stop_container(pb::StopContainerRequest {
            container_id: polite.clone(),
            timeout: 30,
        })
        .await
    })
    .expect("stop");
    assert_eq!(status(&k, &polite).exit_code, 0);
    // A stopped container's rootfs is unmounted at once (as containerd's task delete does),
    // not when it is removed.
    for id in [&stubborn, &polite] {
        assert!(
            mounts_under(&k, &format!("containers/{id}")).is_empty(),
            "{:#?}",
            mounts_under(&k, &format!("containers/{id}"))
        );
    }

    // List filters, then removal (twice is fine), then a reused name is free again.
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let exited = rt
            .list_containers(pb::ListContainersRequest {
                filter: Some(pb::ContainerFilter {
                    state: Some(pb::ContainerStateValue {
                        state: pb::ContainerState::ContainerExited as i32,
                    }),
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(exited.containers.len(), 4, "{:?}", exited.containers);
        let e = rt
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("ok", &image, "true")),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .expect_err("name in use");
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
        for _ in 0..2 {
            rt.remove_container(pb::RemoveContainerRequest {
                container_id: ok.clone(),
            })
            .await
            .expect("remove");
        }
        rt.create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("ok", &image, "true")),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .expect("name free again");
    });
}

#[test]
fn exec_sync_output_exit_code_and_timeout() {
    let (_reg, image) = registry_with_busybox("exec");
    let k = Keelsond::start("exec").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "exec");
    let pod = run_pod(&k, cfg.clone());
    let c = create(
        &k,
        &pod,
        &cfg,
        container_config("sleeper", &image, "sleep 1000"),
    );
    start(&k, &c);
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let r = rt
            .exec_sync(pb::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; cat /proc/1/cmdline; exit 7".into(),
                ],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        assert_eq!(r.exit_code, 7);
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(out.starts_with("out\n"), "{out}");
        assert!(out.contains("sleep"), "pid 1 is the container's: {out}");
        assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
        let t0 = Instant::now();
        let e = rt
            .exec_sync(pb::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["sh".into(), "-c".into(), "sleep 60".into()],
                timeout: 1,
            })
            .await
            .expect_err("timeout");
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(30));
        let e = rt
            .exec_sync(pb::ExecSyncRequest {
                container_id: "no-such-container".into(),
                cmd: vec!["true".into()],
                timeout: 1,
            })
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), tonic::Code::NotFound);
    });
}

#[test]
fn oom_killed_container_reports_137() {
    let (_reg, image) = registry_with_busybox("oom");
    let k = Keelsond::start("oom").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "oom");
    let pod = run_pod(&k, cfg.clone());
    let mut cc = container_config(
        "hog",
        &image,
        // Doubles a shell variable until the 16 MiB limit kills the process.
        "x=0123456789abcdef; while true; do x=$x$x; done",
    );
    if let Some(l) = cc.linux.as_mut() {
        l.resources = Some(pb::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        });
    }
    let c = create(&k, &pod, &cfg, cc);
    start(&k, &c);
    let s = wait_state(&k, &c, pb::ContainerState::ContainerExited);
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
}

#[test]
fn restart_keeps_sandboxes_containers_and_exit_codes() {
    let (_reg, image) = registry_with_busybox("restart");
    let mut k = Keelsond::start("restart").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "keep");
    let pod = run_pod(&k, cfg.clone());
    let ip = pod_status(&k, &pod).network.expect("net").ip;
    let runner = create(
        &k,
        &pod,
        &cfg,
        container_config("runner", &image, "echo started; sleep 1000"),
    );
    start(&k, &runner);
    let quitter = create(
        &k,
        &pod,
        &cfg,
        container_config("quitter", &image, "sleep 2; exit 9"),
    );
    start(&k, &quitter);
    let before = status(&k, &runner);
    k.kill9();
    // A snapshot tree a removal retired but the killed daemon did not get to delete.
    let leftover = k.root().join("snapshots/active/.rm-leftover");
    std::fs::create_dir_all(leftover.join("upper/etc")).expect("leftover tree");
    std::fs::write(leftover.join("upper/etc/f"), b"x").expect("leftover file");
    std::thread::sleep(Duration::from_secs(3));
    k.restart().expect("restart");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while leftover.exists() {
        assert!(std::time::Instant::now() < end, "the retired tree stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = pod_status(&k, &pod);
    assert_eq!(st.state, pb::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.expect("net").ip, ip);
    let after = status(&k, &runner);
    assert_eq!(after.state, pb::ContainerState::ContainerRunning as i32);
    assert_eq!(after.started_at, before.started_at, "not restarted");
    let q = status(&k, &quitter);
    assert_eq!(
        (q.state, q.exit_code),
        (pb::ContainerState::ContainerExited as i32, 9),
        "{q:?}"
    );
    // Started once: one "started" line in its log.
    let started = log_lines(&after.log_path)
        .iter()
        .filter(|(_, m)| m == "started")
        .count();
    assert_eq!(started, 1);
    // New containers join the recovered sandbox.
    let again = create(&k, &pod, &cfg, container_config("again", &image, "exit 5"));
    start(&k, &again);
    assert_eq!(
        wait_state(&k, &again, pb::ContainerState::ContainerExited).exit_code,
        5
    );
    // And teardown after the restart frees the IP.
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
    })
    .expect("remove");
    assert!(
        k.net.allocated_ips().is_empty(),
        "{:?}",
        k.net.allocated_ips()
    );
}

#[test]
fn images_pull_status_list_remove() {
    let (_reg, image) = registry_with_busybox("img");
    let k = Keelsond::start("images").expect("keelsond");
    let id = pull(&k, &image);
    assert!(id.starts_with("sha256:"), "{id}");
    k.block_on(async {
        let mut c = k.images().await.expect("client");
        let spec = |s: &str| {
            Some(pb::ImageSpec {
                image: s.into(),
                ..Default::default()
            })
        };
        for by in [image.as_str(), id.as_str(), &id[7..19]] {
            let st = c
                .image_status(pb::ImageStatusRequest {
                    image: spec(by),
                    verbose: false,
                })
                .await
                .expect("status")
                .into_inner();
            let img = st.image.unwrap_or_else(|| panic!("status by {by}"));
            assert_eq!(img.id, id);
            assert!(img.repo_tags.contains(&image), "{img:?}");
            assert!(!img.repo_digests.is_empty());
            assert!(img.size > 0);
        }
        let digest_ref = c
            .image_status(pb::ImageStatusRequest {
                image: spec(&image),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .image
            .expect("image")
            .repo_digests[0]
            .clone();
        let st = c
            .image_status(pb::ImageStatusRequest {
                image: spec(&digest_ref),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner();
        assert_eq!(st.image.expect("by digest").id, id);
        let list = c
            .list_images(pb::ListImagesRequest { filter: None })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(list.images.len(), 1);
        let fs = c
            .image_fs_info(pb::ImageFsInfoRequest {})
            .await
            .expect("fsinfo")
            .into_inner();
        assert!(
            fs.image_filesystems[0]
                .used_bytes
                .as_ref()
                .expect("used")
                .value
                > 0
        );
        // Remove by ID: every name goes; again is fine; status is then empty.
        for _ in 0..2 {
            c.remove_image(pb::RemoveImageRequest { image: spec(&id) })
                .await
                .expect("remove");
        }
        for by in [image.as_str(), digest_ref.as_str()] {
            let st = c
                .image_status(pb::ImageStatusRequest {
                    image: spec(by),
                    verbose: false,
                })
                .await
                .expect("status")
                .into_inner();
            assert!(st.image.is_none(), "{by} still there");
        }
        let e = c
            .pull_image(pb::PullImageRequest {
                image: spec("Bad Reference!!"),
                auth: None,
                sandbox_config: None,
            })
            .await
            .expect_err("bad ref");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    });
}

#[test]
fn bad_requests_get_clear_errors_and_leave_nothing() {
    let (_reg, image) = registry_with_busybox("bad");
    let k = Keelsond::start("bad").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "bad");
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let e = rt
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(pb::PodSandboxConfig::default()),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("no metadata");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("metadata"), "{e}");
        let mut bad_sysctl = cfg.clone();
        bad_sysctl
            .linux
            .get_or_insert_with(Default::default)
            .sysctls
            .insert("net/../../x".into(), "1".into());
        let e = rt
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(bad_sysctl),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("bad sysctl");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let e = rt
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: "nope".into(),
            })
            .await
            .expect_err("handler");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
        let list = rt
            .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
            .await
            .expect("list")
            .into_inner();
        assert!(list.items.is_empty(), "{:?}", list.items);

        for id in ["", "0123456789abcdef"] {
            let e = rt
                .container_status(pb::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .expect_err("unknown id");
            assert!(
                matches!(
                    e.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ),
                "{e}"
            );
        }
        // Stop/remove of unknown objects succeed (the kubelet retries them).
        rt.stop_container(pb::StopContainerRequest {
            container_id: "0123456789abcdef".into(),
            timeout: 1,
        })
        .await
        .expect("stop unknown");
        rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
        })
        .await
        .expect("remove unknown");
    });
    let pod = run_pod(&k, cfg.clone());
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let mut relative = container_config("rel", &image, "true");
        relative.mounts.push(pb::Mount {
            container_path: "relative/path".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        });
        let mut no_image = container_config("noimg", &image, "true");
        no_image.image = None;
        let mut missing_image = container_config("missing", &image, "true");
        missing_image.image = Some(pb::ImageSpec {
            image: "127.0.0.1:1/not/there:1".into(),
            ..Default::default()
        });
        let mut no_meta = container_config("nometa", &image, "true");
        no_meta.metadata = None;
        let mut absurd = container_config("absurd", &image, "true");
        absurd.linux.get_or_insert_with(Default::default).resources =
            Some(pb::LinuxContainerResources {
                cpu_shares: -3,
                ..Default::default()
            });
        for (what, c, code) in [
            ("relative mount", relative, tonic::Code::InvalidArgument),
            ("no image", no_image, tonic::Code::InvalidArgument),
            ("missing image", missing_image, tonic::Code::NotFound),
            ("no metadata", no_meta, tonic::Code::InvalidArgument),
            ("negative cpu shares", absurd, tonic::Code::InvalidArgument),
        ] {
            let e = rt
                .create_container(pb::CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(c),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .expect_err(what);
            assert_eq!(e.code(), code, "{what}: {e}");
        }
        let e = rt
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: "0123456789abcdef".into(),
                config: Some(container_config("x", &image, "true")),
                sandbox_config: None,
            })
            .await
            .expect_err("unknown sandbox");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
        let list = rt
            .list_containers(pb::ListContainersRequest { filter: None })
            .await
            .expect("list")
            .into_inner();
        assert!(list.containers.is_empty(), "{:?}", list.containers);
    });
    // No container directory, engine state or snapshot stayed behind.
    let dirs = |p: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(dirs(k.state().join("containers")).is_empty());
    assert!(dirs(k.state().join("keelson")).is_empty());
    // Snapshot trees are deleted in the background, soon after.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = dirs(k.root().join("snapshots/active"));
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < end, "snapshots left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn update_resources_and_container_events() {
    let (_reg, image) = registry_with_busybox("upd");
    let k = Keelsond::start("update").expect("keelsond");
    pull(&k, &image);
    let cfg = pod_config(&k, "upd");
    let pod = run_pod(&k, cfg.clone());
    k.block_on(async {
        let mut rt = k.runtime().await.expect("client");
        let mut events = rt
            .get_container_events(pb::GetEventsRequest {})
            .await
            .expect("events")
            .into_inner();
        let c = rt
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("upd", &image, "sleep 1000")),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .expect("create")
            .into_inner()
            .container_id;
        rt.start_container(pb::StartContainerRequest {
            container_id: c.clone(),
        })
        .await
        .expect("start");
        rt.update_container_resources(pb::UpdateContainerResourcesRequest {
            container_id: c.clone(),
            linux: Some(pb::LinuxContainerResources {
                memory_limit_in_bytes: 48 << 20,
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("update");
        let r = rt
            .exec_sync(pb::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec![
                    "cat".into(),
                    "/sys/fs/cgroup/memory/memory.limit_in_bytes".into(),
                    "/sys/fs/cgroup/cpu/cpu.shares".into(),
                ],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert_eq!(out, format!("{}\n512\n", 48u64 << 20), "{r:?}");
        let st = rt
            .container_status(pb::ContainerStatusRequest {
                container_id: c.clone(),
                verbose: false,
            })
            .await
            .expect("status")
            .into_inner()
            .status
            .expect("status");
        let res = st.resources.and_then(|r| r.linux).expect("resources");
        assert_eq!(res.memory_limit_in_bytes, 48 << 20);
        let e = rt
            .update_container_resources(pb::UpdateContainerResourcesRequest {
                container_id: c.clone(),
                linux: Some(pb::LinuxContainerResources {
                    memory_limit_in_bytes: -5,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect_err("negative limit");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        rt.stop_container(pb::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
        rt.remove_container(pb::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .expect("remove");
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("event in time")
                .expect("stream")
                .expect("event");
            if ev.container_id == c {
                seen.push(ev.container_event_type);
            }
        }
        use pb::ContainerEventType as E;
        assert_eq!(
            seen,
            vec![
                E::ContainerCreatedEvent as i32,
                E::ContainerStartedEvent as i32,
                E::ContainerStoppedEvent as i32,
                E::ContainerDeletedEvent as i32
            ]
        );
    });
}
