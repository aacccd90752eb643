//! Pulls from a real local registry (Debian's docker-registry): OCI and Docker schema 2
//! manifests, gzip/zstd/plain layers, whiteouts and opaque dirs seen through an overlay mount,
//! multi-arch indexes, tag and digest references, USER, basic auth, mirrors, shared layers,
//! no network work on a second pull, concurrent pulls.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use keelson_image::{AuthConfig, ImageStore, StoreConfig};
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
