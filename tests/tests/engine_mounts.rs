//! Mounts as the container sees them in `/proc/self/mountinfo`: read-only root, bind mount
//! options, tmpfs size and mode, propagation, masked and read-only paths, default devices and
//! `linux.devices`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use keelson_tests::mountinfo::{self, MountInfo};
use keelson_tests::probe::{probe, value_of};
use keelson_tests::{Bundle, CmdOutput, Runtime, spec};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn bundle(hint: &str) -> Bundle {
    Bundle::busybox(hint).expect("busybox bundle")
}

fn run_ok(rt: &Runtime, bundle: &mut Bundle, script: &str) -> CmdOutput {
    let out = probe(rt, bundle, script).expect("probe runs");
    assert!(out.success(), "probe failed: {out}");
    out
}

fn mount_at<'a>(mounts: &'a [MountInfo], point: &str, out: &CmdOutput) -> &'a MountInfo {
    mountinfo::find(mounts, point).unwrap_or_else(|| panic!("no mount at {point}:\n{out}"))
}

#[test]
fn readonly_root_is_mounted_ro() {
    let rt = keelson();
    let mut b = bundle("root-ro");
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; if touch /probe-file 2>/dev/null; then echo write=ok; else echo write=denied; fi",
    );
    let mounts = mountinfo::parse(&out.stdout);
    let root = mount_at(&mounts, "/", &out);
    assert!(root.has_option("ro"), "{root:?}");
    assert_eq!(
        value_of(&out.stdout, "write").as_deref(),
        Some("denied"),
        "{out}"
    );
    assert!(!b.rootfs().join("probe-file").exists());
}

#[test]
fn writable_root_is_mounted_rw() {
    let rt = keelson();
    let mut b = bundle("root-rw");
    b.config_mut()["root"]["readonly"] = json!(false);
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; touch /probe-file && echo write=ok",
    );
    let mounts = mountinfo::parse(&out.stdout);
    let root = mount_at(&mounts, "/", &out);
    assert!(root.has_option("rw"), "{root:?}");
    assert_eq!(
        value_of(&out.stdout, "write").as_deref(),
        Some("ok"),
        "{out}"
    );
    assert!(
        b.rootfs().join("probe-file").exists(),
        "the write did not reach the rootfs"
    );
}

#[test]
fn bind_mount_with_ro_nosuid_nodev_noexec() {
    let rt = keelson();
    let host = tempfile::tempdir().expect("host dir");
    fs::write(host.path().join("hello"), "hello from the host\n").expect("write");
    let script = host.path().join("run.sh");
    fs::write(&script, "#!/bin/sh\necho ran\n").expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut b = bundle("bind-ro");
    b.add_mount(json!({
        "destination": "/data",
        "type": "bind",
        "source": host.path(),
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]
    }));
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; echo content=$(cat /data/hello); \
         if touch /data/new 2>/dev/null; then echo write=ok; else echo write=denied; fi; \
         if /data/run.sh 2>/dev/null; then echo exec=ok; else echo exec=denied; fi",
    );
    let mounts = mountinfo::parse(&out.stdout);
    let data = mount_at(&mounts, "/data", &out);
    for opt in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(data.has_option(opt), "{opt} missing: {data:?}");
    }
    assert_eq!(
        value_of(&out.stdout, "content").as_deref(),
        Some("hello from the host"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "write").as_deref(),
        Some("denied"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "exec").as_deref(),
        Some("denied"),
        "{out}"
    );
    let mut names: Vec<_> = fs::read_dir(host.path())
        .expect("read host dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["hello", "run.sh"], "the host dir changed");
}

#[test]
fn writable_bind_mount_reaches_the_host() {
    let rt = keelson();
    let host = tempfile::tempdir().expect("host dir");
    let mut b = bundle("bind-rw");
    b.add_mount(json!({
        "destination": "/data",
        "type": "bind",
        "source": host.path(),
        "options": ["rbind", "rw"]
    }));
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; echo written > /data/from-container",
    );
    let mounts = mountinfo::parse(&out.stdout);
    assert!(mount_at(&mounts, "/data", &out).has_option("rw"));
    let text = fs::read_to_string(host.path().join("from-container")).expect("file on host");
    assert_eq!(text, "written\n");
}

