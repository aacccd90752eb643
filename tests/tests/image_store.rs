//! The store's life: records survive a reopen, remove by tag or ID, garbage collection frees
//! exactly what nothing uses, a snapshot in use keeps its layers, offline import.

use std::fs;
use std::process::Command;

use keelson_image::{AuthConfig, Error, ImageStore, StoreConfig};
use keelson_tests::images::{
    Compression, ImageSpec, LayerBuilder, Layout, MountDir, busybox_three_layers,
    keelson_image_binary,
};
use keelson_tests::registry::Registry;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn image(label: &str) -> ImageSpec {
    let base = LayerBuilder::busybox_base().unwrap().finish();
    let top = LayerBuilder::new().file("label", label.as_bytes()).finish();
    ImageSpec::new(vec![(base, Compression::Gzip), (top, Compression::Gzip)])
}

fn count(dir: &std::path::Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// A store under a temp dir with one two-layer image (`image(label)`) pulled from a local
/// registry as `<registry>/kt/<label>:<label>`.
struct Pulled {
    _reg: Registry,
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    store: ImageStore,
    name: String,
}

fn pulled(label: &str) -> Pulled {
    let reg = Registry::start().unwrap();
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&image(label), label).unwrap();
    let repo = format!("kt/{label}");
    reg.push_layout(layout.path(), label, &repo, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = ImageStore::open(StoreConfig::new(&root)).unwrap();
    let name = format!("{}/{repo}:{label}", reg.addr());
    rt().block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    Pulled {
        _reg: reg,
        dir,
        root,
        store,
        name,
    }
}

#[test]
fn remove_and_gc_respect_sharing_and_snapshots_in_use() {
    let reg = Registry::start().unwrap();
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&image("one"), "one").unwrap();
    layout.add_tagged(&image("two"), "two").unwrap();
    reg.push_layout(layout.path(), "one", "kt/a", &[]).unwrap();
    reg.push_layout(layout.path(), "two", "kt/b", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = ImageStore::open(StoreConfig::new(&root)).unwrap();
    let rt = rt();
    let a = format!("{}/kt/a:one", reg.addr());
    let b = format!("{}/kt/b:two", reg.addr());
    let ia = rt.block_on(store.pull(&a, &AuthConfig::default())).unwrap();
    rt.block_on(store.pull(&b, &AuthConfig::default())).unwrap();
    let blobs = root.join("content/blobs/sha256");
    let committed = root.join("snapshots/committed");
    // 2 manifests + 2 configs + shared base + 2 tops
    assert_eq!(count(&blobs), 7);
    assert_eq!(count(&committed), 3);

    // A reopened store (a restarted process) sees the same images.
    let reopened = ImageStore::open(StoreConfig::new(&root)).unwrap();
    assert_eq!(reopened.list().unwrap(), store.list().unwrap());

    // A container uses image a.
    let mnt = MountDir::new().unwrap();
    store.prepare_snapshot("ctr-a", &a).unwrap();
    store.mount_snapshot("ctr-a", mnt.path()).unwrap();
    fs::write(mnt.path().join("written-by-container"), b"x").unwrap();

    // Remove a by ID: its names go, its layers stay while the container runs.
    let removed = store.remove(&ia.id.to_string()).unwrap();
    assert_eq!(removed.id, ia.id);
    assert!(matches!(store.get(&a), Err(Error::ImageNotFound(_))));
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(count(&committed), 3, "layers of a snapshot in use are kept");
    assert_eq!(fs::read(mnt.path().join("label")).unwrap(), b"one");
    assert_eq!(count(&blobs), 4, "a's manifest, config and top blob freed");

    // The container goes: a's top layer is freed, the shared base stays for b.
    store.remove_snapshot("ctr-a").unwrap();
    store.gc().unwrap();
    assert_eq!(count(&committed), 2);
    assert!(!mnt.path().join("label").exists(), "unmounted");

    // Remove b by tag: everything goes.
    store.remove(&b).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&blobs), 0);
    assert_eq!(count(&committed), 0);
    assert_eq!(count(&root.join("snapshots/active")), 0);
    assert!(matches!(store.remove(&b), Err(Error::ImageNotFound(_))));
}

