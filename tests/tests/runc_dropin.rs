//! The rest of the runc CLI that containerd's shim and podman call: exec, ps, update,
//! features, terminals over --console-socket, --preserve-fds.

use std::fs;
use std::time::Duration;

use keelson_tests::console::{ConsoleSocket, read_all};
use keelson_tests::probe::value_of;
use keelson_tests::{Bundle, CgroupScope, Runtime, caps, spec, unique};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

/// A running `sleep 1000` container in its own cgroup scope.
fn running<'a>(
    rt: &'a Runtime,
    sc: &CgroupScope,
    hint: &str,
) -> (keelson_tests::runtime::Running<'a>, i64) {
    let r = rt
        .running(sc.cgroups_path(), hint)
        .expect("running container");
    let pid = r.pid;
    (r, pid)
}

const NS: [&str; 6] = ["pid", "net", "ipc", "uts", "mnt", "cgroup"];

#[test]
fn exec_joins_the_namespaces_and_cgroups_and_returns_the_exit_code() {
    let rt = keelson();
    let sc = CgroupScope::new("exec").expect("scope");
    let (guard, pid) = running(&rt, &sc, "exec");
    let script = NS
        .iter()
        .map(|n| format!("echo {n}=$(readlink /proc/self/ns/{n});"))
        .collect::<String>()
        + "echo cg=$(grep memory /proc/self/cgroup | cut -d: -f3); echo pid1=$(cat /proc/1/comm); exit 7";
    let out = rt
        .cmd(["exec", guard.id(), "sh", "-c", &script])
        .expect("exec");
    assert_eq!(out.code, 7, "{out}");
    for n in NS {
        let host_view = fs::read_link(format!("/proc/{pid}/ns/{n}")).expect("init ns");
        assert_eq!(
            value_of(&out.stdout, n),
            Some(host_view.to_string_lossy().into_owned()),
            "{n}: {out}"
        );
    }
    assert_eq!(
        value_of(&out.stdout, "pid1").as_deref(),
        Some("sleep"),
        "{out}"
    );
    let init_cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("init cgroup");
    let init_mem = init_cg
        .lines()
        .find(|l| l.contains(":memory:"))
        .map(|l| l.rsplit(':').next().unwrap_or("").to_string());
    if let Some(init_mem) = init_mem {
        assert_eq!(value_of(&out.stdout, "cg"), Some(init_mem), "{out}");
    }
}

#[test]
fn exec_flags_env_cwd_user_and_caps() {
    let rt = keelson();
    let sc = CgroupScope::new("exec-flags").expect("scope");
    let (guard, _) = running(&rt, &sc, "exec-flags");
    let out = rt
        .cmd([
            "exec",
            "--env",
            "KT_X=42",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            "--additional-gids",
            "4242",
            "--cap",
            "CAP_NET_RAW",
            "--no-new-privs",
            guard.id(),
            "sh",
            "-c",
            "echo x=$KT_X; echo cwd=$(pwd); echo ids=$(id -u):$(id -g); echo groups=$(id -G); \
             grep -E '^(CapEff|NoNewPrivs)' /proc/self/status | tr -d '\\t' | sed 's/:/=/'",
        ])
        .expect("exec");
    assert!(out.success(), "{out}");
    let v = |k: &str| value_of(&out.stdout, k);
    assert_eq!(v("x").as_deref(), Some("42"), "{out}");
    assert_eq!(v("cwd").as_deref(), Some("/tmp"), "{out}");
    assert_eq!(v("ids").as_deref(), Some("1000:1000"), "{out}");
    assert!(
        v("groups").is_some_and(|g| g.split(' ').any(|x| x == "4242")),
        "{out}"
    );
    assert_eq!(v("NoNewPrivs").as_deref(), Some("1"), "{out}");
    let eff = u64::from_str_radix(&v("CapEff").unwrap_or_default(), 16).expect("CapEff hex");
    let raw = caps::mask(&["CAP_NET_RAW"]).expect("mask");
    // A non-root user keeps only ambient capabilities; root's default set plus NET_RAW is
    // checked below.
    assert_eq!(
        eff & raw,
        0,
        "non-root process must not keep effective caps: {out}"
    );
    let out = rt
        .cmd([
            "exec",
            "--cap",
            "CAP_NET_RAW",
            guard.id(),
            "grep",
            "CapEff",
            "/proc/self/status",
        ])
        .expect("exec");
    let hex = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let eff = u64::from_str_radix(&hex, 16).expect("CapEff hex");
    assert_ne!(eff & raw, 0, "--cap CAP_NET_RAW missing: {out}");
}