#[test]
fn tmpfs_size_and_mode() {
    let rt = keelson();
    let mut b = bundle("tmpfs");
    b.add_mount(json!({
        "destination": "/scratch",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "size=1m", "mode=1770"]
    }));
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; echo mode=$(stat -c %a /scratch)",
    );
    let mounts = mountinfo::parse(&out.stdout);
    let scratch = mount_at(&mounts, "/scratch", &out);
    assert_eq!(scratch.fs_type, "tmpfs");
    assert_eq!(scratch.super_option("size"), Some("1024k"), "{scratch:?}");
    assert_eq!(scratch.super_option("mode"), Some("1770"), "{scratch:?}");
    assert!(
        scratch.has_option("nosuid") && scratch.has_option("nodev"),
        "{scratch:?}"
    );
    assert_eq!(
        value_of(&out.stdout, "mode").as_deref(),
        Some("1770"),
        "{out}"
    );
    // The mount point was created inside the rootfs (the config's root is read-only).
    assert!(b.rootfs().join("scratch").is_dir());
}

#[test]
fn rootfs_propagation_private() {
    let rt = keelson();
    let mut b = bundle("propagation");
    b.config_mut()["linux"]["rootfsPropagation"] = json!("private");
    let out = run_ok(&rt, &mut b, "cat /proc/self/mountinfo");
    let mounts = mountinfo::parse(&out.stdout);
    let root = mount_at(&mounts, "/", &out);
    // runc 1.1 leaves the new root out of any peer group whatever rootfsPropagation says
    // (the parent of the rootfs is made private for pivot_root), so only "private" is checked.
    assert!(
        !root.is_shared() && !root.is_slave(),
        "private root: {root:?}"
    );
}

#[test]
fn bind_mount_propagation_option() {
    let rt = keelson();
    let host = tempfile::tempdir().expect("host dir");
    let mut b = bundle("bind-prop");
    b.config_mut()["linux"]["rootfsPropagation"] = json!("private");
    b.add_mount(json!({
        "destination": "/shared",
        "type": "bind",
        "source": host.path(),
        "options": ["rbind", "rshared"]
    }));
    b.add_mount(json!({
        "destination": "/private",
        "type": "bind",
        "source": host.path(),
        "options": ["rbind", "rprivate"]
    }));
    let out = run_ok(&rt, &mut b, "cat /proc/self/mountinfo");
    let mounts = mountinfo::parse(&out.stdout);
    assert!(mount_at(&mounts, "/shared", &out).is_shared(), "{out}");
    let private = mount_at(&mounts, "/private", &out);
    assert!(!private.is_shared() && !private.is_slave(), "{private:?}");
}

#[test]
fn masked_paths_are_unreadable() {
    let rt = keelson();
    let mut b = bundle("masked");
    let rootfs = b.rootfs();
    fs::write(rootfs.join("etc/secret"), "top secret\n").expect("secret file");
    fs::create_dir(rootfs.join("etc/secretdir")).expect("secret dir");
    fs::write(rootfs.join("etc/secretdir/inner"), "inner secret\n").expect("inner");
    let masked = b.config_mut()["linux"]["maskedPaths"]
        .as_array_mut()
        .expect("maskedPaths array");
    masked.push(json!("/etc/secret"));
    masked.push(json!("/etc/secretdir"));
    let out = run_ok(
        &rt,
        &mut b,
        "echo keys=$(cat /proc/keys | wc -c); echo timer_list=$(cat /proc/timer_list | wc -c); \
         echo secret=$(cat /etc/secret | wc -c); echo secretdir=$(ls -A /etc/secretdir | wc -l); \
         if [ -e /proc/kcore ]; then echo kcore=$(head -c 16 /proc/kcore 2>/dev/null | wc -c); else echo kcore=0; fi; \
         echo acpi=$(ls -A /proc/acpi 2>/dev/null | wc -l); \
         if touch /etc/secretdir/x 2>/dev/null; then echo dirwrite=ok; else echo dirwrite=denied; fi",
    );
    for key in ["keys", "timer_list", "secret", "secretdir", "kcore", "acpi"] {
        assert_eq!(
            value_of(&out.stdout, key).as_deref(),
            Some("0"),
            "{key} readable:\n{out}"
        );
    }
    assert_eq!(
        value_of(&out.stdout, "dirwrite").as_deref(),
        Some("denied"),
        "{out}"
    );
    // The files themselves are untouched.
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/secret")).expect("secret"),
        "top secret\n"
    );
}

