//! Hostile process.json / config.json values are refused with a message naming the problem,
//! before anything is created.

use keelson_tests::{Bundle, CgroupScope, Runtime, spec, unique};
use serde_json::{Value, json};
use std::fs;

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn refused(rt: &Runtime, edit: impl FnOnce(&mut Value), words: &[&str]) {
    let sc = CgroupScope::new("hostile").expect("scope");
    let mut b = Bundle::busybox("hostile").expect("bundle");
    b.set_cgroups_path(sc.cgroups_path());
    b.set_args(&["true"]);
    edit(b.config_mut());
    b.save().expect("save");
    let id = unique::container_id("hostile");
    let _guard = rt.guard(&id);
    let out = rt.create(&b, &id).expect("create");
    assert_eq!(out.code, 1, "{out}");
    assert!(
        words.iter().any(|w| out.stderr.contains(w)),
        "none of {words:?} in: {out}"
    );
    assert!(
        rt.root_entries().is_empty(),
        "state left: {:?}",
        rt.root_entries()
    );
    assert!(
        sc.existing_dirs().is_empty(),
        "cgroups left: {:?}",
        sc.existing_dirs()
    );
}

#[test]
fn negative_rlimits() {
    refused(
        &keelson(),
        |c| {
            spec::object_at(c, &["process"]).insert(
                "rlimits".into(),
                json!([{"type": "RLIMIT_NOFILE", "hard": -1, "soft": -1}]),
            );
        },
        &["invalid value: integer `-1`"],
    );
}

#[test]
fn unknown_capability_names() {
    refused(
        &keelson(),
        |c| {
            spec::object_at(c, &["process", "capabilities"])
                .insert("bounding".into(), json!(["CAP_CHOWN", "CAP_TOTALLY_BOGUS"]));
        },
        &["CAP_TOTALLY_BOGUS"],
    );
}

#[test]
fn a_seccomp_rule_for_an_unknown_arch() {
    refused(
        &keelson(),
        |c| {
            spec::object_at(c, &["linux"]).insert(
                "seccomp".into(),
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]}),
            );
        },
        &["SCMP_ARCH_PDP11"],
    );
}

#[test]
fn an_8_mib_args_list() {
    let big: Vec<String> = (0..1024).map(|_| "x".repeat(8 * 1024)).collect();
    refused(
        &keelson(),
        move |c| {
            spec::object_at(c, &["process"]).insert("args".into(), json!(big));
        },
        &["ARG_MAX"],
    );
}

#[test]
fn a_hostile_process_json_for_exec() {
    let rt = keelson();
    let sc = CgroupScope::new("hostile-exec").expect("scope");
    let mut b = Bundle::busybox("hostile-exec").expect("bundle");
    b.set_args(&["sleep", "1000"]);
    b.set_cgroups_path(sc.cgroups_path());
    b.save().expect("save");
    let id = unique::container_id("hostile-exec");
    let mut guard = rt.guard(&id);
    assert!(rt.run_detached(&b, &id).expect("run").success());
    guard.record_from_state();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("p.json");
    let big: Vec<String> = (0..1024).map(|_| "y".repeat(8 * 1024)).collect();
    for (process, words) in [
        (
            json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "rlimits": [{"type": "RLIMIT_CPU", "hard": -5, "soft": 0}]}),
            "invalid value",
        ),
        (
            json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"effective": ["CAP_NOPE"]}}),
            "CAP_NOPE",
        ),
        (
            json!({"args": big, "cwd": "/", "user": {"uid": 0, "gid": 0}}),
            "ARG_MAX",
        ),
        (
            json!({"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
            "args must not be empty",
        ),
        (
            json!({"args": ["true"], "cwd": "relative", "user": {"uid": 0, "gid": 0}}),
            "absolute",
        ),
    ] {
        fs::write(&path, process.to_string()).expect("write");
        let out = rt
            .cmd([
                "exec",
                "--process",
                path.to_str().expect("utf8"),
                id.as_str(),
            ])
            .expect("exec");
        assert_eq!(out.code, 255, "{out}");
        assert!(out.stderr.contains(words), "{words}: {out}");
    }
    // The container is untouched.
    assert_eq!(rt.state(&id).expect("state")["status"], "running");
    let out = rt.cmd(["ps", "--format", "json", id.as_str()]).expect("ps");
    let pids: Vec<i64> = serde_json::from_str(&out.stdout).expect("ps json");
    assert_eq!(pids.len(), 1, "a hostile exec left a process: {pids:?}");
}