#[test]
fn exec_with_a_process_json() {
    let rt = keelson();
    let sc = CgroupScope::new("exec-json").expect("scope");
    let (guard, _) = running(&rt, &sc, "exec-json");
    let dir = tempfile::tempdir().expect("tmp");
    let process = json!({
        "terminal": false,
        "user": {"uid": 65534, "gid": 65534},
        "args": ["sh", "-c", "echo who=$(id -u); echo env=$KT_J; pwd"],
        "env": ["PATH=/bin", "KT_J=json"],
        "cwd": "/etc",
        "noNewPrivileges": true
    });
    let path = dir.path().join("process.json");
    fs::write(&path, process.to_string()).expect("write");
    let out = rt
        .cmd([
            "exec",
            "--process",
            path.to_str().expect("utf8"),
            guard.id(),
        ])
        .expect("exec");
    assert!(out.success(), "{out}");
    assert_eq!(
        value_of(&out.stdout, "who").as_deref(),
        Some("65534"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "env").as_deref(),
        Some("json"),
        "{out}"
    );
    assert!(out.stdout.lines().any(|l| l == "/etc"), "{out}");
    fs::write(&path, "{not json").expect("write");
    let out = rt
        .cmd([
            "exec",
            "--process",
            path.to_str().expect("utf8"),
            guard.id(),
        ])
        .expect("exec");
    assert_eq!(out.code, 255, "{out}");
    assert!(out.stderr.contains("process.json"), "{out}");
}

#[test]
fn exec_detached_writes_the_pid_file_and_ps_lists_it() {
    let rt = keelson();
    let sc = CgroupScope::new("exec-ps").expect("scope");
    let (guard, pid) = running(&rt, &sc, "exec-ps");
    let dir = tempfile::tempdir().expect("tmp");
    let pid_file = dir.path().join("exec.pid");
    let out = rt
        .cmd([
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().expect("utf8"),
            guard.id(),
            "sleep",
            "1000",
        ])
        .expect("exec -d");
    assert!(out.success(), "{out}");
    let exec_pid: i64 = fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    let out = rt.cmd(["ps", "--format", "json", guard.id()]).expect("ps");
    assert!(out.success(), "{out}");
    let pids: Vec<i64> = serde_json::from_str(&out.stdout).expect("ps json");
    assert!(
        pids.contains(&pid) && pids.contains(&exec_pid),
        "{pids:?} lacks {pid}/{exec_pid}"
    );
    let out = rt.cmd(["ps", guard.id()]).expect("ps table");
    assert!(
        out.stdout.lines().next().is_some_and(|h| h.contains("PID")),
        "{out}"
    );
    assert!(out.stdout.lines().count() >= 3, "{out}");
}

#[test]
fn exec_into_a_stopped_or_unknown_container_fails() {
    let rt = keelson();
    let out = rt.cmd(["exec", "no-such-container", "true"]).expect("exec");
    assert_eq!(out.code, 255, "{out}");
    assert!(out.stderr.contains("container does not exist"), "{out}");
    let sc = CgroupScope::new("exec-stopped").expect("scope");
    let (guard, _) = running(&rt, &sc, "exec-stopped");
    assert!(rt.kill(guard.id(), "KILL").expect("kill").success());
    rt.wait_status(guard.id(), "stopped", Duration::from_secs(10))
        .expect("stops");
    let out = rt.cmd(["exec", guard.id(), "true"]).expect("exec");
    assert_eq!(out.code, 255, "{out}");
    assert!(out.stderr.contains("stopped container"), "{out}");
}

#[test]
fn update_changes_the_limits() {
    let rt = keelson();
    let sc = CgroupScope::new("update").expect("scope");
    let (guard, _) = running(&rt, &sc, "update");
    let out = rt
        .cmd([
            "update",
            "--memory",
            "50331648",
            "--pids-limit",
            "33",
            guard.id(),
        ])
        .expect("update");
    assert!(out.success(), "{out}");
    let mem = if sc.is_unified_only() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(sc.read("memory", mem).expect("memory"), "50331648");
    assert_eq!(sc.read("pids", "pids.max").expect("pids"), "33");
    let dir = tempfile::tempdir().expect("tmp");
    let res = dir.path().join("res.json");
    fs::write(&res, json!({"pids": {"limit": 44}}).to_string()).expect("write");
    let out = rt
        .cmd(["update", "-r", res.to_str().expect("utf8"), guard.id()])
        .expect("update -r");
    assert!(out.success(), "{out}");
    assert_eq!(sc.read("pids", "pids.max").expect("pids"), "44");
}