#[test]
fn import_oci_layout_oci_archive_and_docker_archive() {
    let mut layout = Layout::new().unwrap();
    let spec = ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap());
    let d = layout.add_tagged(&spec, "v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();

    // A layout whose ref name is only a tag needs a name.
    let err = store.import(layout.path(), None).unwrap_err();
    assert!(err.to_string().contains("give a name"), "{err}");
    let imgs = store
        .import(layout.path(), Some("kt.local/imported:dir"))
        .unwrap();
    assert_eq!(imgs[0].repo_tags, vec!["kt.local/imported:dir".to_string()]);
    assert_eq!(imgs[0].manifest.to_string(), d["digest"].as_str().unwrap());

    let archive = dir.path().join("oci.tar");
    layout.write_archive(&archive).unwrap();
    let imgs = store
        .import(&archive, Some("kt.local/imported:archive"))
        .unwrap();
    assert_eq!(imgs[0].manifest.to_string(), d["digest"].as_str().unwrap());

    let docker = dir.path().join("docker.tar");
    layout
        .write_docker_archive("v1", &docker, "kt.local/imported:docker")
        .unwrap();
    let imgs = store.import(&docker, None).unwrap();
    // Same config: the same image ID (now with three names) and the same snapshots.
    assert!(
        imgs[0]
            .repo_tags
            .contains(&"kt.local/imported:docker".to_string()),
        "{imgs:?}"
    );
    assert_eq!(imgs[0].repo_tags.len(), 3);
    assert_eq!(
        imgs[0].chain_ids,
        store.get("kt.local/imported:dir").unwrap().chain_ids
    );

    let mnt = MountDir::new().unwrap();
    store
        .prepare_snapshot("imp", "kt.local/imported:docker")
        .unwrap();
    store.mount_snapshot("imp", mnt.path()).unwrap();
    let b = fs::read(mnt.path().join("data/b"));
    let gone = mnt.path().join("data/a").exists();
    store.remove_snapshot("imp").unwrap();
    assert_eq!(b.unwrap(), b"b\n");
    assert!(!gone);
}

