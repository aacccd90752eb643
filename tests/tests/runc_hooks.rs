//! OCI hooks: order, where they run, their stdin state, env, args and timeout, and which
//! failures abort.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use keelson_tests::{Bundle, CgroupScope, Runtime, spec, unique};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

/// A hook script that appends "<kind> <env KT_HOOK> <arg1> <state json>" to `log`.
fn write_hook(path: &Path, log: &str) {
    let script = format!(
        "#!/bin/sh\nprintf '%s %s %s ' \"$1\" \"$KT_HOOK\" \"$(basename \"$0\")\" >> {log}\ncat >> {log}\necho >> {log}\n"
    );
    fs::write(path, script).expect("write hook");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn hook(path: &Path, kind: &str) -> Value {
    json!({"path": path, "args": ["hookname", kind], "env": [format!("KT_HOOK=env-{kind}")]})
}

#[test]
fn all_hooks_run_in_order_with_the_state_on_stdin() {
    let rt = keelson();
    let sc = CgroupScope::new("hooks").expect("scope");
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("log");
    let host_hook = dir.path().join("hook.sh");
    write_hook(&host_hook, &log.display().to_string());
    let mut b = Bundle::busybox("hooks").expect("bundle");
    // startContainer runs inside the container: its script lives in the rootfs and logs to a
    // bind mount of the same directory.
    write_hook(&b.rootfs().join("hook.sh"), "/hooklog/log");
    b.add_mount(json!({"destination": "/hooklog", "type": "bind", "source": dir.path(), "options": ["rbind", "rw"]}));
    b.set_args(&["sleep", "1000"]);
    b.set_cgroups_path(sc.cgroups_path());
    spec::object_at(b.config_mut(), &[]).insert(
        "hooks".into(),
        json!({
            "prestart": [hook(&host_hook, "prestart")],
            "createRuntime": [hook(&host_hook, "createRuntime")],
            "createContainer": [hook(&host_hook, "createContainer")],
            "startContainer": [hook(Path::new("/hook.sh"), "startContainer")],
            "poststart": [hook(&host_hook, "poststart")],
            "poststop": [hook(&host_hook, "poststop")]
        }),
    );
    spec::object_at(b.config_mut(), &[]).insert("annotations".into(), json!({"kt.example/a": "b"}));
    b.save().expect("save");
    let id = unique::container_id("hooks");
    let mut guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    let pid = rt.state(&id).expect("state")["pid"].as_i64().expect("pid");
    assert!(rt.start(&id).expect("start").success());
    rt.wait_status(&id, "running", Duration::from_secs(5))
        .expect("running");
    // startContainer runs in the init right before exec; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    assert!(rt.delete_force(&id).expect("delete").success());
    let text = fs::read_to_string(&log).expect("hook log");
    let lines: Vec<&str> = text.lines().collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        kinds,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    for l in &lines {
        let mut parts = l.splitn(4, ' ');
        let kind = parts.next().unwrap_or_default();
        assert_eq!(
            parts.next(),
            Some(format!("env-{kind}").as_str()),
            "env of {kind}: {l}"
        );
        assert_eq!(parts.next(), Some("hook.sh"), "{l}");
        let state: Value = serde_json::from_str(parts.next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(state["id"], id.as_str(), "{l}");
        assert_eq!(state["annotations"]["kt.example/a"], "b", "{l}");
        assert!(
            state["bundle"]
                .as_str()
                .is_some_and(|p| Path::new(p) == b.path()),
            "{l}"
        );
        let want = match kind {
            "prestart" | "createRuntime" => "creating",
            "createContainer" | "startContainer" => "created",
            "poststart" => "running",
            _ => "stopped",
        };
        assert_eq!(state["status"], want, "{l}");
        if kind != "poststop" {
            assert_eq!(state["pid"].as_i64(), Some(pid), "{l}");
        }
    }
}

fn create_with_hooks(hooks: Value, hint: &str) -> (Runtime, CgroupScope, Bundle, String) {
    let rt = keelson();
    let sc = CgroupScope::new(hint).expect("scope");
    let mut b = Bundle::busybox(hint).expect("bundle");
    b.set_args(&["sleep", "1000"]);
    b.set_cgroups_path(sc.cgroups_path());
    spec::object_at(b.config_mut(), &[]).insert("hooks".into(), hooks);
    b.save().expect("save");
    (rt, sc, b, unique::container_id(hint))
}

#[test]
fn a_failing_prestart_hook_aborts_create_and_leaves_nothing() {
    let (rt, sc, b, id) = create_with_hooks(
        json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]}),
        "hook-fail",
    );
    let _guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("prestart hook"), "{out}");
    assert!(out.stderr.contains("nope"), "{out}");
    assert!(rt.root_entries().is_empty(), "{:?}", rt.root_entries());
    assert!(
        sc.descendants().is_empty(),
        "cgroups left: {:?}",
        sc.descendants()
    );
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_fails() {
    let (rt, _sc, b, id) = create_with_hooks(
        json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}),
        "hook-timeout",
    );
    let _guard = rt.guard(&id);
    let t = std::time::Instant::now();
    let out = rt.create(&b, &id).expect("create");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("timed out"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the timeout did not stop the hook"
    );
}

#[test]
fn a_failing_poststart_hook_only_warns() {
    let (rt, _sc, b, id) = create_with_hooks(
        json!({"poststart": [{"path": "/bin/false", "args": ["false"]}]}),
        "hook-warn",
    );
    let _guard = rt.guard(&id);
    assert!(rt.create(&b, &id).expect("create").success());
    let out = rt.start(&id).expect("start");
    assert!(out.success(), "{out}");
    assert!(out.stderr.contains("hook failed"), "{out}");
    assert_eq!(rt.state(&id).expect("state")["status"], "running");
}