#[test]
fn features_is_json_like_runcs() {
    let rt = keelson();
    let out = rt.cmd(["features"]).expect("features");
    assert!(out.success(), "{out}");
    let v: Value = serde_json::from_str(&out.stdout).expect("features json");
    assert_eq!(v["ociVersionMin"], "1.0.0");
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for n in ["mount", "pid", "network", "user", "cgroup"] {
        assert!(ns.contains(&n), "{n} missing: {ns:?}");
    }
    assert!(
        v["linux"]["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "CAP_SYS_ADMIN"))
    );
}

#[test]
fn terminal_over_the_console_socket() {
    let rt = keelson();
    let console = ConsoleSocket::new().expect("console socket");
    let mut b = Bundle::busybox("tty").expect("bundle");
    b.set_args(&[
        "sh",
        "-c",
        "echo tty=$(tty); [ -t 0 ] && echo stdin=tty; echo size=$(stty size)",
    ]);
    spec::object_at(b.config_mut(), &["process"]).insert("terminal".into(), json!(true));
    spec::object_at(b.config_mut(), &["process"])
        .insert("consoleSize".into(), json!({"height": 33, "width": 101}));
    b.save().expect("save");
    let id = unique::container_id("tty");
    let _guard = rt.guard(&id);
    // Without a console socket, a terminal container cannot be created.
    let out = rt.create(&b, &id).expect("create");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("console socket"), "{out}");
    let path = console.path();
    let out = rt
        .create_with(&b, &id, &["--console-socket", path.to_str().expect("utf8")])
        .expect("create");
    assert!(out.success(), "{out}");
    let (name, master) = console
        .receive(Duration::from_secs(10))
        .expect("pty master");
    assert_eq!(name, "/dev/ptmx");
    assert!(rt.start(&id).expect("start").success());
    let text = read_all(master, Duration::from_secs(5));
    assert!(text.contains("tty=/dev/pts/0"), "{text:?}");
    assert!(text.contains("stdin=tty"), "{text:?}");
    assert!(text.contains("size=33 101"), "{text:?}");
}

#[test]
fn preserve_fds_passes_descriptors() {
    let rt = keelson();
    let mut b = Bundle::busybox("fds").expect("bundle");
    b.set_args(&[
        "sh",
        "-c",
        "echo through-fd-3 >&3; for f in 3 4; do [ -e /proc/self/fd/$f ] && echo fd$f=open || echo fd$f=closed; done",
    ]);
    b.save().expect("save");
    let dir = tempfile::tempdir().expect("tmp");
    let out_file = dir.path().join("fd3");
    let id = unique::container_id("fds");
    let _guard = rt.guard(&id);
    let script = format!(
        "exec 3>'{}' 4>/dev/null; '{}' --root '{}' run --preserve-fds 1 --bundle '{}' '{}'",
        out_file.display(),
        rt.bin.display(),
        rt.root_dir().display(),
        b.path().display(),
        id
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(&out_file).expect("fd3 file"),
        "through-fd-3\n"
    );
    // fd 3 was passed, fd 4 (beyond --preserve-fds) was not.
    assert!(stdout.contains("fd3=open"), "{stdout}");
    assert!(stdout.contains("fd4=closed"), "{stdout}");
}

/// This host runs neither AppArmor nor SELinux: like runc, an AppArmor profile cannot be
/// applied (the kernel refuses the attr write) and an SELinux label is refused up front.
#[test]
fn lsm_fields_on_a_host_without_apparmor_or_selinux() {
    let rt = keelson();
    assert!(
        !std::path::Path::new("/sys/fs/selinux/enforce").exists(),
        "this test expects no SELinux"
    );
    for (field, value, words) in [
        ("apparmorProfile", "docker-default", "apparmor"),
        (
            "selinuxLabel",
            "system_u:system_r:container_t:s0",
            "selinux is disabled",
        ),
    ] {
        let mut b = Bundle::busybox("lsm").expect("bundle");
        spec::object_at(b.config_mut(), &["process"]).insert(field.into(), json!(value));
        let id = unique::container_id("lsm");
        let _guard = rt.guard(&id);
        b.set_args(&["true"]);
        b.save().expect("save");
        let out = rt.create(&b, &id).expect("create");
        assert_eq!(out.code, 1, "{field}: {out}");
        assert!(out.stderr.contains(words), "{field}: {out}");
        assert!(
            rt.root_entries().is_empty(),
            "{field}: state left {:?}",
            rt.root_entries()
        );
    }
}

