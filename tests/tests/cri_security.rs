//! keelsond's containers as the security context, mounts, sysctls, ports and logs ask:
//! what a process inside sees, and what the host sees.

use keelson_proto::runtime::v1 as pb;
use keelson_tests::cri::registry_with_busybox;
use keelson_tests::cri::{Keelsond, container_config, pod_config};
use std::time::{Duration, Instant};

struct Pod<'a> {
    k: &'a Keelsond,
    id: String,
    cfg: pb::PodSandboxConfig,
    image: String,
}

fn setup<'a>(k: &'a Keelsond, image: &str, cfg: pb::PodSandboxConfig) -> Pod<'a> {
    k.block_on(async {
        let mut c = k.images().await.expect("client");
        c.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    })
    .unwrap_or_else(|e| panic!("pull: {e}"));
    let id = k
        .block_on(async {
            let mut c = k.runtime().await.expect("client");
            c.run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
        })
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", k.log()))
        .into_inner()
        .pod_sandbox_id;
    Pod {
        k,
        id,
        cfg,
        image: image.to_string(),
    }
}

impl Pod<'_> {
    /// Creates and starts `c` in this pod; the container's ID.
    fn start(&self, c: pb::ContainerConfig) -> Result<String, tonic::Status> {
        let k = self.k;
        k.block_on(async {
            let mut rt = k.runtime().await?;
            let id = rt
                .create_container(pb::CreateContainerRequest {
                    pod_sandbox_id: self.id.clone(),
                    config: Some(c),
                    sandbox_config: Some(self.cfg.clone()),
                })
                .await?
                .into_inner()
                .container_id;
            rt.start_container(pb::StartContainerRequest {
                container_id: id.clone(),
            })
            .await?;
            Ok::<String, tonic::Status>(id)
        })
    }

    /// Waits (up to 20 s) for container `id` to exit; its status.
    fn wait_exited(&self, id: &str) -> Result<pb::ContainerStatus, tonic::Status> {
        let k = self.k;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let s = k
                .block_on(async {
                    let mut rt = k.runtime().await?;
                    rt.container_status(pb::ContainerStatusRequest {
                        container_id: id.to_string(),
                        verbose: false,
                    })
                    .await
                })?
                .into_inner()
                .status
                .expect("status");
            if s.state == pb::ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            assert!(Instant::now() < end, "container {id} did not exit: {s:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_run(&self, mut c: pb::ContainerConfig) -> Result<(i32, String), tonic::Status> {
        c.image = Some(pb::ImageSpec {
            image: self.image.clone(),
            ..Default::default()
        });
        let id = self.start(c)?;
        let s = self.wait_exited(&id)?;
        let text = std::fs::read_to_string(&s.log_path).unwrap_or_default();
        let out: String = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(|m| format!("{m}\n"))
            .collect();
        Ok((s.exit_code, out))
    }

    fn run(
        &self,
        name: &str,
        script: &str,
        sc: Option<pb::LinuxContainerSecurityContext>,
    ) -> (i32, String) {
        let mut c = container_config(name, &self.image, script);
        if let Some(sc) = sc {
            c.linux
                .get_or_insert_with(Default::default)
                .security_context = Some(sc);
        }
        self.try_run(c)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", self.k.log()))
    }
}

