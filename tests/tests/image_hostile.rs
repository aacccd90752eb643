//! Hostile layers pulled from a real registry: every escape is refused (or contained), nothing
//! is written outside the snapshot, and a refused pull leaves no image and no snapshot.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use keelson_image::{AuthConfig, Error, ImageStore, StoreConfig};
use keelson_tests::images::{Compression, Entry, ImageSpec, LayerBuilder, Layout, MountDir};
use keelson_tests::registry::Registry;

struct Case {
    reg: Registry,
    _store_dir: tempfile::TempDir,
    store: ImageStore,
    /// A directory outside every snapshot that the layers aim at.
    outside: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    fn with_config(f: impl FnOnce(&mut StoreConfig)) -> Self {
        let reg = Registry::start().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("kt-store-")
            .tempdir()
            .unwrap();
        let mut cfg = StoreConfig::new(dir.path().join("root"));
        f(&mut cfg);
        let store = ImageStore::open(cfg).unwrap();
        let outside = tempfile::Builder::new()
            .prefix("kt-outside-")
            .tempdir()
            .unwrap();
        Case {
            reg,
            _store_dir: dir,
            store,
            outside,
        }
    }

    /// `../` enough times to reach `/`, then the outside dir.
    fn up_to_outside(&self) -> String {
        format!(
            "{}{}",
            "../".repeat(30),
            self.outside_abs().trim_start_matches('/')
        )
    }

    fn outside_abs(&self) -> String {
        self.outside.path().display().to_string()
    }

    fn pull(
        &self,
        repo: &str,
        layers: Vec<Vec<u8>>,
    ) -> keelson_image::Result<keelson_image::Image> {
        let spec = ImageSpec::new(layers.into_iter().map(|l| (l, Compression::Gzip)).collect());
        let mut layout = Layout::new().unwrap();
        layout.add_tagged(&spec, "v1").unwrap();
        self.reg
            .push_layout(layout.path(), "v1", repo, &[])
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.store.pull(
            &format!("{}/{repo}:v1", self.reg.addr()),
            &AuthConfig::default(),
        ))
    }

    fn assert_outside_untouched(&self) {
        let entries: Vec<PathBuf> = fs::read_dir(self.outside.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(entries.is_empty(), "written outside: {entries:?}");
    }

    /// The refused pull left no image, no snapshot, no temp dir.
    fn assert_refused(&self, res: keelson_image::Result<keelson_image::Image>, why: &str) {
        match res {
            Err(Error::HostileLayer { reason, .. }) => {
                assert!(
                    reason.contains(why),
                    "reason {reason:?} does not mention {why:?}"
                )
            }
            Err(e) => panic!("expected a hostile-layer error mentioning {why:?}, got {e}"),
            Ok(img) => panic!("hostile layer accepted: {img:?}"),
        }
        self.assert_outside_untouched();
        assert!(self.store.list().unwrap().is_empty());
        let root = self.store.root();
        for d in ["snapshots/committed", "snapshots/tmp"] {
            assert_eq!(
                fs::read_dir(root.join(d)).unwrap().count(),
                0,
                "{d} not empty"
            );
        }
    }
}

fn base() -> Vec<u8> {
    LayerBuilder::busybox_base().unwrap().finish()
}

#[test]
fn dotdot_paths_are_refused() {
    let c = Case::new();
    let evil = format!("{}/pwned", c.up_to_outside());
    let layer = LayerBuilder::new().file(&evil, b"x").finish();
    c.assert_refused(c.pull("kt/dotdot", vec![base(), layer]), "..");
    let layer = LayerBuilder::new().file("a/../../pwned", b"x").finish();
    c.assert_refused(c.pull("kt/dotdot2", vec![layer]), "..");
}

#[test]
fn absolute_paths_are_contained() {
    let c = Case::new();
    let target = format!("{}/pwned", c.outside_abs());
    let layer = LayerBuilder::new().file(&target, b"x").finish();
    let img = c.pull("kt/abs", vec![layer]).unwrap();
    c.assert_outside_untouched();
    // The file landed inside the snapshot, under the same path.
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(
        fs::read(top.join(target.trim_start_matches('/'))).unwrap(),
        b"x"
    );
}