/// `run` and `exec -t` in the foreground without a console socket: keelson holds the pty and
/// copies it to its own terminal (given here by script(1)).
#[test]
fn foreground_terminal_without_a_console_socket() {
    let rt = keelson();
    let sc = CgroupScope::new("fg-tty").expect("scope");
    let mut b = Bundle::busybox("fg-tty").expect("bundle");
    b.set_args(&["sh", "-c", "tty; [ -t 0 ] && echo stdin-is-tty; exit 7"]);
    b.set_cgroups_path(sc.cgroups_path());
    spec::object_at(b.config_mut(), &["process"]).insert("terminal".into(), json!(true));
    b.save().expect("save");
    let id = unique::container_id("fg-tty");
    let _guard = rt.guard(&id);
    let line = format!(
        "'{}' --root '{}' run --bundle '{}' '{}'",
        rt.bin.display(),
        rt.root_dir().display(),
        b.path().display(),
        id
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(
        text.contains("/dev/pts/0") && text.contains("stdin-is-tty"),
        "{text}"
    );
    assert!(
        rt.root_entries().is_empty(),
        "left: {:?}",
        rt.root_entries()
    );

    let (guard, _) = running(&rt, &sc, "fg-tty-exec");
    let line = format!(
        "'{}' --root '{}' exec -t '{}' sh -c 'tty; exit 5'",
        rt.bin.display(),
        rt.root_dir().display(),
        guard.id()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");
}

#[test]
fn systemd_cgroup_driver_is_a_clear_error() {
    let rt = keelson();
    let out = rt.cmd(["--systemd-cgroup", "list"]).expect("list");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("systemd cgroup driver"), "{out}");
}

/// A new session keyring per container, named after it, unless --no-new-keyring.
#[test]
fn session_keyring_unless_no_new_keyring() {
    let rt = keelson();
    let keyring_named_after_the_container = |extra: &[&str]| -> bool {
        let mut b = Bundle::busybox("keyring").expect("bundle");
        // /proc/keys is masked by default; unmask it to see the keyrings.
        spec::object_at(b.config_mut(), &["linux"]).insert("maskedPaths".into(), json!([]));
        let id = unique::container_id("keyring");
        b.set_args(&[
            "sh",
            "-c",
            &format!("grep -c ' keyring *{id}:' /proc/keys || true"),
        ]);
        b.save().expect("save");
        let _guard = rt.guard(&id);
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "--bundle".into(),
            b.path().display().to_string(),
            id.clone(),
        ]);
        let out = rt.cmd(args).expect("run");
        assert!(out.success(), "{out}");
        out.stdout.trim() != "0"
    };
    assert!(
        keyring_named_after_the_container(&[]),
        "no session keyring named after the container"
    );
    assert!(
        !keyring_named_after_the_container(&["--no-new-keyring"]),
        "--no-new-keyring made one"
    );
}

#[test]
fn exec_with_console_socket_and_preserved_fds() {
    let rt = keelson();
    let sc = CgroupScope::new("exec-tty").expect("scope");
    let (guard, _) = running(&rt, &sc, "exec-tty");
    let console = ConsoleSocket::new().expect("console");
    let out = rt
        .cmd([
            "exec",
            "-t",
            "-d",
            "--console-socket",
            console.path().to_str().expect("utf8"),
            guard.id(),
            "sh",
            "-c",
            "tty; echo exec-tty-ok",
        ])
        .expect("exec -t -d");
    assert!(out.success(), "{out}");
    let (_, master) = console.receive(Duration::from_secs(10)).expect("master");
    let text = read_all(master, Duration::from_secs(5));
    assert!(
        text.contains("/dev/pts/") && text.contains("exec-tty-ok"),
        "{text:?}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("fd3");
    let line = format!(
        "exec 3>'{}'; '{}' --root '{}' exec --preserve-fds 1 '{}' sh -c 'echo via-exec-fd3 >&3'",
        file.display(),
        rt.bin.display(),
        rt.root_dir().display(),
        guard.id()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &line])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(&file).expect("fd3"), "via-exec-fd3\n");
}