fn pod_ns() -> Option<pb::NamespaceOption> {
    Some(pb::NamespaceOption {
        network: pb::NamespaceMode::Pod as i32,
        pid: pb::NamespaceMode::Container as i32,
        ipc: pb::NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

#[test]
fn users_capabilities_readonly_rootfs_and_no_new_privs() {
    let (_reg, image) = registry_with_busybox("sec");
    let k = Keelsond::start("sec").expect("keelsond");
    let pod = setup(&k, &image, pod_config(&k, "sec"));

    // Default: root, containerd's default capability set (no NET_ADMIN / SYS_ADMIN).
    let (code, out) = pod.run("defaults", "id -u; grep CapEff /proc/self/status", None);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains("CapEff:\t00000000a80425fb"), "{out}");

    // run_as_user/group + supplemental groups.
    let sc = pb::LinuxContainerSecurityContext {
        run_as_user: Some(pb::Int64Value { value: 1000 }),
        run_as_group: Some(pb::Int64Value { value: 3000 }),
        supplemental_groups: vec![4000],
        namespace_options: pod_ns(),
        ..Default::default()
    };
    let (_, out) = pod.run("user", "id -u; id -g; id -G", Some(sc));
    assert_eq!(out, "1000\n3000\n3000 4000\n");

    // run_as_username from the image's /etc/passwd (kt = 1000:1000).
    let sc = pb::LinuxContainerSecurityContext {
        run_as_username: "kt".into(),
        namespace_options: pod_ns(),
        ..Default::default()
    };
    let (_, out) = pod.run("username", "id -u; id -g", Some(sc));
    assert_eq!(out, "1000\n1000\n");

    // Drop ALL, add NET_BIND_SERVICE only; no_new_privs; read-only rootfs.
    let sc = pb::LinuxContainerSecurityContext {
        capabilities: Some(pb::Capability {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        no_new_privs: true,
        readonly_rootfs: true,
        namespace_options: pod_ns(),
        ..Default::default()
    };
    let (_, out) = pod.run(
        "locked",
        "grep -E 'CapEff|NoNewPrivs' /proc/self/status; touch /x 2>&1 || true; touch /dev/shm/ok && echo shm-ok",
        Some(sc),
    );
    assert!(out.contains("CapEff:\t0000000000000400"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("shm-ok"), "{out}");

    // Masked and read-only paths (the defaults), and what privileged lifts.
    let (_, out) = pod.run(
        "masked",
        "wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname 2>&1 || echo ro-sys",
        None,
    );
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains("ro-sys"), "{out}");
    // A privileged container in an unprivileged sandbox is refused.
    let sc = pb::LinuxContainerSecurityContext {
        privileged: true,
        namespace_options: pod_ns(),
        ..Default::default()
    };
    let mut c = container_config("priv", &image, "true");
    c.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(sc);
    let e = pod
        .try_run(c)
        .expect_err("privileged in unprivileged sandbox");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}

#[test]
fn seccomp_profiles() {
    let (_reg, image) = registry_with_busybox("seccomp");
    let k = Keelsond::start("seccomp").expect("keelsond");
    let pod = setup(&k, &image, pod_config(&k, "seccomp"));
    let seccomp =
        |t: pb::security_profile::ProfileType, r: &str| pb::LinuxContainerSecurityContext {
            seccomp: Some(pb::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            namespace_options: pod_ns(),
            ..Default::default()
        };
    use pb::security_profile::ProfileType;
    let (_, out) = pod.run(
        "rt-default",
        "grep Seccomp: /proc/self/status",
        Some(seccomp(ProfileType::RuntimeDefault, "")),
    );
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (_, out) = pod.run(
        "unconfined",
        "grep Seccomp: /proc/self/status",
        Some(seccomp(ProfileType::Unconfined, "")),
    );
    assert!(out.contains("Seccomp:\t0"), "{out}");
    // A localhost profile that denies mkdir with EPERM.
    let dir = tempfile::tempdir().expect("tmp");
    let profile = dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
        })
        .to_string(),
    )
    .expect("profile");
    let (_, out) = pod.run(
        "localhost",
        "mkdir /tmp/x 2>&1 || echo denied",
        Some(seccomp(
            ProfileType::Localhost,
            &profile.display().to_string(),
        )),
    );
    assert!(out.contains("denied"), "{out}");
    let mut c = container_config("missing", &image, "true");
    c.linux
        .get_or_insert_with(Default::default)
        .security_context = Some(seccomp(ProfileType::Localhost, "/nonexistent/profile.json"));
    let e = pod.try_run(c).expect_err("missing profile");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("/nonexistent/profile.json"), "{e}");
}

#[test]
fn host_path_mounts_symlinks_readonly_and_propagation() {
    let (_reg, image) = registry_with_busybox("mounts");
    let k = Keelsond::start("mounts").expect("keelsond");
    let pod = setup(&k, &image, pod_config(&k, "mounts"));
    let host = tempfile::tempdir().expect("tmp");
    let data = host.path().join("data");
    std::fs::create_dir(&data).expect("data");
    std::fs::write(data.join("hello"), "from-host\n").expect("file");
    let link = host.path().join("link");
    std::os::unix::fs::symlink(&data, &link).expect("symlink");
    let mount = |dest: &str, src: &std::path::Path, ro: bool| pb::Mount {
        container_path: dest.into(),
        host_path: src.display().to_string(),
        readonly: ro,
        ..Default::default()
    };
    let mut c = container_config(
        "mounts",
        &image,
        "cat /via-link/hello; echo written > /rw/out; echo x > /ro/y 2>&1 || echo ro-refused",
    );
    c.mounts = vec![
        mount("/via-link", &link, true),
        mount("/rw", &data, false),
        mount("/ro", &data, true),
    ];
    let (code, out) = pod.try_run(c).expect("run");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from-host"), "{out}");
    assert!(out.contains("ro-refused"), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("out")).expect("written"),
        "written\n"
    );
    // A missing host path is created as a directory (as containerd does).
    let fresh = host.path().join("fresh/dir");
    let mut c = container_config("fresh", &image, "ls -d /fresh && echo > /fresh/f");
    c.mounts = vec![mount("/fresh", &fresh, false)];
    let (code, out) = pod.try_run(c).expect("run");
    assert_eq!(code, 0, "{out}");
    assert!(fresh.join("f").exists());
    // Propagation: host-to-container sees a mount made on keelsond's side afterwards. keelsond
    // lives in the fixture's mount namespace: the "host" mounts are made there.
    let shared = tempfile::tempdir().expect("tmp");
    let sp = shared.path().to_path_buf();
    let src = tempfile::tempdir().expect("tmp");
    std::fs::write(src.path().join("marker"), "propagated\n").expect("marker");
    std::fs::create_dir_all(sp.join("sub")).expect("sub");
    let in_keelsond_ns = |script: &str| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", k.mount_ns_pid()))
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    in_keelsond_ns(&format!(
        "mount --bind {0} {0} && mount --make-shared {0}",
        sp.display()
    ));
    let mut c = container_config(
        "prop",
        &image,
        "i=0; while [ $i -lt 100 ] && [ ! -e /prop/sub/marker ]; do sleep 0.1; i=$((i+1)); done; cat /prop/sub/marker",
    );
    c.mounts = vec![pb::Mount {
        container_path: "/prop".into(),
        host_path: sp.display().to_string(),
        propagation: pb::MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let runner = std::thread::scope(|s| {
        let h = s.spawn(|| pod.try_run(c));
        std::thread::sleep(Duration::from_millis(700));
        in_keelsond_ns(&format!(
            "mount --bind {} {}/sub",
            src.path().display(),
            sp.display()
        ));
        h.join().expect("thread")
    });
    let (code, out) = runner.expect("prop run");
    assert_eq!((code, out.as_str()), (0, "propagated\n"));
}

#[test]
fn sysctls_shared_pid_namespace_and_host_network() {
    let (_reg, image) = registry_with_busybox("ns");
    let k = Keelsond::start("ns").expect("keelsond");
    let mut cfg = pod_config(&k, "ns");
    if let Some(l) = cfg.linux.as_mut() {
        l.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
        l.sysctls
            .insert("kernel.shm_rmid_forced".into(), "1".into());
        if let Some(n) = l
            .security_context
            .as_mut()
            .and_then(|s| s.namespace_options.as_mut())
        {
            n.pid = pb::NamespaceMode::Pod as i32;
        }
    }
    let pod = setup(&k, &image, cfg);
    let sc = pb::LinuxContainerSecurityContext {
        namespace_options: Some(pb::NamespaceOption {
            network: pb::NamespaceMode::Pod as i32,
            pid: pb::NamespaceMode::Pod as i32,
            ipc: pb::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (_, out) = pod.run(
        "sysctl",
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced; cat /proc/1/comm; hostname",
        Some(sc),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"80"), "{out}");
    assert_eq!(lines.get(1), Some(&"1"), "{out}");
    // With a pod-wide PID namespace, pid 1 is the infra process.
    assert_eq!(lines.get(2), Some(&"keelson-pause"), "{out}");
    assert_eq!(lines.get(3), Some(&"ns"), "{out}");
    // The host's own value is untouched.
    let host_val = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .expect("host sysctl");
    assert_ne!(host_val.trim(), "80");

    // A host-network pod sees the machine's interfaces and gets no pod IP.
    let mut cfg = pod_config(&k, "hostnet");
    if let Some(n) = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        n.network = pb::NamespaceMode::Node as i32;
    }
    let host = setup(&k, &image, cfg);
    let st = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.pod_sandbox_status(pb::PodSandboxStatusRequest {
                pod_sandbox_id: host.id.clone(),
                verbose: false,
            })
            .await
        })
        .expect("status")
        .into_inner()
        .status
        .expect("status");
    assert!(st.network.is_none(), "{:?}", st.network);
    let sc = pb::LinuxContainerSecurityContext {
        namespace_options: Some(pb::NamespaceOption {
            network: pb::NamespaceMode::Node as i32,
            pid: pb::NamespaceMode::Container as i32,
            ipc: pb::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let my_netns = std::fs::read_link("/proc/self/ns/net").expect("netns");
    let (_, out) = host.run("hostnet", "readlink /proc/self/ns/net", Some(sc));
    assert_eq!(out.trim(), my_netns.display().to_string());
}

#[test]
fn host_port_reaches_the_pod() {
    let (_reg, image) = registry_with_busybox("port");
    let k = Keelsond::start("port").expect("keelsond");
    let mut cfg = pod_config(&k, "port");
    cfg.port_mappings = vec![pb::PortMapping {
        protocol: pb::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18080,
        host_ip: String::new(),
    }];
    let pod = setup(&k, &image, cfg);
    let mut c = container_config(
        "web",
        &pod.image,
        "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    c.image = Some(pb::ImageSpec {
        image: pod.image.clone(),
        ..Default::default()
    });
    k.block_on(async {
        let mut rt = k.runtime().await?;
        let id = rt
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(c),
                sandbox_config: Some(pod.cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(pb::StartContainerRequest { container_id: id })
            .await?;
        Ok::<(), tonic::Status>(())
    })
    .expect("web");
    // From the test host: the host port on the bridge's address.
    let url = format!("http://{}:18080/index.html", k.net.gateway());
    let end = Instant::now() + Duration::from_secs(15);
    let mut got = None;
    while Instant::now() < end {
        got = keelson_tests::cni::fetch(&k.net.host, &url);
        if got.as_deref().is_some_and(|b| b.contains("hello-from-pod")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        got.as_deref().is_some_and(|b| b.contains("hello-from-pod")),
        "{url}: {got:?}\n{}",
        k.log()
    );
}

#[test]
fn log_reopen_and_stats() {
    let (_reg, image) = registry_with_busybox("logs");
    let k = Keelsond::start("logs").expect("keelsond");
    let pod = setup(&k, &image, pod_config(&k, "logs"));
    let c = container_config(
        "talker",
        &image,
        "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done",
    );
    let id = pod.start(c).expect("talker");
    std::thread::sleep(Duration::from_millis(500));
    let log = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.container_status(pb::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
        })
        .expect("status")
        .into_inner()
        .status
        .expect("status")
        .log_path;
    let rotated = format!("{log}.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    k.block_on(async {
        let mut rt = k.runtime().await?;
        rt.reopen_container_log(pb::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
    })
    .expect("reopen");
    std::thread::sleep(Duration::from_millis(500));
    let new = std::fs::read_to_string(&log).expect("new log");
    assert!(new.contains("line-"), "new file gets lines: {new}");
    let old = std::fs::read_to_string(&rotated).expect("old log");
    assert!(old.contains("line-0"), "{old}");
    // Stats from the container's cgroup.
    let stats = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.container_stats(pb::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
        })
        .expect("stats")
        .into_inner()
        .stats
        .expect("stats");
    let mem = stats
        .memory
        .expect("memory")
        .usage_bytes
        .expect("usage")
        .value;
    assert!(mem > 0, "memory usage {mem}");
    let cpu = stats
        .cpu
        .expect("cpu")
        .usage_core_nano_seconds
        .expect("cpu ns")
        .value;
    assert!(cpu > 0, "cpu {cpu}");
    assert_eq!(stats.attributes.expect("attrs").id, id);
}

/// Runs a shell script in keelsond's mount namespace (the fixture's): the "host" side of
/// the containers' mounts.
fn in_keelsond_ns(k: &Keelsond, script: &str) -> Result<(), String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--mount=/proc/{}/ns/mnt", k.mount_ns_pid()))
        .args(["sh", "-c", script])
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Unmounts (lazily, in keelsond's mount namespace) what a test mounted there, also when the
/// test fails; the namespace goes with the fixture anyway, this keeps the order explicit.
struct NsMounts<'a> {
    k: &'a Keelsond,
    paths: Vec<String>,
}

impl Drop for NsMounts<'_> {
    fn drop(&mut self) {
        for p in self.paths.iter().rev() {
            let _ = in_keelsond_ns(self.k, &format!("umount -l {p}"));
        }
    }
}

fn privileged_pod_config(k: &Keelsond, name: &str) -> pb::PodSandboxConfig {
    let mut cfg = pod_config(k, name);
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    cfg
}

fn privileged_sc() -> Option<pb::LinuxContainerSecurityContext> {
    Some(pb::LinuxContainerSecurityContext {
        privileged: true,
        namespace_options: pod_ns(),
        ..Default::default()
    })
}

#[test]
fn recursive_read_only_mounts() {
    let (_reg, image) = registry_with_busybox("rro");
    let k = Keelsond::start("rro").expect("keelsond");
    // The runtime handler says it supports them (mount_setattr exists on this kernel).
    let status = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            rt.status(pb::StatusRequest { verbose: false }).await
        })
        .expect("Status")
        .into_inner();
    let features = status.runtime_handlers[0].features.expect("features");
    assert!(features.recursive_read_only_mounts, "{status:?}");

    let pod = setup(&k, &image, pod_config(&k, "rro"));
    // A host dir with a tmpfs mounted below it (on keelsond's side).
    let host = tempfile::tempdir().expect("tmp");
    let top = host.path().join("top");
    std::fs::create_dir_all(top.join("sub")).expect("sub");
    let sub = top.join("sub").display().to_string();
    in_keelsond_ns(&k, &format!("mount -t tmpfs kk-rro {sub}")).expect("tmpfs");
    let _mounts = NsMounts {
        k: &k,
        paths: vec![sub.clone()],
    };
    let mount = |rro: bool| pb::Mount {
        container_path: "/data".into(),
        host_path: top.display().to_string(),
        readonly: true,
        recursive_read_only: rro,
        ..Default::default()
    };
    let script = "(echo x > /data/sub/f) 2>/dev/null && echo sub-writable || echo sub-ro; \
                  (echo x > /data/top) 2>/dev/null && echo top-writable || echo top-ro";
    let mut c = container_config("rro", &image, script);
    c.mounts = vec![mount(true)];
    let (code, out) = pod.try_run(c).expect("rro run");
    assert_eq!((code, out.as_str()), (0, "sub-ro\ntop-ro\n"));
    // Plain read-only leaves the submount as it is: writable.
    let mut c = container_config("plainro", &image, script);
    c.mounts = vec![mount(false)];
    let (code, out) = pod.try_run(c).expect("ro run");
    assert_eq!((code, out.as_str()), (0, "sub-writable\ntop-ro\n"));

    // containerd's checks: rro needs readonly and private propagation.
    for (name, m, want) in [
        (
            "rrorw",
            pb::Mount {
                readonly: false,
                ..mount(true)
            },
            "conflicts with RW mount",
        ),
        (
            "rroslave",
            pb::Mount {
                propagation: pb::MountPropagation::PropagationHostToContainer as i32,
                ..mount(true)
            },
            "needs private propagation",
        ),
    ] {
        let mut c = container_config(name, &image, "true");
        c.mounts = vec![m];
        let e = pod.try_run(c).expect_err(name);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(want), "{name}: {e:?}");
    }
}