#[test]
fn readonly_paths_are_unwritable() {
    let rt = keelson();
    let mut b = bundle("ro-paths");
    b.config_mut()["root"]["readonly"] = json!(false);
    b.config_mut()["linux"]["readonlyPaths"]
        .as_array_mut()
        .expect("readonlyPaths array")
        .push(json!("/home"));
    let out = run_ok(
        &rt,
        &mut b,
        "cat /proc/self/mountinfo; \
         if echo 1 > /proc/sys/kernel/shm_rmid_forced; then echo procsys=ok; else echo procsys=denied; fi; \
         if touch /home/x 2>/dev/null; then echo home=ok; else echo home=denied; fi; \
         if touch /x 2>/dev/null; then echo root=ok; else echo root=denied; fi",
    );
    let mounts = mountinfo::parse(&out.stdout);
    assert!(
        mount_at(&mounts, "/proc/sys", &out).has_option("ro"),
        "{out}"
    );
    assert!(mount_at(&mounts, "/home", &out).has_option("ro"), "{out}");
    assert_eq!(
        value_of(&out.stdout, "procsys").as_deref(),
        Some("denied"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "home").as_deref(),
        Some("denied"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "root").as_deref(),
        Some("ok"),
        "{out}"
    );
}

#[test]
fn default_devices_exist_and_work() {
    let rt = keelson();
    let mut b = bundle("devices");
    let out = run_ok(
        &rt,
        &mut b,
        "for d in null zero full random urandom tty; do echo $d=$(stat -c '%F %t:%T %a' /dev/$d); done; \
         for l in ptmx fd stdin stdout stderr; do echo $l=$(readlink /dev/$l); done; \
         for d in pts shm; do echo $d=$(stat -c %F /dev/$d); done; \
         echo ptsfs=$(stat -f -c %T /dev/pts); \
         echo zero_read=$(head -c 3 /dev/zero | wc -c); echo urandom_read=$(head -c 4 /dev/urandom | wc -c); \
         if echo x > /dev/null; then echo null_write=ok; fi; \
         if echo x > /dev/full 2>/dev/null; then echo full_write=ok; else echo full_write=ENOSPC; fi",
    );
    let expect = |key: &str, want: &str| {
        assert_eq!(
            value_of(&out.stdout, key).as_deref(),
            Some(want),
            "/dev/{key}\n{out}"
        );
    };
    expect("null", "character special file 1:3 666");
    expect("zero", "character special file 1:5 666");
    expect("full", "character special file 1:7 666");
    expect("random", "character special file 1:8 666");
    expect("urandom", "character special file 1:9 666");
    expect("tty", "character special file 5:0 666");
    expect("ptmx", "pts/ptmx");
    expect("fd", "/proc/self/fd");
    expect("stdin", "/proc/self/fd/0");
    expect("stdout", "/proc/self/fd/1");
    expect("stderr", "/proc/self/fd/2");
    expect("pts", "directory");
    expect("shm", "directory");
    expect("ptsfs", "devpts");
    expect("zero_read", "3");
    expect("urandom_read", "4");
    expect("null_write", "ok");
    expect("full_write", "ENOSPC");
}

