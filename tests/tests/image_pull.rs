//! Pulls from a real local registry (Debian's docker-registry): OCI and Docker schema 2
//! manifests, gzip/zstd/plain layers, whiteouts and opaque dirs seen through an overlay mount,
//! multi-arch indexes, tag and digest references, USER, basic auth, mirrors, shared layers,
//! no network work on a second pull, concurrent pulls.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use keelson_image::{AuthConfig, Error, ImageStore, StoreConfig};
use keelson_tests::images::{Compression, ImageSpec, Layout, MountDir, busybox_three_layers};
use keelson_tests::registry::Registry;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::Builder::new()
        .prefix("kt-store-")
        .tempdir()
        .unwrap();
    let s = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    (dir, s)
}

fn push(reg: &Registry, spec: &ImageSpec, repo: &str, tag: &str, extra: &[&str]) -> String {
    let mut layout = Layout::new().unwrap();
    let d = layout.add_tagged(spec, tag).unwrap();
    reg.push_layout(layout.path(), tag, repo, extra).unwrap();
    d["digest"].as_str().unwrap().to_string()
}

/// Mounts a fresh snapshot of `image` and runs `check` on the mounted root.
fn with_rootfs(store: &ImageStore, image: &str, key: &str, check: impl FnOnce(&Path)) {
    let mnt = MountDir::new().unwrap();
    store.prepare_snapshot(key, image).unwrap();
    store.mount_snapshot(key, mnt.path()).unwrap();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(mnt.path())));
    store.remove_snapshot(key).unwrap();
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
}

