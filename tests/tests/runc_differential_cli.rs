//! The CLI commands containerd's shim and podman call, run against runc and keelson side by
//! side: same exit codes and the same JSON shapes.

use keelson_tests::{CgroupScope, Runtime};
use serde_json::Value;
use std::collections::BTreeSet;

fn running<'a>(
    rt: &'a Runtime,
    sc: &CgroupScope,
    hint: &str,
) -> (keelson_tests::runtime::Running<'a>, i64) {
    let r = rt
        .running(&format!("{}/{}", sc.cgroups_path(), rt.name()), hint)
        .expect("running container");
    let pid = r.pid;
    (r, pid)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn exec_ps_pause_resume_update_events_match_runc() {
    let k = Runtime::keelson().expect("keelson");
    let r = Runtime::runc().expect("runc");
    let sc = CgroupScope::new("diff-cli").expect("scope");
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for rt in [&r, &k] {
        let (guard, pid) = running(rt, &sc, &format!("dcli-{}", rt.name()));
        let id = guard.id().to_string();
        let mut record = Vec::new();
        let out = rt
            .cmd(["exec", id.as_str(), "sh", "-c", "echo exec-out; exit 3"])
            .expect("exec");
        record.push(format!("exec code={} out={}", out.code, out.stdout.trim()));
        let out = rt
            .cmd(["exec", "no-such-id", "true"])
            .expect("exec unknown");
        record.push(format!("exec-unknown code={}", out.code));
        let out = rt.cmd(["ps", "--format", "json", id.as_str()]).expect("ps");
        let pids: Vec<i64> = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{}: {e}: {out}", rt.name()));
        record.push(format!(
            "ps code={} has-init={}",
            out.code,
            pids.contains(&pid)
        ));
        for cmd in ["pause", "resume"] {
            let out = rt.cmd([cmd, id.as_str()]).expect(cmd);
            let status = rt.state(&id).expect("state")["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            record.push(format!("{cmd} code={} status={status}", out.code));
        }
        let out = rt
            .cmd(["update", "--pids-limit", "77", id.as_str()])
            .expect("update");
        let limit = sc
            .read("pids", &format!("{}/pids.max", rt.name()))
            .unwrap_or_default();
        record.push(format!("update code={} pids.max={limit}", out.code));
        let out = rt
            .cmd(["events", "--stats", id.as_str()])
            .expect("events --stats");
        let ev: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{}: {e}: {out}", rt.name()));
        record.push(format!(
            "events code={} type={} id-ok={} data-has={:?}",
            out.code,
            ev["type"],
            ev["id"] == id.as_str(),
            ["cpu", "memory", "pids"]
                .iter()
                .filter(|k| ev["data"].get(**k).is_some())
                .collect::<Vec<_>>()
        ));
        seen.push((rt.name().to_string(), record));
    }
    assert_eq!(seen[0].1, seen[1].1, "runc vs keelson:\n{seen:#?}");
}

#[test]
fn features_has_runcs_shape() {
    let k = Runtime::keelson().expect("keelson");
    let r = Runtime::runc().expect("runc");
    let kv: Value =
        serde_json::from_str(&k.cmd(["features"]).expect("features").stdout).expect("keelson json");
    let rv: Value =
        serde_json::from_str(&r.cmd(["features"]).expect("features").stdout).expect("runc json");
    assert_eq!(keys(&kv), keys(&rv));
    for key in [
        "namespaces",
        "capabilities",
        "cgroup",
        "seccomp",
        "apparmor",
        "selinux",
    ] {
        assert!(kv["linux"].get(key).is_some(), "linux.{key} missing");
    }
    assert_eq!(kv["linux"]["namespaces"], rv["linux"]["namespaces"]);
    assert_eq!(kv["hooks"], rv["hooks"]);
}
