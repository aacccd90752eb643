//! Cgroup limits from `linux.resources`, read from the host side of the container's cgroup (a
//! [`CgroupScope`] below this process's own cgroup) and from inside; cgroup removal on delete;
//! OOM kills and their `events` line.

use std::fs;
use std::time::Duration;

use keelson_tests::probe::probe;
use keelson_tests::{Bundle, CgroupScope, ContainerGuard, Runtime, mountinfo, spec, unique};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn bundle(hint: &str) -> Bundle {
    Bundle::busybox(hint).expect("busybox bundle")
}

fn scope(hint: &str) -> CgroupScope {
    CgroupScope::new(hint).expect("cgroup scope")
}

fn set_resources(bundle: &mut Bundle, key: &str, value: Value) {
    spec::object_at(bundle.config_mut(), &["linux", "resources"]).insert(key.into(), value);
}

/// Creates a container running `sleep 1000` in `scope`; its cgroup is set up from then on.
fn create_sleeper<'a>(
    rt: &'a Runtime,
    bundle: &mut Bundle,
    scope: &CgroupScope,
    hint: &str,
) -> ContainerGuard<'a> {
    bundle.set_args(&["sleep", "1000"]);
    bundle.set_cgroups_path(scope.cgroups_path());
    bundle.save().expect("save config");
    let id = unique::container_id(hint);
    let mut guard = rt.guard(&id);
    let out = rt.create(bundle, &id).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    guard
}

fn read(scope: &CgroupScope, controller: &str, file: &str) -> String {
    scope
        .read(controller, file)
        .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
}

#[test]
fn memory_limits() {
    let rt = keelson();
    let sc = scope("memory");
    let mut b = bundle("memory");
    set_resources(
        &mut b,
        "memory",
        json!({"limit": 67108864, "reservation": 33554432, "swap": 134217728}),
    );
    let guard = create_sleeper(&rt, &mut b, &sc, "memory");
    assert_eq!(read(&sc, "memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(
        read(&sc, "memory", "memory.soft_limit_in_bytes"),
        "33554432"
    );
    if sc
        .host_dir("memory")
        .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists())
    {
        assert_eq!(
            read(&sc, "memory", "memory.memsw.limit_in_bytes"),
            "134217728"
        );
    }
    let pid = rt.state(guard.id()).expect("state")["pid"]
        .as_i64()
        .expect("pid");
    let procs = read(&sc, "memory", "cgroup.procs");
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "init {pid} not in {procs}"
    );
}

#[test]
fn memory_limit_is_visible_inside() {
    let rt = keelson();
    let mut b = bundle("memory-inside");
    set_resources(&mut b, "memory", json!({"limit": 67108864}));
    let out = probe(
        &rt,
        &mut b,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "67108864", "{out}");
}