#[test]
fn import_refuses_corrupted_and_malformed_input() {
    let mut layout = Layout::new().unwrap();
    let d = layout.add_tagged(&image("bad"), "v1").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.blob_path(d["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let p = layout.blob_path(layer);
    let mut data = fs::read(&p).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    fs::write(&p, data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    let err = store
        .import(layout.path(), Some("kt.local/bad:v1"))
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        count(&dir.path().join("root/content/blobs/sha256")),
        0,
        "nothing kept"
    );

    let junk = dir.path().join("junk.tar");
    fs::write(&junk, b"not a tar at all").unwrap();
    assert!(store.import(&junk, Some("kt.local/junk:v1")).is_err());
    fs::write(layout.path().join("index.json"), b"{not json").unwrap();
    let err = store
        .import(layout.path(), Some("kt.local/bad:v1"))
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn cli_pull_ls_mount_rm() {
    let reg = Registry::start().unwrap();
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&image("cli"), "v1").unwrap();
    reg.push_layout(layout.path(), "v1", "kt/cli", &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bin = keelson_image_binary().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let name = format!("{}/kt/cli:v1", reg.addr());
    let (code, id, err) = run(&["pull", &name]);
    assert_eq!(code, Some(0), "{err}");
    assert!(id.trim().starts_with("sha256:"));
    let (_, ls, _) = run(&["ls"]);
    assert!(ls.contains(&name), "{ls}");
    let mnt = MountDir::new().unwrap();
    let (code, _, err) = run(&["mount", &name, "cli", mnt.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fs::read(mnt.path().join("label")).unwrap(), b"cli");
    let (code, _, err) = run(&["unmount", "cli"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["rm", &name]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["rm", &name]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = run(&["pull", &format!("{}/kt/missing:v1", reg.addr())]);
    assert_eq!(code, Some(1));
    assert!(err.contains("keelson-image: pull"), "{err}");
}

#[test]
fn unknown_images_bad_keys_and_unreachable_registries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    let err = store.export("kt.local/x:v1", dir.path()).unwrap_err();
    assert!(matches!(err, Error::ImageNotFound(_)), "{err}");
    // (Identity tokens are implemented now: see image_registry's bearer_token_auth. With
    // nothing listening, the pull is a registry error naming the endpoint.)
    let auth = AuthConfig {
        identity_token: "refresh".into(),
        ..Default::default()
    };
    let err = rt()
        .block_on(store.pull("127.0.0.1:1/kt/x:v1", &auth))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    // Bad snapshot keys and unknown images are refused before anything is created.
    assert!(
        store
            .prepare_snapshot("../escape", "kt.local/x:v1")
            .is_err()
    );
    assert!(matches!(
        store.prepare_snapshot("ok", "kt.local/x:v1"),
        Err(Error::ImageNotFound(_))
    ));
    assert_eq!(count(&dir.path().join("root/snapshots/active")), 0);
}

#[test]
fn export_round_trips_and_umoci_reads_it() {
    let mut layout = Layout::new().unwrap();
    let spec = ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap());
    layout.add_tagged(&spec, "v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    let img = store
        .import(layout.path(), Some("kt.local/exp:v1"))
        .unwrap()
        .remove(0);

    let out = dir.path().join("exported");
    store.export("kt.local/exp:v1", &out).unwrap();
    let err = store.export("kt.local/exp:v1", &out).unwrap_err();
    assert!(err.to_string().contains("not an empty directory"), "{err}");
    let tar = dir.path().join("exported.tar");
    store.export(&img.id.to_string(), &tar).unwrap();

    // Another store imports both, by the name recorded in the layout.
    let other = ImageStore::open(StoreConfig::new(dir.path().join("other"))).unwrap();
    let a = other.import(&out, None).unwrap().remove(0);
    assert_eq!(
        (a.id.clone(), a.chain_ids.clone()),
        (img.id.clone(), img.chain_ids.clone())
    );
    assert!(a.repo_tags.contains(&"kt.local/exp:v1".to_string()));
    let b = other.import(&tar, None).unwrap().remove(0);
    assert_eq!(b.id, img.id);

    // umoci, an independent reader, unpacks the exported layout.
    let bundle = dir.path().join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", out.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::read(bundle.join("rootfs/data/b")).unwrap(), b"b\n");
    assert!(!bundle.join("rootfs/data/a").exists());
}

#[test]
fn cli_reads_hosts_toml_mirrors() {
    let reg = Registry::start().unwrap();
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&image("hosts"), "v1").unwrap();
    reg.push_layout(layout.path(), "v1", "library/kt-hosts", &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d/docker.io");
    fs::create_dir_all(&certs).unwrap();
    fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr()
        ),
    )
    .unwrap();
    let out = Command::new(keelson_image_binary().unwrap())
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--registry-config-dir")
        .arg(dir.path().join("certs.d"))
        .args(["pull", "kt-hosts:v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    assert!(store.get("docker.io/library/kt-hosts:v1").is_ok());
}

#[test]
fn a_long_layer_chain_mounts_past_the_page_of_mount_options() {
    // 60 layers: `lowerdir=` with absolute paths passes the 4 KiB that mount(2) copies.
    const N: usize = 60;
    let mut layers = vec![(
        LayerBuilder::busybox_base().unwrap().finish(),
        Compression::Gzip,
    )];
    for i in 1..N {
        let l = LayerBuilder::new()
            .file(&format!("layers/l{i}"), format!("{i}\n").as_bytes())
            .file("top", format!("{i}\n").as_bytes())
            .finish();
        layers.push((l, Compression::None));
    }
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&ImageSpec::new(layers), "long").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    let img = store
        .import(layout.path(), Some("kt.local/long:v1"))
        .unwrap()
        .remove(0);
    assert_eq!(img.chain_ids.len(), N);
    let snap = store.prepare_snapshot("long", "kt.local/long:v1").unwrap();
    let opts = store.snapshotter().mount_options(&snap);
    assert!(opts.len() > 4096, "{} bytes", opts.len());
    let mnt = MountDir::new().unwrap();
    let res = store.mount_snapshot("long", mnt.path());
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        res.as_ref().unwrap();
        for i in 1..N {
            assert_eq!(
                fs::read_to_string(mnt.path().join(format!("layers/l{i}"))).unwrap(),
                format!("{i}\n")
            );
        }
        assert_eq!(
            fs::read_to_string(mnt.path().join("top")).unwrap(),
            format!("{}\n", N - 1)
        );
        assert!(mnt.path().join("bin/busybox").is_file());
        // Writes land in the container's layer.
        fs::write(mnt.path().join("new"), b"x").unwrap();
    }));
    store.remove_snapshot("long").unwrap();
    if let Err(p) = check {
        std::panic::resume_unwind(p);
    }
    assert!(!mnt.path().join("new").exists());
}

#[test]
fn layers_follow_lower_symlinked_dirs_and_copy_up_hard_link_targets() {
    use keelson_tests::images::Entry;
    use std::os::unix::fs::MetadataExt;
    let lower = LayerBuilder::new()
        .entry(Entry {
            mode: 0o750,
            uid: 1000,
            gid: 1000,
            mtime: 1_500_000_000,
            ..Entry::new(b"usr/lib/", tar::EntryType::Directory)
        })
        .symlink("lib", "usr/lib")
        .file_with("usr/lib/data", b"lower data", 0o640, 7, 8)
        .entry(Entry {
            mode: 0o1777,
            ..Entry::new(b"tmp/", tar::EntryType::Directory)
        })
        .dir("wdir")
        .file("wdir/old", b"old")
        .finish();
    // No directory entries: every parent comes from the rootfs below.
    let upper = LayerBuilder::new()
        .file("lib/added", b"added")
        .hardlink("usr/lib/link", "usr/lib/data")
        .hardlink("via-symlink", "lib/data")
        .file("tmp/x", b"x")
        .whiteout("wdir")
        .file("wdir/new", b"new")
        .finish();
    let spec = ImageSpec::new(vec![
        (
            LayerBuilder::busybox_base().unwrap().finish(),
            Compression::Gzip,
        ),
        (lower, Compression::Gzip),
        (upper, Compression::Gzip),
    ]);
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&spec, "v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(StoreConfig::new(dir.path().join("root"))).unwrap();
    let img = store
        .import(layout.path(), Some("kt.local/lowers:v1"))
        .unwrap()
        .remove(0);

    // In the top layer itself: the file went through the lower symlink, the link target was
    // copied up.
    let top = store.snapshotter().committed_path(&img.chain_ids[2]);
    assert_eq!(fs::read(top.join("usr/lib/added")).unwrap(), b"added");
    assert!(!top.join("lib").exists());
    assert_eq!(fs::read(top.join("usr/lib/data")).unwrap(), b"lower data");

    store
        .prepare_snapshot("lowers", "kt.local/lowers:v1")
        .unwrap();
    let mnt = MountDir::new().unwrap();
    store.mount_snapshot("lowers", mnt.path()).unwrap();
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let root = mnt.path();
        assert!(
            fs::symlink_metadata(root.join("lib"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(root.join("lib/added")).unwrap(), b"added");
        let usr_lib = fs::metadata(root.join("usr/lib")).unwrap();
        assert_eq!(
            (usr_lib.mode() & 0o7777, usr_lib.uid(), usr_lib.mtime()),
            (0o750, 1000, 1_500_000_000),
            "the directory made in the upper layer keeps the lower one's metadata"
        );
        let tmp = fs::metadata(root.join("tmp")).unwrap();
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
        let data = fs::metadata(root.join("usr/lib/data")).unwrap();
        let link = fs::metadata(root.join("usr/lib/link")).unwrap();
        let via = fs::metadata(root.join("via-symlink")).unwrap();
        assert_eq!(data.ino(), link.ino());
        assert_eq!(data.ino(), via.ino());
        assert_eq!(data.nlink(), 3);
        assert_eq!(
            (data.mode() & 0o7777, data.uid(), data.gid()),
            (0o640, 7, 8)
        );
        assert_eq!(fs::read(root.join("usr/lib/link")).unwrap(), b"lower data");
        assert_eq!(fs::read(root.join("tmp/x")).unwrap(), b"x");
        assert!(
            !root.join("wdir/old").exists(),
            "whiteout then new dir: opaque"
        );
        assert_eq!(fs::read(root.join("wdir/new")).unwrap(), b"new");
    }));
    store.remove_snapshot("lowers").unwrap();
    if let Err(p) = check {
        std::panic::resume_unwind(p);
    }

    // Pulled, the layers unpack in parallel; the top one needs its parents and is unpacked
    // again once they are committed, with the same result.
    let reg = Registry::start().unwrap();
    reg.push_layout(layout.path(), "v1", "kt/lowers", &[])
        .unwrap();
    let other = ImageStore::open(StoreConfig::new(dir.path().join("pulled"))).unwrap();
    let pulled = rt()
        .block_on(other.pull(
            &format!("{}/kt/lowers:v1", reg.addr()),
            &AuthConfig::default(),
        ))
        .unwrap();
    assert_eq!(pulled.chain_ids, img.chain_ids);
    let top = other.snapshotter().committed_path(&pulled.chain_ids[2]);
    assert_eq!(fs::read(top.join("usr/lib/added")).unwrap(), b"added");
    assert_eq!(fs::read(top.join("usr/lib/data")).unwrap(), b"lower data");
    assert_eq!(fs::metadata(top.join("via-symlink")).unwrap().nlink(), 3);
}

