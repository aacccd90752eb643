//! User namespaces: idmapped bind mounts show host-owned files with their ownership mapped
//! into the container, and files made through them get the host ids the mapping gives.

use keelson_tests::probe::{probe, value_of};
use keelson_tests::{Bundle, spec};
use serde_json::json;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn idmapped_bind_mounts_map_ownership() {
    let rt = keelson_tests::Runtime::keelson().expect("keelson");
    let shared = tempfile::tempdir().expect("tmp");
    fs::write(shared.path().join("f"), "hi").expect("write");
    std::os::unix::fs::chown(shared.path().join("f"), Some(0), Some(0)).expect("chown");
    let mut b = Bundle::busybox("idmap").expect("bundle");
    // Inside a user namespace the init cannot create mount points in a host-owned rootfs.
    for d in ["idm", "plain"] {
        fs::create_dir_all(b.rootfs().join(d)).expect("mount point");
    }
    let linux = spec::linux_mut(b.config_mut());
    linux.insert(
        "uidMappings".into(),
        json!([{"containerID": 0, "hostID": 200000, "size": 65536}]),
    );
    linux.insert(
        "gidMappings".into(),
        json!([{"containerID": 0, "hostID": 200000, "size": 65536}]),
    );
    if let Some(ns) = linux.get_mut("namespaces").and_then(|n| n.as_array_mut()) {
        ns.push(json!({"type": "user"}));
    }
    b.add_mount(json!({"destination": "/idm", "type": "bind", "source": shared.path(), "options": ["rbind", "idmap"]}));
    b.add_mount(json!({"destination": "/plain", "type": "bind", "source": shared.path(), "options": ["rbind"]}));
    let out = probe(
        &rt,
        &mut b,
        "echo idm=$(stat -c %u:%g /idm/f); echo plain=$(stat -c %u:%g /plain/f); touch /idm/new && echo made=yes",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(
        value_of(&out.stdout, "idm").as_deref(),
        Some("0:0"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "plain").as_deref(),
        Some("65534:65534"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "made").as_deref(),
        Some("yes"),
        "{out}"
    );
    let made = fs::metadata(shared.path().join("new")).expect("new file on the host");
    assert_eq!(
        (made.uid(), made.gid()),
        (0, 0),
        "written through the idmapped mount as host root"
    );
}

#[test]
fn idmap_on_a_non_bind_mount_is_refused() {
    let rt = keelson_tests::Runtime::keelson().expect("keelson");
    let mut b = Bundle::busybox("idmap-bad").expect("bundle");
    b.add_mount(
        json!({"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}),
    );
    let out = probe(&rt, &mut b, "true").expect("probe");
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("idmapped mounts must be bind mounts"),
        "{out}"
    );
}
