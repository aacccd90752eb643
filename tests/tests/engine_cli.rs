//! The runc-compatible CLI: state JSON and lifecycle, list, kill, delete, spec, run, pid files,
//! events, global flags, and runc's error strings and exit codes.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use keelson_tests::procs::ProcessId;
use keelson_tests::{Bundle, CgroupScope, ContainerGuard, Runtime, spec, unique};
use serde_json::{Value, json};

const STATE_KEYS: [&str; 8] = [
    "ociVersion",
    "id",
    "pid",
    "status",
    "bundle",
    "rootfs",
    "created",
    "owner",
];

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

/// A bundle running `args`, in its own cgroup scope.
fn bundle_with(hint: &str, args: &[&str]) -> (CgroupScope, Bundle) {
    let scope = CgroupScope::new(hint).expect("cgroup scope");
    let mut bundle = Bundle::busybox(hint).expect("busybox bundle");
    bundle.set_args(args);
    bundle.set_cgroups_path(scope.cgroups_path());
    bundle.save().expect("save config");
    (scope, bundle)
}

fn create<'a>(rt: &'a Runtime, bundle: &Bundle, hint: &str) -> ContainerGuard<'a> {
    let id = unique::container_id(hint);
    let mut guard = rt.guard(&id);
    let out = rt.create(bundle, &id).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    guard
}

fn create_and_start<'a>(rt: &'a Runtime, bundle: &Bundle, hint: &str) -> ContainerGuard<'a> {
    let guard = create(rt, bundle, hint);
    let out = rt.start(guard.id()).expect("start");
    assert!(out.success(), "{out}");
    guard
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn state_keys() -> BTreeSet<String> {
    STATE_KEYS.iter().map(|k| k.to_string()).collect()
}

fn pid_of(state: &Value) -> i32 {
    state["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid in {state}"))
}

/// Exit code 1 and `message` in stderr, verbatim or with its quotes escaped as in runc's
/// `level=error msg="..."` text log lines.
fn assert_fails_with(out: &keelson_tests::CmdOutput, message: &str) {
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr_mentions(message),
        "expected {message:?} in stderr: {out}"
    );
}

/// RFC 3339 with a `T`, seconds and a zone (`Z` or `+hh:mm`).
fn looks_like_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text[19..].contains('+') || text[19..].contains('-'))
}

#[test]
fn state_through_the_lifecycle() {
    let rt = keelson();
    let (_scope, b) = bundle_with("lifecycle", &["sleep", "1000"]);
    let guard = create(&rt, &b, "lifecycle");
    let id = guard.id().to_string();

    let created = rt.state(&id).expect("state after create");
    assert_eq!(keys(&created), state_keys(), "{created}");
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["status"], "created");
    assert_eq!(created["bundle"], b.path().to_str().expect("utf-8 path"));
    assert_eq!(created["rootfs"], b.rootfs().to_str().expect("utf-8 path"));
    assert!(
        created["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{created}"
    );
    assert!(created["owner"].is_string(), "{created}");
    let created_at = created["created"].as_str().expect("created is a string");
    assert!(looks_like_rfc3339(created_at), "{created_at}");
    let pid = pid_of(&created);
    assert!(
        pid > 0 && Path::new(&format!("/proc/{pid}")).exists(),
        "{created}"
    );

    let out = rt.start(&id).expect("start");
    assert!(out.success(), "{out}");
    let running = rt.state(&id).expect("state after start");
    assert_eq!(keys(&running), state_keys(), "{running}");
    assert_eq!(running["status"], "running");
    assert_eq!(pid_of(&running), pid, "the init pid changed on start");
    assert_eq!(running["created"], created["created"]);

    let out = rt.kill(&id, "KILL").expect("kill");
    assert!(out.success(), "{out}");
    let stopped = rt
        .wait_status(&id, "stopped", Duration::from_secs(10))
        .expect("stops");
    assert_eq!(keys(&stopped), state_keys(), "{stopped}");
    assert_eq!(pid_of(&stopped), 0, "{stopped}");

    let out = rt.delete(&id).expect("delete");
    assert!(out.success(), "{out}");
    assert_fails_with(
        &rt.cmd(["state", id.as_str()]).expect("state"),
        "container does not exist",
    );
    assert_eq!(
        rt.root_entries(),
        Vec::<String>::new(),
        "state left under --root"
    );
}

