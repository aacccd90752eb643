//! Cgroup limits from `linux.resources`, read from the host side of the container's cgroup (a
//! [`CgroupScope`] below this process's own cgroup) and from inside; cgroup removal on delete;
//! OOM kills and their `events` line; the freezer; device rules.
//!
//! Every test checks the files of the cgroup version the machine runs: v1 on this host, and v2
//! when `tests/cgroup-v2/run.sh` runs this binary inside a guest booted in unified mode.

use std::fs;
use std::time::Duration;

use keelson_tests::probe::probe;
use keelson_tests::{Bundle, CgroupScope, ContainerGuard, Runtime, spec, unique};
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
    if sc.is_unified_only() {
        assert_eq!(read(&sc, "memory", "memory.max"), "67108864");
        assert_eq!(read(&sc, "memory", "memory.low"), "33554432");
        // v2's swap limit is swap alone: 128 MiB memory+swap - 64 MiB memory.
        assert_eq!(read(&sc, "memory", "memory.swap.max"), "67108864");
    } else {
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
fn unified_resources_are_written_on_v2_and_refused_on_v1() {
    let rt = keelson();
    let sc = scope("unified");
    let mut b = bundle("unified");
    set_resources(&mut b, "unified", json!({"memory.high": "52428800"}));
    if sc.is_unified_only() {
        let _guard = create_sleeper(&rt, &mut b, &sc, "unified");
        assert_eq!(read(&sc, "memory", "memory.high"), "52428800");
        return;
    }
    b.set_args(&["true"]);
    b.set_cgroups_path(sc.cgroups_path());
    b.save().expect("save");
    let id = unique::container_id("unified");
    let _guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create runs");
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("requires cgroup v2"), "{out}");
    assert!(
        rt.root_entries().is_empty(),
        "state left: {:?}",
        rt.root_entries()
    );
    assert_eq!(
        sc.existing_dirs(),
        Vec::<std::path::PathBuf>::new(),
        "cgroups left"
    );
}