#[test]
fn privileged_containers_devices_and_bidirectional_propagation() {
    let (_reg, image) = registry_with_busybox("privdev");
    let k = Keelsond::start("privdev").expect("keelsond");
    let pod = setup(&k, &image, privileged_pod_config(&k, "privdev"));

    // Privileged: every capability keelsond itself has, /sys mounted read-write and the
    // host's devices (here /dev/loop-control, which no default rule allows).
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    let cap_eff = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let script = "grep CapEff /proc/self/status; \
                  awk '$5 == \"/sys\" { split($6, o, \",\"); print \"sys-\" o[1] }' /proc/self/mountinfo; \
                  ls /dev/loop-control >/dev/null && echo has-loop-control; \
                  (exec 3< /dev/loop-control) && echo loop-control-opens";
    let (code, out) = pod.run("priv", script, privileged_sc());
    assert_eq!(code, 0, "{out}");
    assert_eq!(cap_eff(&out), cap_eff(&own), "{out}");
    assert!(out.contains("sys-rw\n"), "{out}");
    assert!(out.contains("has-loop-control\n"), "{out}");
    assert!(out.contains("loop-control-opens\n"), "{out}");
    // The same unprivileged: default capabilities, /sys read-only, no host devices.
    let (code, out) = pod.run("unpriv", script, None);
    assert_ne!(code, 0, "{out}");
    assert_ne!(cap_eff(&out), cap_eff(&own), "{out}");
    assert!(out.contains("sys-ro\n"), "{out}");
    assert!(!out.contains("has-loop-control"), "{out}");
    assert!(!out.contains("loop-control-opens"), "{out}");

    // CRI devices: /dev/null under another name (same major:minor) read-write, and
    // /dev/loop-control read-only: the device cgroup refuses opening it for writing.
    let mut c = container_config(
        "devices",
        &image,
        "stat -c '%F %t:%T' /dev/kk-null; echo hi > /dev/kk-null && echo null-written; \
         (exec 3< /dev/kk-lc) && echo lc-read-opens; \
         (exec 3> /dev/kk-lc) 2>&1 | grep -q 'not permitted' && echo lc-write-refused",
    );
    let dev = |host: &str, ctr: &str, perms: &str| pb::Device {
        container_path: ctr.into(),
        host_path: host.into(),
        permissions: perms.into(),
    };
    c.devices = vec![
        dev("/dev/null", "/dev/kk-null", "rw"),
        dev("/dev/loop-control", "/dev/kk-lc", "r"),
    ];
    let (code, out) = pod.try_run(c).expect("devices run");
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "character special file 1:3\nnull-written\nlc-read-opens\nlc-write-refused\n"
        ),
        "{}",
        k.log()
    );
    // A device that is not one is refused.
    let mut c = container_config("notdev", &image, "true");
    c.devices = vec![dev("/etc/hostname", "/dev/kk-x", "rw")];
    let e = pod.try_run(c).expect_err("not a device");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Bidirectional: a mount made in the container below the mount appears on the host side
    // (keelsond's mount namespace), where the dir was made a shared mount point.
    let host = tempfile::tempdir().expect("tmp");
    let bd = host.path().join("bidir");
    std::fs::create_dir_all(&bd).expect("bidir");
    let bds = bd.display().to_string();
    let mut mounts = NsMounts {
        k: &k,
        paths: Vec::new(),
    };
    in_keelsond_ns(&k, &format!("mount --bind {bds} {bds}")).expect("bind");
    mounts.paths.push(bds.clone());
    in_keelsond_ns(&k, &format!("mount --make-shared {bds}")).expect("shared");
    mounts.paths.push(format!("{bds}/sub"));
    let mut c = container_config(
        "bidir",
        &image,
        "mkdir -p /bidir/sub && mount -t tmpfs kk-bidir /bidir/sub && echo mounted",
    );
    c.mounts = vec![pb::Mount {
        container_path: "/bidir".into(),
        host_path: bds.clone(),
        propagation: pb::MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    c.linux
        .get_or_insert_with(Default::default)
        .security_context = privileged_sc();
    let (code, out) = pod.try_run(c).expect("bidir run");
    assert_eq!((code, out.as_str()), (0, "mounted\n"));
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", k.mount_ns_pid()))
        .expect("mountinfo");
    assert!(
        mountinfo
            .lines()
            .any(|l| l.contains(&format!(" {bds}/sub ")) && l.contains(" tmpfs kk-bidir ")),
        "{mountinfo}"
    );
    // The test's own mount namespace never saw any of it.
    let own = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!own.contains("kk-bidir"), "{own}");
    drop(mounts);
}

