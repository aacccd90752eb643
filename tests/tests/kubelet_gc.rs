//! The kubelet's garbage collection, end to end (real kubelet + keelsond + a local registry's
//! busybox): dead container instances of a crash-looping pod, everything a removed pod leaves
//! (containers, sandboxes, its log directory and log links, its pod directory), image GC by
//! disk usage thresholds, and the configuration checks. The collection periods (upstream's
//! fixed 1m/5m) are shortened with keelson's `--keelson-*-gc-period` flags.

use keelson_proto::runtime::v1 as pb;
use keelson_tests::cri::Keelsond;
use keelson_tests::images::{Compression, ImageSpec, LayerBuilder, Layout};
use keelson_tests::kubelet::{
    Kubelet, container_status, kubelet_binary, pod_containers, pod_sandboxes, tail,
};
use keelson_tests::registry::Registry;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

/// Pushes busybox (plus `extra` as a file, which makes a different image) as `repo:tag`.
fn push(reg: &Registry, repo: &str, tag: &str, extra: Option<&[u8]>) -> String {
    let mut b = LayerBuilder::busybox_base().expect("busybox");
    if let Some(data) = extra {
        b = b.file("gc-extra", data);
    }
    let spec = ImageSpec::new(vec![(b.finish(), Compression::Gzip)]);
    let mut layout = Layout::new().expect("layout");
    layout.add_tagged(&spec, tag).expect("image");
    reg.push_layout(layout.path(), tag, repo, &[])
        .expect("push");
    format!("{}/{repo}:{tag}", reg.addr())
}

fn pod(name: &str, image: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {image}
    command: ["/bin/sh", "-c", {script:?}]
"#
    )
}