#[test]
fn config_devices_are_created() {
    let rt = keelson();
    let mut b = bundle("linux-devices");
    spec::linux_mut(b.config_mut()).insert(
        "devices".into(),
        json!([
            {"path": "/dev/kt-null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640, "uid": 0, "gid": 0},
            {"path": "/dev/kt-loop", "type": "b", "major": 7, "minor": 200, "fileMode": 0o600, "uid": 1000, "gid": 1000},
            {"path": "/dev/ktdir/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 0o666},
            {"path": "/dev/kt-fifo", "type": "p", "fileMode": 0o620}
        ]),
    );
    // The device cgroup must let the container use the char devices it got.
    let resources = spec::object_at(b.config_mut(), &["linux", "resources"]);
    resources.insert(
        "devices".into(),
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"}
        ]),
    );
    let out = run_ok(
        &rt,
        &mut b,
        "for d in kt-null kt-loop ktdir/zero kt-fifo; do echo $d=$(stat -c '%F %t:%T %a %u:%g' /dev/$d); done; \
         if echo x > /dev/kt-null; then echo kt_null_write=ok; fi; \
         echo kt_zero_read=$(head -c 2 /dev/ktdir/zero | wc -c)",
    );
    let expect = |key: &str, want: &str| {
        assert_eq!(
            value_of(&out.stdout, key).as_deref(),
            Some(want),
            "/dev/{key}\n{out}"
        );
    };
    expect("kt-null", "character special file 1:3 640 0:0");
    expect("kt-loop", "block special file 7:c8 600 1000:1000");
    expect("ktdir/zero", "character special file 1:5 666 0:0");
    expect("kt-fifo", "fifo 0:0 620 0:0");
    expect("kt_null_write", "ok");
    expect("kt_zero_read", "2");
    // Nothing was created in the bundle's rootfs on the host.
    assert!(!b.rootfs().join("dev/kt-null").exists());
}

/// A tmpfs mounted on the host for one test, unmounted when dropped (also on failure).
struct HostTmpfs(std::path::PathBuf);

impl HostTmpfs {
    fn mount(at: &std::path::Path) -> HostTmpfs {
        nix::mount::mount(
            Some("kt-rro"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount tmpfs");
        HostTmpfs(at.to_path_buf())
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn rro_makes_submounts_read_only_too() {
    let rt = keelson();
    let host = tempfile::tempdir().expect("host dir");
    let sub = host.path().join("sub");
    fs::create_dir(&sub).expect("sub");
    let _tmpfs = HostTmpfs::mount(&sub);
    let script = "cat /proc/self/mountinfo; \
                  if touch /data/top 2>/dev/null; then echo top=rw; else echo top=ro; fi; \
                  if touch /data/sub/f 2>/dev/null; then echo sub=rw; else echo sub=ro; fi";
    let run = |hint: &str, options: Value| {
        let mut b = bundle(hint);
        b.add_mount(json!({
            "destination": "/data",
            "type": "bind",
            "source": host.path(),
            "options": options
        }));
        run_ok(&rt, &mut b, script)
    };
    let out = run("rro", json!(["rbind", "ro", "rro"]));
    let mounts = mountinfo::parse(&out.stdout);
    assert!(
        mount_at(&mounts, "/data/sub", &out).has_option("ro"),
        "{out}"
    );
    assert_eq!(value_of(&out.stdout, "top").as_deref(), Some("ro"), "{out}");
    assert_eq!(value_of(&out.stdout, "sub").as_deref(), Some("ro"), "{out}");
    // Plain ro on an rbind leaves the submount as it is.
    let out = run("plain-ro", json!(["rbind", "ro"]));
    assert_eq!(value_of(&out.stdout, "top").as_deref(), Some("ro"), "{out}");
    assert_eq!(value_of(&out.stdout, "sub").as_deref(), Some("rw"), "{out}");
    assert!(sub.join("f").exists(), "the write reached the host's tmpfs");
}