#[test]
fn cpu_shares_quota_and_period() {
    let rt = keelson();
    let sc = scope("cpu");
    let mut b = bundle("cpu");
    set_resources(
        &mut b,
        "cpu",
        json!({"shares": 512, "quota": 50000, "period": 100000}),
    );
    let _guard = create_sleeper(&rt, &mut b, &sc, "cpu");
    assert_eq!(read(&sc, "cpu", "cpu.shares"), "512");
    assert_eq!(read(&sc, "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(&sc, "cpu", "cpu.cfs_period_us"), "100000");
}

#[test]
fn cpuset_cpus_and_mems() {
    let rt = keelson();
    let sc = scope("cpuset");
    let mut b = bundle("cpuset");
    set_resources(&mut b, "cpu", json!({"cpus": "0", "mems": "0"}));
    let guard = create_sleeper(&rt, &mut b, &sc, "cpuset");
    assert_eq!(read(&sc, "cpuset", "cpuset.cpus"), "0");
    assert_eq!(read(&sc, "cpuset", "cpuset.mems"), "0");
    let pid = rt.state(guard.id()).expect("state")["pid"]
        .as_i64()
        .expect("pid");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("init status");
    assert_eq!(
        keelson_tests::caps::status_field(&status, "Cpus_allowed_list"),
        Some("0"),
        "{status}"
    );
}

#[test]
fn pids_limit() {
    let rt = keelson();
    let sc = scope("pids");
    let mut b = bundle("pids");
    set_resources(&mut b, "pids", json!({"limit": 42}));
    let _guard = create_sleeper(&rt, &mut b, &sc, "pids");
    assert_eq!(read(&sc, "pids", "pids.max"), "42");
}

#[test]
fn pids_limit_is_enforced() {
    let rt = keelson();
    let mut b = bundle("pids-enforced");
    set_resources(&mut b, "pids", json!({"limit": 5}));
    let out = probe(
        &rt,
        &mut b,
        // A failed fork ends the (sub)shell, so the forks happen in a subshell; only builtins
        // run after it, because every fork needs a free pid slot.
        "(for i in 1 2 3 4 5 6 7 8; do sleep 5 & done) 2>/dev/null; echo sub=$?; \
         n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo running=$n",
    )
    .expect("probe");
    let running: u32 = keelson_tests::probe::value_of(&out.stdout, "running")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count: {out}"));
    assert!(running <= 5, "{out}");
    let sub = keelson_tests::probe::value_of(&out.stdout, "sub");
    assert!(sub.is_some_and(|s| s != "0"), "forking never failed: {out}");
}

/// The block device holding `/`, as `major:minor`.
fn root_block_device() -> Option<(u64, u64)> {
    let mounts = mountinfo::current().ok()?;
    let root = mountinfo::find(&mounts, "/")?;
    let (major, minor) = root.dev.split_once(':')?;
    let major: u64 = major.parse().ok()?;
    // Only a real block device (not 0:N of a virtual filesystem) can be throttled.
    (major != 0).then_some((major, minor.parse().ok()?))
}

#[test]
fn blkio_weight_and_throttle() {
    let rt = keelson();
    let sc = scope("blkio");
    let mut b = bundle("blkio");
    let device = root_block_device();
    let mut block_io = json!({"weight": 500});
    if let Some((major, minor)) = device {
        block_io["throttleReadBpsDevice"] =
            json!([{"major": major, "minor": minor, "rate": 1048576}]);
        block_io["throttleWriteIOPSDevice"] =
            json!([{"major": major, "minor": minor, "rate": 300}]);
    }
    set_resources(&mut b, "blockIO", block_io);
    let _guard = create_sleeper(&rt, &mut b, &sc, "blkio");
    let dir = sc.host_dir("blkio").expect("blkio hierarchy");
    // CFQ's blkio.weight where it exists, else BFQ's blkio.bfq.weight.
    let weight = if dir.join("blkio.weight").exists() {
        read(&sc, "blkio", "blkio.weight")
    } else {
        read(&sc, "blkio", "blkio.bfq.weight")
    };
    assert!(
        weight == "500" || weight.ends_with(" 500"),
        "weight {weight:?}"
    );
    if let Some((major, minor)) = device {
        assert_eq!(
            read(&sc, "blkio", "blkio.throttle.read_bps_device"),
            format!("{major}:{minor} 1048576")
        );
        assert_eq!(
            read(&sc, "blkio", "blkio.throttle.write_iops_device"),
            format!("{major}:{minor} 300")
        );
    }
}

#[test]
fn device_cgroup_denies_by_default() {
    let rt = keelson();
    let sc = scope("devices");
    let mut b = bundle("devices");
    let _guard = create_sleeper(&rt, &mut b, &sc, "devices");
    let list = read(&sc, "devices", "devices.list");
    assert!(
        !list.lines().any(|l| l == "a *:* rwm"),
        "everything allowed:\n{list}"
    );
    for dev in [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:2 rwm",
    ] {
        assert!(list.lines().any(|l| l == dev), "{dev} not allowed:\n{list}");
    }
    // A device outside the allowed list cannot be opened from inside.
    let out = probe(
        &rt,
        &mut b,
        "mknod /dev/kt-mem c 1 1 2>/dev/null; if head -c 1 /dev/kt-mem >/dev/null 2>&1; then echo mem=readable; else echo mem=denied; fi",
    )
    .expect("probe");
    assert!(out.stdout.contains("mem=denied"), "{out}");
}

#[test]
fn cgroup_is_created_on_create_and_removed_on_delete() {
    let rt = keelson();
    let sc = scope("lifecycle");
    let mut b = bundle("cg-lifecycle");
    let guard = create_sleeper(&rt, &mut b, &sc, "cg-lifecycle");
    for controller in ["memory", "cpu", "pids", "devices", "freezer"] {
        if let Some(dir) = sc.host_dir(controller) {
            assert!(dir.is_dir(), "{controller}: {} missing", dir.display());
        }
    }
    let pid = rt.state(guard.id()).expect("state")["pid"]
        .as_i64()
        .expect("pid");
    assert!(
        sc.pids().contains(&i32::try_from(pid).expect("pid fits")),
        "{:?}",
        sc.pids()
    );
    let out = rt.delete_force(guard.id()).expect("delete");
    assert!(out.success(), "{out}");
    assert_eq!(
        sc.existing_dirs(),
        Vec::<std::path::PathBuf>::new(),
        "cgroups left after delete"
    );
}

fn oom_config(bundle: &mut Bundle) {
    set_resources(
        bundle,
        "memory",
        json!({"limit": 33554432, "swap": 33554432}),
    );
}

#[test]
fn oom_kill_gives_exit_code_137() {
    let rt = keelson();
    let mut b = bundle("oom");
    oom_config(&mut b);
    let out = probe(&rt, &mut b, "dd if=/dev/zero of=/dev/null bs=128M count=1").expect("probe");
    assert_eq!(out.code, 137, "{out}");
}

#[test]
fn oom_kill_is_reported_by_events() {
    let rt = keelson();
    let sc = scope("oom-events");
    let mut b = bundle("oom-events");
    oom_config(&mut b);
    b.set_args(&[
        "sh",
        "-c",
        "sleep 1; dd if=/dev/zero of=/dev/null bs=128M count=1",
    ]);
    b.set_cgroups_path(sc.cgroups_path());
    b.save().expect("save");
    let id = unique::container_id("oom-events");
    let mut guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    let events = rt.spawn(["events", id.as_str()]).expect("spawn events");
    // Give `events` time to attach; the container waits 1 s before it allocates.
    std::thread::sleep(Duration::from_millis(200));
    let out = rt.start(&id).expect("start");
    assert!(out.success(), "{out}");
    let line = events.wait_for_line(|l| l.contains("\"oom\""), Duration::from_secs(20));
    let Some(line) = line else {
        panic!(
            "no oom event; events printed {:?}, stderr {}",
            events.lines(),
            events.stderr()
        );
    };
    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(event["type"], "oom", "{line}");
    assert_eq!(event["id"], id.as_str(), "{line}");
    rt.wait_status(&id, "stopped", Duration::from_secs(10))
        .expect("container stops");
}