#[test]
fn writing_through_a_symlink_of_the_same_layer_is_contained() {
    let c = Case::new();
    let outside = c.outside_abs();
    let inside = outside.trim_start_matches('/').to_string();
    // absolute symlink to the outside dir, then a file below it: resolved in the rootfs, the
    // file lands at the same path inside the snapshot
    let layer = LayerBuilder::new()
        .symlink("evil", &outside)
        .file("evil/pwned", b"abs")
        .finish();
    let img = c.pull("kt/symabs", vec![layer]).unwrap();
    c.assert_outside_untouched();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(fs::read(top.join(&inside).join("pwned")).unwrap(), b"abs");
    assert!(
        fs::symlink_metadata(top.join("evil"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // relative symlink climbing out: `..` stops at the rootfs root (tar names here are
    // at most 100 bytes, so five `..` rather than `up_to_outside`)
    let layer = LayerBuilder::new()
        .dir("d")
        .symlink("d/evil", &format!("{}{inside}", "../".repeat(5)))
        .file("d/evil/pwned", b"rel")
        .finish();
    let img = c.pull("kt/symrel", vec![layer]).unwrap();
    c.assert_outside_untouched();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(fs::read(top.join(&inside).join("pwned")).unwrap(), b"rel");
    // a chain of symlinks
    let layer = LayerBuilder::new()
        .symlink("one", &outside)
        .symlink("two", "one")
        .file("two/pwned", b"chain")
        .finish();
    let img = c.pull("kt/symchain", vec![layer]).unwrap();
    c.assert_outside_untouched();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(fs::read(top.join(&inside).join("pwned")).unwrap(), b"chain");
    // a symlink loop is refused
    let c = Case::new();
    let layer = LayerBuilder::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"x")
        .finish();
    let res = c.pull("kt/symloop", vec![layer]);
    c.assert_refused(res, "too many levels of symbolic links");
}

#[test]
fn hard_links_out_are_refused() {
    let c = Case::new();
    let secret = c.outside.path().join("secret");
    let plant = || fs::write(&secret, b"secret").unwrap();
    // The secret is intact and was never linked; then it goes, so the outside dir is empty
    // again for `assert_refused`.
    let check_secret = || {
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
        fs::remove_file(&secret).unwrap();
    };
    plant();
    let layer = LayerBuilder::new()
        .hardlink("link", &format!("{}/secret", c.up_to_outside()))
        .finish();
    let res = c.pull("kt/hl1", vec![layer]);
    check_secret();
    c.assert_refused(res, "..");
    // absolute target: means the rootfs's own path, which is not there
    plant();
    let layer = LayerBuilder::new()
        .hardlink("link", &format!("{}/secret", c.outside_abs()))
        .finish();
    let res = c.pull("kt/hl2", vec![base(), layer]);
    check_secret();
    c.assert_refused(res, "does not exist");
    // through a symlink planted first: resolved inside the rootfs, where there is no secret
    plant();
    let layer = LayerBuilder::new()
        .symlink("evil", &c.outside_abs())
        .hardlink("link", "evil/secret")
        .finish();
    let res = c.pull("kt/hl3", vec![layer]);
    check_secret();
    c.assert_refused(res, "does not exist");
    // through a symlink planted by a lower layer
    plant();
    let lower = LayerBuilder::new()
        .symlink("evil", &c.outside_abs())
        .finish();
    let layer = LayerBuilder::new().hardlink("link", "evil/secret").finish();
    let res = c.pull("kt/hl4", vec![base(), lower, layer]);
    check_secret();
    c.assert_refused(res, "does not exist");
}

#[test]
fn replacing_a_symlink_never_writes_its_target() {
    let c = Case::new();
    let victim = c.outside.path().join("victim");
    let layer = LayerBuilder::new()
        .symlink("evil", &victim.display().to_string())
        .file("evil", b"overwritten")
        .finish();
    let img = c.pull("kt/replace", vec![layer]).unwrap();
    assert!(
        !victim.exists(),
        "target of the replaced symlink was written"
    );
    c.assert_outside_untouched();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(fs::read(top.join("evil")).unwrap(), b"overwritten");
}

#[test]
fn symlink_planted_by_an_earlier_layer_is_not_followed() {
    let c = Case::new();
    let first = LayerBuilder::new()
        .symlink("evil", &c.outside_abs())
        .finish();
    let second = LayerBuilder::new()
        .dir("evil")
        .file("evil/pwned", b"x")
        .finish();
    let img = c.pull("kt/planted", vec![base(), first, second]).unwrap();
    c.assert_outside_untouched();
    // The container sees a directory (the upper layer's) that shadows the symlink.
    let mnt = MountDir::new().unwrap();
    c.store
        .prepare_snapshot("planted", &img.id.to_string())
        .unwrap();
    c.store.mount_snapshot("planted", mnt.path()).unwrap();
    let seen = fs::read(mnt.path().join("evil/pwned"));
    c.store.remove_snapshot("planted").unwrap();
    assert_eq!(seen.unwrap(), b"x");
    c.assert_outside_untouched();
}

#[test]
fn malformed_whiteouts_and_overlay_xattrs() {
    let c = Case::new();
    let layer = LayerBuilder::new().dir("a").file("a/.wh..", b"").finish();
    c.assert_refused(c.pull("kt/wh", vec![layer]), "whiteout");
    // trusted.overlay.* from a layer (a redirect could point anywhere) is dropped.
    let layer = LayerBuilder::new()
        .dir("d")
        .file_with_xattr("d/f", b"x", "trusted.overlay.redirect", "/etc")
        .finish();
    let img = c.pull("kt/ovlxattr", vec![layer]).unwrap();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    assert_eq!(
        xattr::get(top.join("d/f"), "trusted.overlay.redirect").unwrap(),
        None
    );
}

#[test]
fn decompression_bomb_is_refused() {
    let c = Case::with_config(|cfg| cfg.unpack.max_uncompressed = 16 << 20);
    let zeros = vec![0u8; 64 << 20];
    let layer = LayerBuilder::new()
        .entry(Entry {
            data: &zeros,
            ..Entry::new(b"bomb", tar::EntryType::Regular)
        })
        .finish();
    let res = c.pull("kt/bomb", vec![layer]);
    match res {
        Err(Error::LayerTooLarge { limit, .. }) => assert_eq!(limit, 16 << 20),
        other => panic!("expected LayerTooLarge, got {other:?}"),
    }
    assert!(c.store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(c.store.root().join("snapshots/committed"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(c.store.root().join("snapshots/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn device_nodes_are_created_as_root() {
    let c = Case::new();
    let layer = LayerBuilder::new()
        .dir("dev")
        .char_device("dev/null", 1, 3)
        .finish();
    let img = c.pull("kt/dev", vec![layer]).unwrap();
    let top = c.store.snapshotter().committed_path(&img.chain_ids[0]);
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = fs::symlink_metadata(Path::new(&top).join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn device_nodes_are_skipped_when_mknod_is_not_permitted() {
    let layer = LayerBuilder::new()
        .dir("dev")
        .char_device("dev/null", 1, 3)
        .file("dev/after", b"still unpacked")
        .whiteout("gone")
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_path_buf();
    // Capabilities are per thread: drop CAP_MKNOD in a thread of its own.
    let stats = std::thread::spawn(move || {
        caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_MKNOD).unwrap();
        keelson_image::unpack::unpack_layer(
            &layer[..],
            keelson_image::unpack::Compression::None,
            &dest,
            "test-layer",
            &keelson_image::UnpackOptions::default(),
            Some(&[]),
        )
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert!(!dir.path().join("dev/null").exists());
    assert_eq!(
        fs::read(dir.path().join("dev/after")).unwrap(),
        b"still unpacked"
    );
    // Whiteouts (0/0 devices) need no CAP_MKNOD.
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(dir.path().join("gone"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
}