fn check_three_layer_rootfs(root: &Path) {
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(!root.join("data/a").exists(), "whiteout hides data/a");
    assert_eq!(fs::read(root.join("data/b")).unwrap(), b"b\n");
    let b = fs::metadata(root.join("data/b")).unwrap();
    assert_eq!((b.mode() & 0o7777, b.uid(), b.gid()), (0o640, 1000, 1000));
    assert_eq!(b.mtime(), 1_600_000_000);
    assert_eq!(fs::read(root.join("data/c")).unwrap(), b"c\n");
    assert_eq!(
        xattr::get(root.join("data/c"), "user.keelson")
            .ok()
            .flatten(),
        Some(b"test".to_vec())
    );
    assert!(
        fs::metadata(root.join("data/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let x = fs::metadata(root.join("keep/x")).unwrap();
    let xl = fs::metadata(root.join("keep/x-link")).unwrap();
    assert_eq!(x.ino(), xl.ino(), "hard link kept");
    let mut opq: Vec<String> = fs::read_dir(root.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"], "opaque dir hides the lower layer's files");
    // The busybox really runs from the snapshot.
    let out = std::process::Command::new("chroot")
        .arg(root)
        .args(["/bin/busybox", "cat", "/data/b"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"b\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pull_oci_gzip_multi_layer_with_whiteouts() {
    let reg = Registry::start().unwrap();
    let spec = ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap());
    push(&reg, &spec, "kt/three", "v1", &[]);
    let (_d, store) = store();
    let name = format!("{}/kt/three:v1", reg.addr());
    let img = rt()
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert_eq!(img.repo_digests.len(), 1);
    assert_eq!(img.chain_ids.len(), 3);
    with_rootfs(&store, &name, "three", check_three_layer_rootfs);
}

#[test]
fn pull_docker_schema2_zstd_and_plain() {
    let reg = Registry::start().unwrap();
    let (_d, store) = store();
    // Docker schema 2 media types (skopeo converts to v2s2), gzip layers.
    let spec = ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap());
    push(&reg, &spec, "kt/docker", "v1", &["--format", "v2s2"]);
    let name = format!("{}/kt/docker:v1", reg.addr());
    rt().block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    with_rootfs(&store, &name, "docker", check_three_layer_rootfs);
    // zstd and uncompressed layers.
    for (c, repo) in [
        (Compression::Zstd, "kt/zstd"),
        (Compression::None, "kt/plain"),
    ] {
        let spec = ImageSpec::new(busybox_three_layers(c).unwrap());
        push(&reg, &spec, repo, "v1", &[]);
        let name = format!("{}/{repo}:v1", reg.addr());
        rt().block_on(store.pull(&name, &AuthConfig::default()))
            .unwrap();
        with_rootfs(
            &store,
            &name,
            repo.trim_start_matches("kt/"),
            check_three_layer_rootfs,
        );
    }
}

fn small_image(label: &str) -> ImageSpec {
    let base = keelson_tests::images::LayerBuilder::busybox_base()
        .unwrap()
        .finish();
    let top = keelson_tests::images::LayerBuilder::new()
        .file("label", label.as_bytes())
        .finish();
    let mut spec = ImageSpec::new(vec![(base, Compression::Gzip), (top, Compression::Gzip)]);
    spec.label = Some(label.to_string());
    spec
}

#[test]
fn multi_arch_index_selects_the_platform() {
    let reg = Registry::start().unwrap();
    let mut layout = Layout::new().unwrap();
    let mut descs = Vec::new();
    for (arch, variant) in [("arm64", Some("v8")), ("amd64", None), ("arm", Some("v7"))] {
        let mut spec = small_image(&format!("{arch}{}", variant.unwrap_or("")));
        spec.architecture = arch.into();
        spec.variant = variant.map(str::to_string);
        descs.push(layout.add_image(&spec).unwrap());
    }
    let idx = layout.add_index(&descs).unwrap();
    layout.tag(&idx, "multi").unwrap();
    reg.push_layout(layout.path(), "multi", "kt/multi", &["--all"])
        .unwrap();
    let name = format!("{}/kt/multi:multi", reg.addr());

    let (_d, store) = store();
    let img = rt()
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(
        img.manifest.to_string(),
        descs[1]["digest"].as_str().unwrap()
    );
    // The repo digest is the index's, as containerd records it.
    assert_eq!(
        img.repo_digests,
        vec![format!(
            "{}/kt/multi@{}",
            reg.addr(),
            idx["digest"].as_str().unwrap()
        )]
    );
    with_rootfs(&store, &name, "multi", |root| {
        assert_eq!(fs::read(root.join("label")).unwrap(), b"amd64");
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("root"));
    cfg.platform = keelson_image::Platform::parse("linux/arm/v7").unwrap();
    let arm = ImageStore::open(cfg).unwrap();
    let img = rt()
        .block_on(arm.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(
        img.manifest.to_string(),
        descs[2]["digest"].as_str().unwrap()
    );

    let mut cfg = StoreConfig::new(dir.path().join("root2"));
    cfg.platform = keelson_image::Platform::parse("linux/s390x").unwrap();
    let none = ImageStore::open(cfg).unwrap();
    let err = rt()
        .block_on(none.pull(&name, &AuthConfig::default()))
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
    assert!(none.list().unwrap().is_empty());
}

#[test]
fn digest_reference_user_and_no_network_on_second_pull() {
    let reg = Registry::start().unwrap();
    let mut spec = small_image("user");
    spec.user = Some("1000:1000".into());
    let digest = push(&reg, &spec, "kt/user", "v1", &[]);
    let mut named = small_image("named");
    named.user = Some("kt".into());
    push(&reg, &named, "kt/named", "v1", &[]);
    let (_d, store) = store();
    let rt = rt();

    let by_digest = format!("{}/kt/user@{digest}", reg.addr());
    let img = rt
        .block_on(store.pull(&by_digest, &AuthConfig::default()))
        .unwrap();
    assert!(img.repo_tags.is_empty(), "{img:?}");
    assert_eq!(img.repo_digests, vec![by_digest.clone()]);
    assert_eq!((img.uid, img.username.as_str()), (Some(1000), ""));
    assert_eq!(store.get(&by_digest).unwrap().id, img.id);
    assert_eq!(store.get(img.id.hex()).unwrap().id, img.id);

    let before = reg.blob_gets();
    assert!(before >= 3, "registry log shows blob GETs: {}", reg.log());
    let again = rt
        .block_on(store.pull(&by_digest, &AuthConfig::default()))
        .unwrap();
    assert_eq!(again, img);
    // The tag resolves to the same manifest: no blob is fetched again.
    let tagged = format!("{}/kt/user:v1", reg.addr());
    let img2 = rt
        .block_on(store.pull(&tagged, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img2.id, img.id);
    assert_eq!(img2.repo_tags, vec![tagged]);
    assert_eq!(reg.blob_gets(), before, "second pull fetched blobs");

    let n = rt
        .block_on(store.pull(
            &format!("{}/kt/named:v1", reg.addr()),
            &AuthConfig::default(),
        ))
        .unwrap();
    assert_eq!((n.uid, n.username.as_str()), (None, "kt"));
    // The two images share their busybox layer: one blob, one snapshot.
    let committed = fs::read_dir(store.root().join("snapshots/committed"))
        .unwrap()
        .count();
    assert_eq!(committed, 3, "base layer shared");
}

#[test]
fn basic_auth() {
    let reg = Registry::start_with_auth("ktuser", "ktpass").unwrap();
    push(&reg, &small_image("auth"), "kt/auth", "v1", &[]);
    let (_d, store) = store();
    let name = format!("{}/kt/auth:v1", reg.addr());
    let err = rt()
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    let err = rt()
        .block_on(store.pull(&name, &AuthConfig::basic("ktuser", "wrong")))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    let img = rt()
        .block_on(store.pull(&name, &AuthConfig::basic("ktuser", "ktpass")))
        .unwrap();
    assert_eq!(img.repo_tags, vec![name]);
}

#[test]
fn mirror_serves_docker_hub_names() {
    let reg = Registry::start().unwrap();
    push(
        &reg,
        &small_image("mirror"),
        "library/kt-mirrored",
        "v1",
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("root"));
    cfg.hosts
        .mirrors
        .insert("docker.io".into(), vec![format!("http://{}", reg.addr())]);
    let store = ImageStore::open(cfg).unwrap();
    let img = rt()
        .block_on(store.pull("kt-mirrored:v1", &AuthConfig::default()))
        .unwrap();
    assert_eq!(
        img.repo_tags,
        vec!["docker.io/library/kt-mirrored:v1".to_string()]
    );
}

#[test]
fn concurrent_pulls_do_the_work_once() {
    let reg = Registry::start().unwrap();
    let spec = ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap());
    push(&reg, &spec, "kt/conc", "v1", &[]);
    let (_d, store) = store();
    let name = format!("{}/kt/conc:v1", reg.addr());
    let before = reg.blob_gets();
    let imgs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| rt().block_on(store.pull(&name, &AuthConfig::default()))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(imgs.windows(2).all(|w| w[0] == w[1]));
    // config + 3 layers, each fetched once.
    assert_eq!(reg.blob_gets() - before, 4, "{}", reg.log());
}

#[test]
fn corrupted_blob_fails_with_a_digest_error() {
    let reg = Registry::start().unwrap();
    let spec = small_image("corrupt");
    let mut layout = Layout::new().unwrap();
    let d = layout.add_tagged(&spec, "v1").unwrap();
    reg.push_layout(layout.path(), "v1", "kt/corrupt", &[])
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(d["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_data(&layer);
    let len = fs::metadata(&data).unwrap().len() as usize;
    fs::write(&data, vec![0x55u8; len]).unwrap();

    let (_d, store) = store();
    let name = format!("{}/kt/corrupt:v1", reg.addr());
    let err = rt()
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("digest"), "{msg}");
    assert!(store.list().unwrap().is_empty());
    let layer = keelson_image::Digest::parse(&layer).unwrap();
    assert!(!store.content().has(&layer));
    assert!(store.content().partials().unwrap().is_empty());
}

#[test]
fn unknown_reference_and_bad_configs() {
    let reg = Registry::start().unwrap();
    let (_d, store) = store();
    let rt = rt();
    let err = rt
        .block_on(store.pull(
            &format!("{}/kt/nope:v1", reg.addr()),
            &AuthConfig::default(),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    let err = rt
        .block_on(store.pull("Not A Reference", &AuthConfig::default()))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidReference { .. }), "{err}");

    // A config whose diff_ids do not match the layers.
    let mut spec = small_image("baddiff");
    spec.fake_diff_ids = Some(vec![
        keelson_tests::images::sha256(b"x"),
        keelson_tests::images::sha256(b"y"),
    ]);
    push(&reg, &spec, "kt/baddiff", "v1", &[]);
    let err = rt
        .block_on(store.pull(
            &format!("{}/kt/baddiff:v1", reg.addr()),
            &AuthConfig::default(),
        ))
        .unwrap_err();
    assert!(err.to_string().contains("diff ID"), "{err}");
    // A config that names fewer layers than the manifest.
    let mut spec = small_image("fewer");
    spec.fake_diff_ids = Some(vec![keelson_tests::images::sha256(b"x")]);
    push(&reg, &spec, "kt/fewer", "v1", &[]);
    let err = rt
        .block_on(store.pull(
            &format!("{}/kt/fewer:v1", reg.addr()),
            &AuthConfig::default(),
        ))
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(store.root().join("snapshots/committed"))
            .unwrap()
            .count(),
        0,
        "no snapshot left behind"
    );
}

#[test]
fn unreachable_mirror_falls_through_to_the_registry() {
    let reg = Registry::start().unwrap();
    push(&reg, &small_image("fallthrough"), "kt/ft", "v1", &[]);
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("root"));
    cfg.hosts
        .mirrors
        .insert(reg.addr().to_string(), vec![format!("http://{dead}")]);
    let store = ImageStore::open(cfg).unwrap();
    let name = format!("{}/kt/ft:v1", reg.addr());
    let img = rt()
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img.repo_tags, vec![name]);
}