#[test]
fn state_carries_annotations() {
    let rt = keelson();
    let (_scope, mut b) = bundle_with("annotations", &["sleep", "1000"]);
    b.config_mut()["annotations"] = json!({"org.example.key": "value", "other": "x"});
    b.save().expect("save");
    let guard = create(&rt, &b, "annotations");
    let state = rt.state(guard.id()).expect("state");
    let mut expected = state_keys();
    expected.insert("annotations".into());
    assert_eq!(keys(&state), expected, "{state}");
    assert_eq!(
        state["annotations"],
        json!({"org.example.key": "value", "other": "x"})
    );
}

#[test]
fn list_table_and_json() {
    let rt = keelson();
    let out = rt.cmd(["list"]).expect("list");
    assert!(out.success(), "{out}");
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
        "{out}"
    );
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
    assert_eq!(rt.list_json().expect("empty list"), json!([]));

    let (_s1, b1) = bundle_with("list-a", &["sleep", "1000"]);
    let (_s2, b2) = bundle_with("list-b", &["sleep", "1000"]);
    let a = create(&rt, &b1, "list-a");
    let b = create_and_start(&rt, &b2, "list-b");

    let out = rt.cmd(["list"]).expect("list");
    assert!(out.success(), "{out}");
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for (guard, status, bundle) in [(&a, "created", &b1), (&b, "running", &b2)] {
        let row = rows
            .iter()
            .find(|r| r.first() == Some(&guard.id()))
            .unwrap_or_else(|| panic!("no row for {}: {out}", guard.id()));
        assert_eq!(row.len(), 6, "{row:?}");
        assert_eq!(row[2], status, "{row:?}");
        assert_eq!(row[3], bundle.path().to_str().expect("utf-8"), "{row:?}");
        assert!(row[1].parse::<i32>().is_ok_and(|p| p > 0), "{row:?}");
        assert!(looks_like_rfc3339(row[4]), "{row:?}");
    }

    let list = rt.list_json().expect("list json");
    let entries = list.as_array().expect("array");
    assert_eq!(entries.len(), 2, "{list}");
    for entry in entries {
        assert_eq!(keys(entry), state_keys(), "{entry}");
    }
    let statuses: BTreeSet<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or("").to_string(),
                e["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&(a.id().to_string(), "created".to_string())),
        "{list}"
    );
    assert!(
        statuses.contains(&(b.id().to_string(), "running".to_string())),
        "{list}"
    );
}

#[test]
fn kill_accepts_signal_names_and_numbers() {
    let rt = keelson();
    for signal in ["KILL", "SIGKILL", "9"] {
        let (_scope, b) = bundle_with("kill-forms", &["sleep", "1000"]);
        let guard = create_and_start(&rt, &b, "kill-forms");
        let out = rt.kill(guard.id(), signal).expect("kill");
        assert!(out.success(), "kill {signal}: {out}");
        rt.wait_status(guard.id(), "stopped", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("kill {signal}: {e}"));
    }
}

#[test]
fn kill_delivers_a_handled_signal() {
    let rt = keelson();
    for signal in ["TERM", "SIGTERM", "15"] {
        let (_scope, b) = bundle_with(
            "kill-term",
            &[
                "sh",
                "-c",
                "trap 'exit 3' TERM; while true; do sleep 0.05; done",
            ],
        );
        let guard = create_and_start(&rt, &b, "kill-term");
        // Until the shell has installed its trap, TERM to a pid-1 process without a handler
        // is dropped: send it again until the container stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = rt.kill(guard.id(), signal).expect("kill");
            assert!(out.success(), "kill {signal}: {out}");
            if rt
                .wait_status(guard.id(), "stopped", Duration::from_millis(300))
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kill {signal} never stopped the container"
            );
        }
    }
}