#[test]
fn memory_limit_is_visible_inside() {
    let rt = keelson();
    let mut b = bundle("memory-inside");
    set_resources(&mut b, "memory", json!({"limit": 67108864}));
    let unified = scope("memory-inside-mode").is_unified_only();
    let file = if unified {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let out = probe(&rt, &mut b, &format!("cat {file}")).expect("probe");
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
    if sc.is_unified_only() {
        // shares 512 -> weight 1 + (512 - 2) * 9999 / 262142 = 20
        assert_eq!(read(&sc, "cpu", "cpu.weight"), "20");
        assert_eq!(read(&sc, "cpu", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read(&sc, "cpu", "cpu.shares"), "512");
        assert_eq!(read(&sc, "cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&sc, "cpu", "cpu.cfs_period_us"), "100000");
    }
}

#[test]
fn cpuset_cpus_and_mems() {
    let rt = keelson();
    let sc = scope("cpuset");
    let mut b = bundle("cpuset");
    set_resources(&mut b, "cpu", json!({"cpus": "0", "mems": "0"}));
    if sc.is_unified_only() && !v2_controller_available("cpuset") {
        // A guest without the cpuset controller: the request must be refused, not dropped.
        b.set_args(&["true"]);
        b.set_cgroups_path(sc.cgroups_path());
        b.save().expect("save");
        let id = unique::container_id("cpuset-missing");
        let _guard = rt.guard(&id);
        let out = rt.create(&b, &id).expect("create runs");
        assert_ne!(out.code, 0, "{out}");
        assert!(out.stderr.contains("cpuset.cpus"), "{out}");
        return;
    }
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

/// A real block device of the machine (`/sys/block/*/dev`), as `major:minor`: the host's disk,
/// or the guest's scratch disk under tests/cgroup-v2.
fn some_block_device() -> Option<(u64, u64)> {
    let mut names: Vec<_> = fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    names.sort();
    let dev = fs::read_to_string(format!("/sys/block/{}/dev", names.first()?)).ok()?;
    let (major, minor) = dev.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Whether the cgroup v2 root offers `controller`.
fn v2_controller_available(controller: &str) -> bool {
    fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

#[test]
fn blkio_weight_and_throttle() {
    let rt = keelson();
    let sc = scope("blkio");
    let mut b = bundle("blkio");
    let (major, minor) = some_block_device().expect("a block device in /sys/block");
    let unified = sc.is_unified_only();
    let mut block_io = json!({
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 300}]
    });
    if !unified {
        block_io["weight"] = json!(500);
    }
    set_resources(&mut b, "blockIO", block_io);
    let _guard = create_sleeper(&rt, &mut b, &sc, "blkio");
    if unified {
        assert_eq!(
            read(&sc, "io", "io.max"),
            format!("{major}:{minor} rbps=1048576 wbps=max riops=max wiops=300")
        );
        return;
    }
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
    assert_eq!(
        read(&sc, "blkio", "blkio.throttle.read_bps_device"),
        format!("{major}:{minor} 1048576")
    );
    assert_eq!(
        read(&sc, "blkio", "blkio.throttle.write_iops_device"),
        format!("{major}:{minor} 300")
    );
}

#[test]
fn device_cgroup_denies_by_default() {
    let rt = keelson();
    let sc = scope("devices");
    let mut b = bundle("devices");
    let _guard = create_sleeper(&rt, &mut b, &sc, "devices");
    if !sc.is_unified_only() {
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
    }
}

/// Makes a node for char 240:0 (a major reserved for local use, with no driver here) inside the
/// container and opens it. Only the device controller (v1 devices.*, v2 an eBPF program) can
/// refuse the open with EPERM; when it allows it, the missing driver answers ENXIO. mknod is
/// allowed by the default `c *:* m` rule and CAP_MKNOD is granted.
fn open_unknown_device(rt: &Runtime, extra_rule: Option<Value>) -> String {
    let mut b = bundle("devices-open");
    let caps = json!([
        "CAP_MKNOD",
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        spec::object_at(b.config_mut(), &["process", "capabilities"])
            .insert(set.into(), caps.clone());
    }
    if let Some(rule) = extra_rule {
        let devices = spec::object_at(b.config_mut(), &["linux", "resources"])
            .entry("devices")
            .or_insert_with(|| json!([]));
        if let Some(list) = devices.as_array_mut() {
            list.push(rule);
        }
    }
    let out = probe(
        rt,
        &mut b,
        "mknod /dev/kt-local c 240 0 && echo made=yes; \
         dd if=/dev/kt-local of=/dev/null count=0 2>&1",
    )
    .expect("probe");
    assert!(
        out.stdout.contains("made=yes"),
        "mknod must be allowed: {out}"
    );
    out.stdout
}

#[test]
fn device_rules_decide_what_can_be_opened() {
    let rt = keelson();
    let denied = open_unknown_device(&rt, None);
    assert!(denied.contains("Operation not permitted"), "{denied}");
    let allowed = open_unknown_device(
        &rt,
        Some(json!({"allow": true, "type": "c", "major": 240, "minor": 0, "access": "rw"})),
    );
    assert!(allowed.contains("No such device or address"), "{allowed}");
}

#[test]
fn nested_cgroups_path_is_created_and_removed() {
    let rt = keelson();
    let sc = scope("nested");
    // The scope exists before the container, like a pod's cgroup: delete must keep it.
    for dir in sc.dirs() {
        fs::create_dir_all(&dir).expect("create scope dir");
    }
    let mut b = bundle("nested");
    b.set_args(&["sleep", "1000"]);
    b.set_cgroups_path(&format!("{}/pod/ctr", sc.cgroups_path()));
    b.save().expect("save");
    let id = unique::container_id("nested");
    let mut guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    let pid = rt.state(&id).expect("state")["pid"].as_i64().expect("pid");
    let controller = if sc.is_unified_only() {
        "unified"
    } else {
        "memory"
    };
    let leaf = sc.host_dir(controller).expect("scope dir").join("pod/ctr");
    let procs = fs::read_to_string(leaf.join("cgroup.procs")).expect("leaf cgroup.procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    let out = rt.delete_force(&id).expect("delete");
    assert!(out.success(), "{out}");
    assert!(!leaf.exists(), "leaf left");
    assert!(
        !leaf.parent().is_some_and(|p| p.exists()),
        "intermediate level left"
    );
    assert!(
        sc.host_dir(controller).is_some_and(|d| d.exists()),
        "the scope is not ours to remove"
    );
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let rt = keelson();
    let sc = scope("freezer");
    let mut b = bundle("freezer");
    let guard = create_sleeper(&rt, &mut b, &sc, "freezer");
    let id = guard.id().to_string();
    assert!(rt.start(&id).expect("start").success());
    let pid = rt.state(&id).expect("state")["pid"].as_i64().expect("pid");
    let out = rt.cmd(["pause", id.as_str()]).expect("pause");
    assert!(out.success(), "{out}");
    assert_eq!(rt.state(&id).expect("state")["status"], "paused");
    if sc.is_unified_only() {
        let events = read(&sc, "unified", "cgroup.events");
        assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    } else {
        assert_eq!(read(&sc, "freezer", "freezer.state"), "FROZEN");
    }
    let out = rt.cmd(["pause", id.as_str()]).expect("pause again");
    assert_ne!(out.code, 0, "pausing a paused container: {out}");
    let out = rt.cmd(["resume", id.as_str()]).expect("resume");
    assert!(out.success(), "{out}");
    assert_eq!(rt.state(&id).expect("state")["status"], "running");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    assert!(!stat.contains(") D "), "still frozen: {stat}");
    let out = rt.cmd(["resume", id.as_str()]).expect("resume again");
    assert_ne!(out.code, 0, "resuming a running container: {out}");
}

#[test]
fn cgroup_is_created_on_create_and_removed_on_delete() {
    let rt = keelson();
    let sc = scope("lifecycle");
    let mut b = bundle("cg-lifecycle");
    let guard = create_sleeper(&rt, &mut b, &sc, "cg-lifecycle");
    for controller in ["memory", "cpu", "pids", "devices", "freezer", "unified"] {
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