#[test]
fn native_snapshotter_copies_the_merged_layers() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut layout = Layout::new().unwrap();
    layout
        .add_tagged(
            &ImageSpec::new(busybox_three_layers(Compression::Gzip).unwrap()),
            "v1",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("root"));
    cfg.snapshotter = "native".parse().unwrap();
    assert!("zfs".parse::<keelson_image::SnapshotterKind>().is_err());
    let store = ImageStore::open(cfg).unwrap();
    store
        .import(layout.path(), Some("kt.local/native:v1"))
        .unwrap();
    let snap = store.prepare_snapshot("nat", "kt.local/native:v1").unwrap();
    assert_eq!(snap.kind, keelson_image::SnapshotterKind::Native);
    assert_eq!(store.snapshotter().mount_options(&snap), "");
    let mnt = MountDir::new().unwrap();
    store.mount_snapshot("nat", mnt.path()).unwrap();
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let root = mnt.path();
        // A bind mount of a plain directory, not overlay.
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
            .unwrap();
        assert!(!line.contains(" - overlay "), "{line}");
        assert!(root.join("bin/busybox").is_file());
        assert!(!root.join("data/a").exists(), "whiteout applied");
        let b = fs::metadata(root.join("data/b")).unwrap();
        assert_eq!(
            (b.mode() & 0o7777, b.uid(), b.mtime()),
            (0o640, 1000, 1_600_000_000)
        );
        assert!(
            fs::metadata(root.join("data/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            fs::metadata(root.join("keep/x")).unwrap().ino(),
            fs::metadata(root.join("keep/x-link")).unwrap().ino()
        );
        let mut opq: Vec<String> = fs::read_dir(root.join("opq"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        opq.sort();
        assert_eq!(opq, ["new"]);
        // No whiteout devices or overlay xattrs are left in the copy.
        assert!(
            xattr::get(root.join("opq"), "trusted.overlay.opaque")
                .unwrap()
                .is_none()
        );
        let out = Command::new("chroot")
            .arg(root)
            .args(["/bin/busybox", "cat", "/data/b"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"b\n");
        // Writes stay in the container's copy.
        fs::write(root.join("data/b"), b"changed").unwrap();
    }));
    store.remove_snapshot("nat").unwrap();
    if let Err(p) = check {
        std::panic::resume_unwind(p);
    }
    // The committed layer was not touched.
    let img = store.get("kt.local/native:v1").unwrap();
    let second = store.snapshotter().committed_path(&img.chain_ids[1]);
    assert_eq!(fs::read(second.join("data/b")).unwrap(), b"b\n");
    assert_eq!(count(&dir.path().join("root/snapshots/active")), 0);
}

#[test]
fn a_snapshot_mounted_at_a_target_leaves_its_record_alone() {
    let Pulled {
        dir,
        root,
        store,
        name,
        _reg,
    } = pulled("at");
    let mnt = MountDir::new().unwrap();
    store.prepare_snapshot("ctr-at", &name).unwrap();
    let record = root.join("snapshots/active/ctr-at/snapshot.json");
    let before = fs::read(&record).unwrap();
    store.mount_snapshot_at("ctr-at", mnt.path()).unwrap();
    assert_eq!(fs::read(mnt.path().join("label")).unwrap(), b"at");
    fs::write(mnt.path().join("written"), b"x").unwrap();
    assert_eq!(
        fs::read(&record).unwrap(),
        before,
        "the mount is not recorded"
    );
    let snap = store.snapshotter().get_active("ctr-at").unwrap();
    assert_eq!(snap.mountpoint, None);

    store.unmount_snapshot_at("ctr-at", mnt.path()).unwrap();
    assert!(!mnt.path().join("label").exists(), "unmounted");
    let upper = root.join("snapshots/active/ctr-at/upper/written");
    assert_eq!(fs::read(&upper).unwrap(), b"x", "the upper layer stays");
    // Again, and at a path that is gone: nothing to do, no error.
    store.unmount_snapshot_at("ctr-at", mnt.path()).unwrap();
    store
        .unmount_snapshot_at("ctr-at", &dir.path().join("never-there"))
        .unwrap();
    store.remove_snapshot("ctr-at").unwrap();
    assert_eq!(count(&root.join("snapshots/active")), 0);
}

/// A directory of `snapshots/active` without its `snapshot.json` (what a crash in the middle
/// of a prepare or a removal leaves) is no snapshot: not listed, not found, not a second
/// snapshot under its key; it can still be removed by key, and the store's GC collects it.
/// What nothing else refers to goes with it, while a whole snapshot keeps its layers.
#[test]
fn a_snapshot_directory_without_its_record_is_garbage() {
    let Pulled {
        root,
        store,
        name,
        dir: _dir,
        _reg,
    } = pulled("rec");
    let active = root.join("snapshots/active");
    for key in ["whole", "torn-a", "torn-b"] {
        store.prepare_snapshot(key, &name).unwrap();
    }
    // Both snapshots lose their record, as an interrupted prepare or removal leaves them.
    for key in ["torn-a", "torn-b"] {
        fs::remove_file(active.join(key).join("snapshot.json")).unwrap();
        fs::write(active.join(key).join("upper/left"), b"x").unwrap();
    }
    let snaps = store.snapshotter();
    let listed: Vec<String> = snaps
        .list_active()
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(listed, vec!["whole".to_string()]);
    assert!(matches!(
        snaps.get_active("torn-a"),
        Err(Error::SnapshotNotFound(_))
    ));
    // Its key stays taken until the directory is gone.
    assert!(matches!(
        store.prepare_snapshot("torn-a", &name),
        Err(Error::SnapshotExists(_))
    ));
    // Removed by key, as keelsond removes a container's snapshot.
    store.remove_snapshot("torn-a").unwrap();
    assert!(!active.join("torn-a").exists());
    assert!(matches!(
        store.remove_snapshot("torn-a"),
        Err(Error::SnapshotNotFound(_))
    ));
    // The other one goes with the GC; the whole snapshot and its layers stay.
    store.gc().unwrap();
    assert!(!active.join("torn-b").exists());
    assert!(active.join("whole/snapshot.json").is_file());
    let mnt = MountDir::new().unwrap();
    store.mount_snapshot_at("whole", mnt.path()).unwrap();
    assert_eq!(fs::read(mnt.path().join("label")).unwrap(), b"rec");
    store.unmount_snapshot_at("whole", mnt.path()).unwrap();
    store.remove_snapshot("whole").unwrap();
    assert_eq!(count(&active), 0);
    // A prepare leaves no temporary tree behind.
    assert_eq!(count(&root.join("snapshots/tmp")), 0);
}

/// A retired snapshot leaves the store at once (unmounted, not listed, not found, its key
/// free again) while its tree waits for whoever deletes it; the GC deletes what is left.
#[test]
fn a_retired_snapshot_is_out_of_the_store_at_once() {
    let Pulled {
        root,
        store,
        name,
        dir: _dir,
        _reg,
    } = pulled("ret");
    let mnt = MountDir::new().unwrap();
    store.prepare_snapshot("ret", &name).unwrap();
    store.mount_snapshot("ret", mnt.path()).unwrap();
    fs::write(mnt.path().join("written"), b"x").unwrap();
    let retired = store.retire_snapshot("ret").unwrap();
    assert!(!mnt.path().join("label").exists(), "unmounted");
    assert_eq!(fs::read(retired.join("upper/written")).unwrap(), b"x");
    let snaps = store.snapshotter();
    assert!(snaps.list_active().unwrap().is_empty());
    assert!(matches!(
        snaps.get_active("ret"),
        Err(Error::SnapshotNotFound(_))
    ));
    assert_eq!(store.retired_snapshots().unwrap(), vec![retired.clone()]);
    // The key is free: a new snapshot under it, retired in turn over the old tree.
    store.prepare_snapshot("ret", &name).unwrap();
    let again = store.retire_snapshot("ret").unwrap();
    assert_eq!(again, retired);
    assert!(!again.join("upper/written").exists(), "the newer tree");
    assert!(matches!(
        store.retire_snapshot("ret"),
        Err(Error::SnapshotNotFound(_))
    ));
    store.gc().unwrap();
    assert!(store.retired_snapshots().unwrap().is_empty());
    assert_eq!(count(&root.join("snapshots/active")), 0);
    assert_eq!(
        count(&root.join("snapshots/committed")),
        2,
        "the image's layers stay"
    );
}