#[test]
fn kill_all_reaches_every_process() {
    let rt = keelson();
    let (scope, b) = bundle_with("kill-all", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    let guard = create_and_start(&rt, &b, "kill-all");
    let deadline = Instant::now() + Duration::from_secs(5);
    while scope.pids().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let processes: Vec<ProcessId> = scope.pids().into_iter().filter_map(ProcessId::of).collect();
    assert_eq!(
        processes.len(),
        3,
        "sh and two sleeps expected: {:?}",
        scope.pids()
    );
    let out = rt.kill_all(guard.id(), "KILL").expect("kill --all");
    assert!(out.success(), "{out}");
    rt.wait_status(guard.id(), "stopped", Duration::from_secs(10))
        .expect("stops");
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes.iter().any(ProcessId::is_alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !processes.iter().any(ProcessId::is_alive),
        "processes survived kill --all"
    );
}

#[test]
fn kill_errors() {
    let rt = keelson();
    let (_scope, b) = bundle_with("kill-errors", &["sleep", "1000"]);
    let guard = create_and_start(&rt, &b, "kill-errors");
    let id = guard.id();
    assert_fails_with(&rt.kill(id, "FOO").expect("kill"), "unknown signal \"FOO\"");
    assert_eq!(rt.status(id).expect("status"), "running");
    assert!(rt.kill(id, "KILL").expect("kill").success());
    rt.wait_status(id, "stopped", Duration::from_secs(10))
        .expect("stops");
    assert_fails_with(&rt.kill(id, "KILL").expect("kill"), "container not running");
}

#[test]
fn delete_refuses_a_running_container_without_force() {
    let rt = keelson();
    let (_scope, b) = bundle_with("delete-running", &["sleep", "1000"]);
    let guard = create_and_start(&rt, &b, "delete-running");
    let id = guard.id();
    let process = ProcessId::of(pid_of(&rt.state(id).expect("state"))).expect("init runs");
    assert_fails_with(
        &rt.delete(id).expect("delete"),
        &format!("cannot delete container {id} that is not stopped: running"),
    );
    assert_eq!(rt.status(id).expect("status"), "running");
    let out = rt.delete_force(id).expect("delete --force");
    assert!(out.success(), "{out}");
    assert!(!process.is_alive(), "init survived delete --force");
    assert_fails_with(
        &rt.cmd(["state", id]).expect("state"),
        "container does not exist",
    );
    assert_eq!(rt.root_entries(), Vec::<String>::new());
}

#[test]
fn delete_of_a_created_container() {
    let rt = keelson();
    let (scope, b) = bundle_with("delete-created", &["sleep", "1000"]);
    let guard = create(&rt, &b, "delete-created");
    let process = ProcessId::of(pid_of(&rt.state(guard.id()).expect("state"))).expect("init");
    let out = rt.delete(guard.id()).expect("delete");
    assert!(out.success(), "{out}");
    assert!(!process.is_alive(), "the waiting init survived delete");
    assert_eq!(rt.root_entries(), Vec::<String>::new());
    assert_eq!(scope.existing_dirs(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn delete_force_of_an_unknown_container_succeeds() {
    let rt = keelson();
    let out = rt
        .delete_force("no-such-container")
        .expect("delete --force");
    assert!(out.success(), "{out}");
}

#[test]
fn start_errors() {
    let rt = keelson();
    let (_scope, b) = bundle_with("start-errors", &["sleep", "1000"]);
    let guard = create_and_start(&rt, &b, "start-errors");
    let id = guard.id();
    assert_fails_with(
        &rt.start(id).expect("start"),
        "cannot start an already running container",
    );
    assert!(rt.kill(id, "KILL").expect("kill").success());
    rt.wait_status(id, "stopped", Duration::from_secs(10))
        .expect("stops");
    assert_fails_with(
        &rt.start(id).expect("start"),
        "cannot start a container that has stopped",
    );
}

#[test]
fn spec_writes_the_default_config_once() {
    let rt = keelson();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rt.cmd_in(dir.path(), ["spec"]).expect("spec");
    assert!(out.success(), "{out}");
    let text = fs::read_to_string(dir.path().join("config.json")).expect("config.json written");
    let mut written: Value = serde_json::from_str(&text).expect("config.json is JSON");
    let mut expected = spec::runc_default();
    // The version a runtime writes is its own; everything else is runc's default.
    assert!(
        written["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{text}"
    );
    written["ociVersion"] = json!(null);
    expected["ociVersion"] = json!(null);
    assert_eq!(written, expected, "spec differs from runc's default");

    let again = rt.cmd_in(dir.path(), ["spec"]).expect("spec again");
    assert_fails_with(&again, "File config.json exists. Remove it first");
    assert_eq!(
        fs::read_to_string(dir.path().join("config.json")).expect("still there"),
        text
    );
}

#[test]
fn run_returns_the_container_exit_code_and_output() {
    let rt = keelson();
    let (_scope, b) = bundle_with("run-exit", &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let id = unique::container_id("run-exit");
    let _guard = rt.guard(&id);
    let out = rt.run(&b, &id).expect("run");
    assert_eq!(out.code, 7, "{out}");
    assert_eq!(out.stdout, "out\n", "{out}");
    assert!(out.stderr.contains("err\n"), "{out}");
    // A foreground run removes the container when it ends.
    assert_fails_with(
        &rt.cmd(["state", id.as_str()]).expect("state"),
        "container does not exist",
    );
}

#[test]
fn run_detach_leaves_the_container_running() {
    let rt = keelson();
    let (_scope, b) = bundle_with("run-detach", &["sleep", "1000"]);
    let id = unique::container_id("run-detach");
    let mut guard = rt.guard(&id);
    let started = Instant::now();
    let out = rt.run_detached(&b, &id).expect("run --detach");
    assert!(out.success(), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    guard.record_from_state();
    assert_eq!(rt.status(&id).expect("status"), "running");
}

#[test]
fn pid_file_holds_the_init_pid() {
    let rt = keelson();
    let (_scope, b) = bundle_with("pid-file", &["sleep", "1000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("init.pid");
    let id = unique::container_id("pid-file");
    let mut guard = rt.guard(&id);
    let out = rt
        .create_with(&b, &id, &["--pid-file", pid_file.to_str().expect("utf-8")])
        .expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    let text = fs::read_to_string(&pid_file).expect("pid file written");
    let pid: i32 = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid file holds {text:?}"));
    assert_eq!(pid, pid_of(&rt.state(&id).expect("state")));
}

#[test]
fn events_stats_prints_one_stats_object() {
    let rt = keelson();
    let (_scope, b) = bundle_with("events-stats", &["sleep", "1000"]);
    let guard = create_and_start(&rt, &b, "events-stats");
    let out = rt
        .cmd(["events", "--stats", guard.id()])
        .expect("events --stats");
    assert!(out.success(), "{out}");
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    let event: Value = serde_json::from_str(lines[0]).expect("stats event is JSON");
    assert_eq!(event["type"], "stats", "{event}");
    assert_eq!(event["id"], guard.id(), "{event}");
    let data = &event["data"];
    for key in ["cpu", "memory", "pids"] {
        assert!(data[key].is_object(), "no {key} in {event}");
    }
    assert!(
        data["pids"]["current"].as_u64().is_some_and(|n| n >= 1),
        "{event}"
    );
    assert!(
        data["memory"]["usage"]["usage"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{event}"
    );
}

#[test]
fn log_file_in_json_format() {
    let rt = keelson();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runtime.log");
    let log_arg = log.to_str().expect("utf-8");
    let out = rt
        .cmd([
            "--log",
            log_arg,
            "--log-format",
            "json",
            "state",
            "no-such-container",
        ])
        .expect("state");
    assert_fails_with(&out, "container does not exist");
    let text = fs::read_to_string(&log).expect("log written");
    let entry = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["level"] == "error")
        .unwrap_or_else(|| panic!("no JSON error line in the log: {text}"));
    assert!(
        entry["msg"]
            .as_str()
            .is_some_and(|m| m.contains("container does not exist")),
        "{entry}"
    );
    assert!(entry["time"].is_string(), "{entry}");
}

#[test]
fn debug_flag_is_accepted() {
    let rt = keelson();
    let out = rt.cmd(["--debug", "list"]).expect("list");
    assert!(out.success(), "{out}");
}

#[test]
fn bundle_defaults_to_cwd_and_is_stored_absolute() {
    let rt = keelson();
    let (_scope, b) = bundle_with("bundle-cwd", &["sleep", "1000"]);
    let absolute = b.path().to_str().expect("utf-8").to_string();

    let id = unique::container_id("bundle-cwd");
    let mut guard = rt.guard(&id);
    let out = rt
        .cmd_in(b.path(), ["create", id.as_str()])
        .expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    assert_eq!(rt.state(&id).expect("state")["bundle"], absolute.as_str());

    let parent = b.path().parent().expect("bundle has a parent");
    let name = b
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("bundle name");
    let id2 = unique::container_id("bundle-rel");
    let mut guard2 = rt.guard(&id2);
    let out = rt
        .cmd_in(parent, ["create", "--bundle", name, id2.as_str()])
        .expect("create");
    assert!(out.success(), "{out}");
    guard2.record_from_state();
    assert_eq!(rt.state(&id2).expect("state")["bundle"], absolute.as_str());
}

#[test]
fn no_pivot_is_accepted() {
    let rt = keelson();
    let (_scope, b) = bundle_with("no-pivot", &["sleep", "1000"]);
    let id = unique::container_id("no-pivot");
    let mut guard = rt.guard(&id);
    let out = rt.create_with(&b, &id, &["--no-pivot"]).expect("create");
    assert!(out.success(), "{out}");
    guard.record_from_state();
    let out = rt.start(&id).expect("start");
    assert!(out.success(), "{out}");
    assert_eq!(rt.status(&id).expect("status"), "running");
    let pid = pid_of(&rt.state(&id).expect("state"));
    // The link text is relative to the container's mount namespace; compare identities.
    let root = fs::metadata(format!("/proc/{pid}/root/")).expect("init root");
    let rootfs = fs::metadata(b.rootfs()).expect("rootfs");
    assert_eq!(
        (root.dev(), root.ino()),
        (rootfs.dev(), rootfs.ino()),
        "the init process is not rooted in the rootfs"
    );
}

#[test]
fn create_does_not_run_the_process_until_start() {
    let rt = keelson();
    let (_scope, mut b) = bundle_with(
        "create-waits",
        &["sh", "-c", "echo started > /tmp/marker; sleep 1000"],
    );
    b.config_mut()["root"]["readonly"] = json!(false);
    b.save().expect("save");
    let marker = b.rootfs().join("tmp/marker");
    let guard = create(&rt, &b, "create-waits");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "the process ran before start");
    let out = rt.start(guard.id()).expect("start");
    assert!(out.success(), "{out}");
    // The shell creates the file before `echo` writes to it: wait for the content, not the name.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen = fs::read_to_string(&marker).unwrap_or_default();
        if seen == "started\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen, "started\n",
        "the process did not write its marker after start"
    );
}

/// runc (urfave/cli) exits 1 when a command misses its container id, not clap's 2. (An
/// unknown command exits 3 in runc: not checked.)
#[test]
fn usage_errors_exit_1() {
    let rt = keelson();
    for args in [vec!["state"], vec!["start"], vec!["delete"]] {
        let out = rt.cmd(&args).expect("runs");
        assert_eq!(out.code, 1, "{out}");
        assert!(!out.stderr.trim().is_empty(), "no message: {out}");
    }
}
