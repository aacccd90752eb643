//! Crash safety: the `keelson-image pull` process is SIGKILLed at random points; every time
//! the store lists no half image, and the next pull succeeds and leaves no temp files.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keelson_image::{ImageStore, StoreConfig};
use keelson_tests::images::{Compression, ImageSpec, LayerBuilder, Layout, keelson_image_binary};
use keelson_tests::registry::Registry;

/// Incompressible bytes (xorshift), so layers take a while to download and unpack.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every listed image is whole: its blobs and snapshots are all there.
fn assert_consistent(root: &std::path::Path) -> usize {
    let store = ImageStore::open(StoreConfig::new(root)).unwrap();
    let images = store.list().unwrap();
    for img in &images {
        assert!(
            store.content().has(&img.manifest),
            "{img:?}: manifest missing"
        );
        assert!(store.content().has(&img.id), "{img:?}: config missing");
        for c in &img.chain_ids {
            assert!(
                store.snapshotter().has_committed(c),
                "{img:?}: snapshot {c} missing"
            );
        }
    }
    images.len()
}

#[test]
fn killed_pulls_leave_no_half_image() {
    let reg = Registry::start().unwrap();
    let mut layers = vec![(
        LayerBuilder::busybox_base().unwrap().finish(),
        Compression::Gzip,
    )];
    for i in 0..4u64 {
        let data = noise(i + 1, 3 << 20);
        let l = LayerBuilder::new()
            .dir(&format!("d{i}"))
            .file(&format!("d{i}/noise"), &data)
            .finish();
        layers.push((l, Compression::Gzip));
    }
    let mut layout = Layout::new().unwrap();
    layout.add_tagged(&ImageSpec::new(layers), "v1").unwrap();
    reg.push_layout(layout.path(), "v1", "kt/crash", &[])
        .unwrap();
    let name = format!("{}/kt/crash:v1", reg.addr());
    let bin = keelson_image_binary().unwrap();

    // How long one whole pull takes here.
    let probe = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let st = Command::new(&bin)
        .arg("--root")
        .arg(probe.path())
        .args(["pull", &name])
        .status()
        .unwrap();
    assert!(st.success());
    let full = t.elapsed().max(Duration::from_millis(100));

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut killed = 0;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = full.mul_f64((seed % 1000) as f64 / 1000.0 * 0.9);
        let mut child = Command::new(&bin)
            .arg("--root")
            .arg(&root)
            .args(["pull", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed += 1;
        }
        child.wait().unwrap();
        let n = assert_consistent(&root);
        eprintln!("round {round}: killed after {delay:?} (full pull {full:?}); images listed: {n}");
        if n == 1 {
            // Start over, so the next kill lands in a pull again.
            let st = Command::new(&bin)
                .arg("--root")
                .arg(&root)
                .args(["rm", &name])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(assert_consistent(&root), 0);
        }
    }
    assert!(killed > 0, "no pull was interrupted");
    let st = Command::new(&bin)
        .arg("--root")
        .arg(&root)
        .args(["pull", &name])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(assert_consistent(&root), 1);
    let store = ImageStore::open(StoreConfig::new(&root)).unwrap();
    store.gc().unwrap();
    assert!(store.content().partials().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("snapshots/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(assert_consistent(&root), 1);
}