/// ContainerStats.writable_layer: what the container wrote into its rootfs, as `du` counts
/// the snapshot's upper directory (a hard link once), on the filesystem ImageFsInfo names;
/// the kubelet's rootfs.usedBytes and ephemeral-storage come from it.
#[test]
fn writable_layer_usage_is_reported() {
    let (_reg, image) = registry_with_busybox("wl");
    let k = Keelsond::start("wl").expect("keelsond");
    let pod = setup(&k, &image, pod_config(&k, "wl"));
    let c = container_config(
        "writer",
        &image,
        "dd if=/dev/zero of=/big bs=1024 count=1024 2>/dev/null && mkdir /d && echo x > /d/a \
         && ln /d/a /d/b",
    );
    let id = pod.start(c).expect("writer");
    let s = pod.wait_exited(&id).expect("writer status");
    assert_eq!(s.exit_code, 0, "{s:?}");
    let (stats, listed, fs) = k
        .block_on(async {
            let mut rt = k.runtime().await?;
            let one = rt
                .container_stats(pb::ContainerStatsRequest {
                    container_id: id.clone(),
                })
                .await?
                .into_inner()
                .stats;
            let listed = rt
                .list_container_stats(pb::ListContainerStatsRequest {
                    filter: Some(pb::ContainerStatsFilter {
                        id: id.clone(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .stats;
            let mut img = k.images().await?;
            let fs = img
                .image_fs_info(pb::ImageFsInfoRequest {})
                .await?
                .into_inner();
            Ok::<_, tonic::Status>((one, listed, fs))
        })
        .expect("stats");
    let layer = stats
        .and_then(|s| s.writable_layer)
        .expect("a writable layer");
    let du = |flag: &str| -> u64 {
        let upper = k.root().join("snapshots/active").join(&id).join("upper");
        let out = std::process::Command::new("du")
            .args(["-s", "-x", flag])
            .arg(&upper)
            .output()
            .expect("du");
        assert!(out.status.success(), "du {flag}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du figure")
    };
    let used = layer.used_bytes.expect("used_bytes").value;
    let inodes = layer.inodes_used.expect("inodes_used").value;
    assert!(used >= 1 << 20, "{layer:?}");
    assert_eq!(used, du("--block-size=1"), "{layer:?}");
    assert_eq!(inodes, du("--inodes"), "{layer:?}");
    assert!(inodes >= 4, "upper, big, d, d/a = d/b: {layer:?}");
    assert!(layer.timestamp > 0);
    let mountpoint = layer.fs_id.as_ref().expect("fs_id").mountpoint.clone();
    assert_eq!(
        Some(mountpoint.as_str()),
        fs.container_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.as_str()),
    );
    // A second call within the refresh period reuses the walk.
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].writable_layer.as_ref(), Some(&layer));
}