fn log_path(k: &Keelsond, id: &str) -> String {
    k.block_on(async {
        let mut c = k.runtime().await?;
        c.container_status(pb::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
        .map(|r| {
            r.into_inner()
                .status
                .map(|s| s.log_path)
                .unwrap_or_default()
        })
    })
    .expect("ContainerStatus")
}

/// Every tag and digest of the runtime's images.
fn image_names(k: &Keelsond) -> Vec<String> {
    k.block_on(async {
        let mut c = k.images().await?;
        c.list_images(pb::ListImagesRequest { filter: None })
            .await
            .map(|r| {
                r.into_inner()
                    .images
                    .into_iter()
                    .flat_map(|i| i.repo_tags.into_iter().chain(i.repo_digests))
                    .collect()
            })
    })
    .expect("ListImages")
}

fn pull(k: &Keelsond, image: &str) {
    k.block_on(async {
        let mut c = k.images().await?;
        c.pull_image(pb::PullImageRequest {
            image: Some(pb::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
    })
    .expect("PullImage");
}

/// Polls `f` until it gives Some or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn exited(c: &pb::Container) -> bool {
    c.state == pb::ContainerState::ContainerExited as i32
}

#[test]
fn dead_instances_are_collected_and_a_removed_pod_leaves_nothing() {
    let reg = Registry::start().expect("registry");
    let image = push(&reg, "kt/busybox", "1", None);
    let k = Keelsond::start("kl-gc-crash").expect("keelsond");
    let kl = Kubelet::start_with_flags(&k, "", &["--keelson-container-gc-period", "1s"])
        .expect("kubelet");
    let dump = |what: &str| {
        format!(
            "{what}\n--- kubelet ---\n{}\n--- keelsond ---\n{}",
            tail(&kl.log(), 60),
            tail(&k.log(), 20)
        )
    };
    // Each instance prints a line of its own, then fails: CrashLoopBackOff (10s, then 20s).
    kl.write_manifest(
        "crash.yaml",
        &pod(
            "crash",
            &image,
            "Always",
            "echo run-$(cat /proc/sys/kernel/random/uuid); exit 1",
        ),
    )
    .expect("manifest");
    let p = kl
        .wait_pod("crash", WAIT, |p| {
            container_status(p, "main")
                .and_then(|c| c["restartCount"].as_i64())
                .is_some_and(|n| n >= 2)
        })
        .unwrap_or_else(|m| panic!("{m}"));
    let uid = p["metadata"]["uid"].as_str().expect("uid").to_string();
    // Three instances were made; the runtime keeps the current one and at most one dead one
    // (exactly one while the current one is dead too).
    let kept = wait_for(WAIT, || {
        let cs = pod_containers(&k, &uid);
        let dead: Vec<&pb::Container> = cs.iter().filter(|c| exited(c)).collect();
        (dead.len() == 1 && cs.len() <= 2 && cs.len() - dead.len() <= 1).then(|| cs.clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "{}",
            dump(&format!(
                "dead instances not collected: {:?}",
                pod_containers(&k, &uid)
                    .iter()
                    .map(|c| (c.metadata.as_ref().map(|m| m.attempt), c.state))
                    .collect::<Vec<_>>()
            ))
        )
    });
    assert!(
        kept.iter()
            .all(|c| c.metadata.as_ref().is_some_and(|m| m.attempt >= 1)),
        "the oldest instance should be gone: {kept:?}"
    );
    // `previous=true` gives the log of the newest dead instance (the pod's lastState), which
    // GC kept; the invariant holds whenever it is looked at.
    let ok = wait_for(WAIT, || {
        let cs = pod_containers(&k, &uid);
        if cs.iter().filter(|c| exited(c)).count() > 1 {
            panic!("{}", dump(&format!("more than one dead instance: {cs:?}")));
        }
        let dead = cs.iter().find(|c| exited(c))?;
        let p = kl.pod("crash")?;
        let last = container_status(&p, "main")?["lastState"]["terminated"]["containerID"]
            .as_str()?
            .to_string();
        if last != format!("keelsond://{}", dead.id) {
            return None;
        }
        let (code, body) = kl
            .get("/containerLogs/default/crash-kt-node/main?previous=true")
            .ok()?;
        let file = std::fs::read_to_string(log_path(&k, &dead.id)).ok()?;
        (code == 200 && body.starts_with("run-") && file.contains(body.trim())).then_some(())
    });
    assert!(
        ok.is_some(),
        "{}",
        dump("previous logs of the kept instance")
    );

    // The pod goes: its containers, sandboxes, log directory, log links and pod directory too.
    let log_dir = kl.pod_logs().join(format!("default_crash-kt-node_{uid}"));
    assert!(log_dir.is_dir(), "{}", log_dir.display());
    let links = |kl: &Kubelet| -> Vec<String> {
        std::fs::read_dir(kl.log_links())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("crash-kt-node_"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(!links(&kl).is_empty(), "no log links were made");
    kl.remove_manifest("crash.yaml").expect("remove manifest");
    kl.wait_pod_gone("crash", WAIT)
        .unwrap_or_else(|m| panic!("{m}"));
    let pod_dir = kl.root_dir().join("pods").join(&uid);
    let clean = wait_for(WAIT, || {
        (pod_containers(&k, &uid).is_empty()
            && pod_sandboxes(&k, &uid).is_empty()
            && !log_dir.exists()
            && links(&kl).is_empty()
            && !pod_dir.exists())
        .then_some(())
    });
    assert!(
        clean.is_some(),
        "{}",
        dump(&format!(
            "left over: containers {}, sandboxes {}, log dir {}, links {:?}, pod dir {}",
            pod_containers(&k, &uid).len(),
            pod_sandboxes(&k, &uid).len(),
            log_dir.exists(),
            links(&kl),
            pod_dir.exists()
        ))
    );
    assert!(
        kl.log()
            .contains("removed the log directory of a deleted pod"),
        "{}",
        dump("the log directory should have gone by GC")
    );
}

/// Image GC rounds in the kubelet's log (below or over the high threshold).
fn image_gc_rounds(kl: &Kubelet) -> usize {
    let log = kl.log();
    log.matches("image garbage collection: disk usage is below the high threshold")
        .count()
        + log
            .matches("Disk usage on image filesystem is over the high threshold")
            .count()
}

#[test]
fn unused_images_go_over_the_threshold_and_stay_below_it() {
    let reg = Registry::start().expect("registry");
    let image = push(&reg, "kt/busybox", "1", None);
    let extra = push(&reg, "kt/extra", "2", Some(b"not used by any container"));
    // The image filesystem is a 128 MiB tmpfs: a few MiB of images are over 1% of it and
    // under 98%, whatever the machine's disk holds.
    let k = Keelsond::start_with_root_tmpfs("kl-gc-images", Some(128 << 20)).expect("keelsond");
    let has = |name: &str| image_names(&k).iter().any(|n| n == name);
    pull(&k, &extra);
    assert!(has(&extra), "{:?}", image_names(&k));

    // Defaults (85/80, 2m): whatever the usage, a freshly pulled image is protected by
    // imageMinimumGCAge; then thresholds above the usage with no minimum age: nothing goes
    // either (the threshold alone keeps it).
    for config in [
        "",
        "imageGCHighThresholdPercent: 99\nimageGCLowThresholdPercent: 98\nimageMinimumGCAge: 0s\n",
    ] {
        let kl = Kubelet::start_with_flags(&k, config, &["--keelson-image-gc-period", "1s"])
            .expect("kubelet");
        let rounds = wait_for(WAIT, || (image_gc_rounds(&kl) >= 2).then_some(()));
        assert!(
            rounds.is_some(),
            "no image GC round: {}",
            tail(&kl.log(), 40)
        );
        assert!(has(&extra), "{config}: {:?}", image_names(&k));
        assert!(
            !kl.log().contains("Removing image"),
            "{config}: {}",
            tail(&kl.log(), 40)
        );
        if !config.is_empty() {
            // The usage the kubelet saw is the tmpfs's (a few percent), not the machine's disk.
            let log = kl.log();
            let usage = log
                .lines()
                .filter(|l| {
                    l.contains("image garbage collection: disk usage is below the high threshold")
                })
                .find_map(|l| {
                    let v = l.split("usage=").nth(1)?;
                    v.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                });
            assert!(
                usage.is_some_and(|u| u < 50),
                "usage {usage:?}: {}",
                tail(&log, 40)
            );
        }
    }

    // Thresholds every disk is over: the unused image goes, a running pod's image stays.
    let kl = Kubelet::start_with_flags(
        &k,
        "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 0s\n",
        &["--keelson-image-gc-period", "1s"],
    )
    .expect("kubelet");
    kl.write_manifest(
        "keep.yaml",
        &pod("keep", &image, "Always", "exec /bin/busybox sleep 1000"),
    )
    .expect("manifest");
    kl.wait_pod("keep", WAIT, |p| p["status"]["phase"] == "Running")
        .unwrap_or_else(|m| panic!("{m}"));
    let gone = wait_for(WAIT, || (!has(&extra)).then_some(()));
    assert!(
        gone.is_some(),
        "the unused image stayed: {:?}\n{}",
        image_names(&k),
        tail(&kl.log(), 40)
    );
    assert!(
        has(&image),
        "the running pod's image went: {:?}",
        image_names(&k)
    );
    let log = kl.log();
    assert!(
        log.contains("Removing image to free bytes"),
        "{}",
        tail(&log, 40)
    );
    // Nothing else can be freed: upstream's complaint, logged.
    let complained = wait_for(WAIT, || {
        kl.log()
            .contains("Failed to garbage collect required amount of images")
            .then_some(())
    });
    assert!(complained.is_some(), "{}", tail(&kl.log(), 40));
    // The pod is still fine.
    let p = kl.pod("keep").expect("pod");
    assert_eq!(p["status"]["phase"], "Running");
}

#[test]
fn bad_gc_configuration_is_refused_naming_the_field() {
    let bin = kubelet_binary().expect("kubelet binary");
    let dir = tempfile::tempdir().expect("tempdir");
    for (body, want) in [
        (
            "imageGCHighThresholdPercent: 101\n",
            "imageGCHighThresholdPercent (--image-gc-high-threshold) 101 must be between 0 and 100, inclusive",
        ),
        (
            "imageGCLowThresholdPercent: 101\n",
            "imageGCLowThresholdPercent (--image-gc-low-threshold) 101 must be between 0 and 100, inclusive",
        ),
        (
            "imageGCHighThresholdPercent: 70\nimageGCLowThresholdPercent: 75\n",
            "imageGCLowThresholdPercent (--image-gc-low-threshold) 75 must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) 70",
        ),
        (
            "imageMaximumGCAge: 1m\n",
            "imageMaximumGCAge 1m0s must be greater than imageMinimumGCAge 2m0s",
        ),
        (
            "imageMinimumGCAge: soon\n",
            "imageMinimumGCAge: invalid duration",
        ),
    ] {
        let cfg = dir.path().join("kubelet.yaml");
        std::fs::write(
            &cfg,
            format!(
                "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{body}"
            ),
        )
        .expect("config");
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--root-dir")
            .arg(dir.path().join("root"))
            .arg("--container-runtime-endpoint")
            .arg(format!("unix://{}", dir.path().join("none.sock").display()))
            .output()
            .expect("run kubelet");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {err}");
        assert!(
            err.contains(&format!("kubelet: invalid configuration: {want}")),
            "{body}: {err}"
        );
    }
    // A GC period flag of 0 is refused too.
    let out = std::process::Command::new(&bin)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--keelson-container-gc-period")
        .arg("0s")
        .output()
        .expect("run kubelet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--keelson-container-gc-period must be greater than 0"),
        "{err}"
    );
    assert!(!Path::new(&dir.path().join("root")).exists());
}
