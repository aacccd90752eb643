//! keelson against runc 1.1 on the same bundles: what the container sees, the mount table, the
//! devices, the state JSON through the lifecycle, exit codes and error messages must match.
//! Only things that legitimately differ (pids, inodes, times, paths of the runtime's own
//! state) are left out.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use keelson_tests::mountinfo;
use keelson_tests::netns::{NAMESPACE_KINDS, self_ns_link};
use keelson_tests::probe::probe;
use keelson_tests::{Bundle, CgroupScope, CmdOutput, Runtime, spec, unique};
use serde_json::{Value, json};

fn runtimes() -> (Runtime, Runtime) {
    (
        Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)"),
        Runtime::runc().expect("runc"),
    )
}

fn bundle(hint: &str) -> Bundle {
    Bundle::busybox(hint).expect("busybox bundle")
}

/// A readable line diff of two outputs.
fn diff(left_name: &str, left: &str, right_name: &str, right: &str) -> String {
    let l: Vec<&str> = left.lines().collect();
    let r: Vec<&str> = right.lines().collect();
    let mut text = String::new();
    for i in 0..l.len().max(r.len()) {
        let (a, b) = (l.get(i).copied(), r.get(i).copied());
        if a != b {
            let _ = writeln!(
                text,
                "line {}:\n  {left_name}: {a:?}\n  {right_name}: {b:?}",
                i + 1
            );
        }
    }
    text
}

/// Adds `HOST_NS_<kind>=<link>` for the test process's namespaces to the process env, so a
/// script can tell new namespaces from the host's without printing inode numbers.
fn add_host_ns_env(bundle: &mut Bundle) {
    let process = spec::object_at(bundle.config_mut(), &["process"]);
    let mut env: Vec<Value> = process
        .get("env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (_, file) in NAMESPACE_KINDS {
        if let Ok(link) = self_ns_link(file) {
            env.push(json!(format!("HOST_NS_{file}={link}")));
        }
    }
    process.insert("env".into(), Value::Array(env));
}

const CORE_SCRIPT: &str = r#"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Uid|Gid|Groups):' /proc/self/status
echo "id=$(id)"
echo "hostname=$(hostname)"
ulimit -a
echo "umask=$(umask)"
echo "pid=$$"
echo "pwd=$(pwd)"
env | grep -v '^HOST_NS_' | sort
echo "rootopts=$(awk '$5 == "/" {print $6}' /proc/self/mountinfo)"
if echo 1 > /proc/sys/kernel/shm_rmid_forced 2>/dev/null; then echo procsys=writable; else echo procsys=readonly; fi
if touch /rootfs-probe 2>/dev/null; then echo rootfs=writable; rm -f /rootfs-probe; else echo rootfs=readonly; fi
for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/acpi /proc/scsi /sys/firmware; do
  if [ -e "$p" ]; then echo "masked $p bytes=$(cat "$p" 2>/dev/null | wc -c) entries=$(ls -A "$p" 2>/dev/null | wc -l)"; fi
done
for n in pid net ipc uts mnt cgroup user; do
  eval h=\$HOST_NS_$n
  if [ "$(readlink /proc/self/ns/$n)" = "$h" ]; then echo "ns $n=host"; else echo "ns $n=new"; fi
done
echo "oom_score_adj=$(cat /proc/self/oom_score_adj)"
echo "fds=$(ls /proc/self/fd | wc -l)"
ls -a /
exit 3
"#;

fn compare_probe(hint: &str, configure: impl Fn(&mut Bundle), script: &str) {
    let (keelson, runc) = runtimes();
    let mut b = bundle(hint);
    configure(&mut b);
    add_host_ns_env(&mut b);
    let from_runc = probe(&runc, &mut b, script).expect("runc probe");
    let from_keelson = probe(&keelson, &mut b, script).expect("keelson probe");
    if std::env::var_os("KEELSON_TEST_VERBOSE").is_some() {
        eprintln!("runc: {from_runc}\nkeelson: {from_keelson}");
    }
    assert!(
        !from_runc.stdout.is_empty(),
        "runc printed nothing; the probe itself is broken: {from_runc}"
    );
    assert_eq!(
        from_keelson.code, from_runc.code,
        "exit codes differ\nkeelson: {from_keelson}\nrunc: {from_runc}"
    );
    assert!(
        from_keelson.stdout == from_runc.stdout,
        "stdout differs:\n{}\nkeelson stderr: {}\nrunc stderr: {}",
        diff("keelson", &from_keelson.stdout, "runc", &from_runc.stdout),
        from_keelson.stderr,
        from_runc.stderr
    );
}

#[test]
fn default_config_looks_the_same_inside() {
    compare_probe("diff-default", |_| {}, CORE_SCRIPT);
}

#[test]
fn user_rlimits_caps_and_env_look_the_same_inside() {
    compare_probe(
        "diff-user",
        |b| {
            let config = b.config_mut();
            config["hostname"] = json!("kt-diff");
            config["root"]["readonly"] = json!(false);
            let process = spec::object_at(config, &["process"]);
            process.insert(
                "user".into(),
                json!({"uid": 1000, "gid": 1000, "additionalGids": [1001, 65534], "umask": 0o027}),
            );
            process.insert(
                "env".into(),
                json!([
                    "PATH=/bin:/usr/bin",
                    "KT_A=1",
                    "KT_B=two words",
                    "TERM=dumb"
                ]),
            );
            process.insert("cwd".into(), json!("/tmp"));
            process.insert("noNewPrivileges".into(), json!(false));
            process.insert("oomScoreAdj".into(), json!(100));
            process.insert(
                "rlimits".into(),
                json!([
                    {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
                    {"type": "RLIMIT_NPROC", "soft": 1000, "hard": 2000},
                    {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
                ]),
            );
            process.insert(
                "capabilities".into(),
                json!({
                    "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETUID"],
                    "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
                    "inheritable": ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
                    "ambient": ["CAP_NET_BIND_SERVICE"]
                }),
            );
            let linux = spec::linux_mut(config);
            linux.insert("sysctl".into(), json!({"net.ipv4.ip_forward": "1"}));
            linux.insert(
                "namespaces".into(),
                json!([
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
                ]),
            );
        },
        &format!("{CORE_SCRIPT}\necho forward=$(cat /proc/sys/net/ipv4/ip_forward)"),
    );
}

/// Mount points with their per-mount options and filesystem type; masked paths only by
/// name (how a path is masked, e.g. which /dev/null is bound there, is the runtime's choice).
fn normalized_mounts(text: &str) -> Vec<String> {
    let masked: BTreeSet<&str> = spec::DEFAULT_MASKED_PATHS.into_iter().collect();
    let mut lines: Vec<String> = mountinfo::parse(text)
        .into_iter()
        .map(|m| {
            if masked.contains(m.mount_point.as_str()) {
                format!("{} (masked)", m.mount_point)
            } else {
                format!(
                    "{} {} {}",
                    m.mount_point,
                    m.mount_options.join(","),
                    m.fs_type
                )
            }
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn mount_tables_match() {
    let (keelson, runc) = runtimes();
    let mut b = bundle("diff-mounts");
    b.add_mount(json!({
        "destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=1777"]
    }));
    b.add_mount(json!({
        "destination": "/data", "type": "bind", "source": "/etc",
        "options": ["rbind", "ro", "nosuid", "nodev"]
    }));
    let script = "cat /proc/self/mountinfo";
    let from_runc = probe(&runc, &mut b, script).expect("runc probe");
    let from_keelson = probe(&keelson, &mut b, script).expect("keelson probe");
    assert!(from_runc.success(), "{from_runc}");
    assert!(from_keelson.success(), "{from_keelson}");
    let (k, r) = (
        normalized_mounts(&from_keelson.stdout).join("\n"),
        normalized_mounts(&from_runc.stdout).join("\n"),
    );
    assert!(
        k == r,
        "mount tables differ:\n{}\nkeelson:\n{k}\nrunc:\n{r}",
        diff("keelson", &k, "runc", &r)
    );
}

#[test]
fn dev_contents_match() {
    compare_probe(
        "diff-dev",
        |_| {},
        "for f in /dev/* /dev/pts/* /dev/shm /dev/mqueue; do stat -c '%N %F %t:%T %a %u:%g' \"$f\"; done",
    );
}

/// The key set and status of `state` after each lifecycle step, and what a deleted
/// container's `state` says.
fn lifecycle(rt: &Runtime, bundle: &mut Bundle, id: &str) -> Vec<String> {
    let scope = CgroupScope::new("diff-lifecycle").expect("scope");
    bundle.set_args(&["sleep", "1000"]);
    bundle.set_cgroups_path(scope.cgroups_path());
    bundle.save().expect("save");
    let mut steps = Vec::new();
    let mut record = |step: &str, rt: &Runtime| {
        let state = rt
            .state(id)
            .unwrap_or_else(|e| panic!("{} state after {step}: {e}", rt.name()));
        let keys: Vec<&String> = state
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        let pid_zero = state["pid"] == 0;
        steps.push(format!(
            "{step}: keys={keys:?} status={} pid_zero={pid_zero} ociVersion={}",
            state["status"], state["ociVersion"]
        ));
    };
    let _guard = rt.guard(id);
    let out = rt.create(bundle, id).expect("create");
    assert!(out.success(), "{out}");
    record("create", rt);
    assert!(rt.start(id).expect("start").success());
    record("start", rt);
    assert!(rt.kill(id, "KILL").expect("kill").success());
    rt.wait_status(id, "stopped", Duration::from_secs(10))
        .expect("stops");
    record("kill", rt);
    let out = rt.delete(id).expect("delete");
    steps.push(format!("delete: code={}", out.code));
    let out = rt.cmd(["state", id]).expect("state");
    steps.push(format!(
        "state after delete: code={} does_not_exist={}",
        out.code,
        out.stderr_mentions("container does not exist")
    ));
    steps
}

#[test]
fn state_json_matches_through_the_lifecycle() {
    let (keelson, runc) = runtimes();
    let mut b = bundle("diff-state");
    let id = unique::container_id("diff-state");
    let from_runc = lifecycle(&runc, &mut b, &id);
    let from_keelson = lifecycle(&keelson, &mut b, &id);
    let (k, r) = (from_keelson.join("\n"), from_runc.join("\n"));
    assert!(
        k == r,
        "lifecycle differs:\n{}",
        diff("keelson", &k, "runc", &r)
    );
}

/// runc's error message without the `time=... level=error msg="..."` framing and the
/// `runc <command> failed: ` prefix.
fn runc_message(stderr: &str) -> Option<String> {
    let line = stderr.lines().rev().find(|l| l.contains("level=error"))?;
    let start = line.find("msg=\"")? + 5;
    let raw = line[start..].strip_suffix('"')?;
    let msg = raw.replace("\\\"", "\"");
    Some(match msg.split_once(" failed: ") {
        Some((prefix, rest)) if prefix.starts_with("runc ") => rest.to_string(),
        _ => msg,
    })
}

/// Every error runc 1.1 reports for misuse of a container, run against both runtimes with the
/// same container id: exit codes must match and keelson's stderr must carry runc's message.
fn error_scenario(rt: &Runtime, bundle: &mut Bundle, id: &str) -> Vec<(String, CmdOutput)> {
    let scope = CgroupScope::new("diff-errors").expect("scope");
    bundle.set_args(&["sleep", "1000"]);
    bundle.set_cgroups_path(scope.cgroups_path());
    bundle.save().expect("save");
    let _guard = rt.guard(id);
    let mut steps = Vec::new();
    let mut step = |name: &str, out: CmdOutput| steps.push((name.to_string(), out));
    step("state unknown", rt.cmd(["state", id]).expect("runs"));
    step("start unknown", rt.start(id).expect("runs"));
    step("kill unknown", rt.kill(id, "KILL").expect("runs"));
    step("delete unknown", rt.delete(id).expect("runs"));
    step("delete --force unknown", rt.delete_force(id).expect("runs"));
    step("create", rt.create(bundle, id).expect("runs"));
    step("create duplicate", rt.create(bundle, id).expect("runs"));
    step("start", rt.start(id).expect("runs"));
    step("start running", rt.start(id).expect("runs"));
    step("kill FOO", rt.kill(id, "FOO").expect("runs"));
    step("delete running", rt.delete(id).expect("runs"));
    step("kill KILL", rt.kill(id, "KILL").expect("runs"));
    rt.wait_status(id, "stopped", Duration::from_secs(10))
        .expect("stops");
    step("kill stopped", rt.kill(id, "KILL").expect("runs"));
    step("start stopped", rt.start(id).expect("runs"));
    step("delete stopped", rt.delete(id).expect("runs"));
    let dir = tempfile::tempdir().expect("tempdir");
    step("spec", rt.cmd_in(dir.path(), ["spec"]).expect("runs"));
    step(
        "spec exists",
        rt.cmd_in(dir.path(), ["spec"]).expect("runs"),
    );
    steps
}

#[test]
fn exit_codes_and_error_messages_match() {
    let (keelson, runc) = runtimes();
    let mut b = bundle("diff-errors");
    let id = unique::container_id("diff-errors");
    let from_runc = error_scenario(&runc, &mut b, &id);
    let from_keelson = error_scenario(&keelson, &mut b, &id);
    let mut problems = String::new();
    for ((name, r), (_, k)) in from_runc.iter().zip(&from_keelson) {
        if k.code != r.code {
            let _ = writeln!(
                problems,
                "{name}: exit code {} (runc {})\n{k}\n",
                k.code, r.code
            );
            continue;
        }
        if r.code != 0 {
            let message =
                runc_message(&r.stderr).unwrap_or_else(|| panic!("{name}: no runc message in {r}"));
            if !k.stderr_mentions(&message) {
                let _ = writeln!(problems, "{name}: runc says {message:?}, keelson:\n{k}\n");
            }
        }
    }
    assert!(problems.is_empty(), "{problems}");
}

/// Turns a valid bundle into an invalid one.
type Breaker = Box<dyn Fn(&mut Bundle)>;

#[test]
fn invalid_configs_are_refused_by_both() {
    let (keelson, runc) = runtimes();
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "not json",
            Box::new(|b: &mut Bundle| {
                std::fs::write(b.config_path(), "{not json").expect("write");
            }),
        ),
        (
            "unknown namespace",
            Box::new(|b: &mut Bundle| {
                b.config_mut()["linux"]["namespaces"] = json!([{"type": "foo"}, {"type": "mount"}]);
                b.save().expect("save");
            }),
        ),
        (
            "missing root",
            Box::new(|b: &mut Bundle| {
                b.config_mut()["root"]["path"] = json!("no-such-rootfs");
                b.save().expect("save");
            }),
        ),
        (
            "relative cwd",
            Box::new(|b: &mut Bundle| {
                b.config_mut()["process"]["cwd"] = json!("relative");
                b.save().expect("save");
            }),
        ),
        (
            "missing executable",
            Box::new(|b: &mut Bundle| {
                b.set_args(&["/no/such/binary"]);
                b.save().expect("save");
            }),
        ),
        (
            "args not a list",
            Box::new(|b: &mut Bundle| {
                b.config_mut()["process"]["args"] = json!("sh");
                b.save().expect("save");
            }),
        ),
    ];
    let mut problems = String::new();
    for (name, break_it) in &cases {
        let scope = CgroupScope::new("diff-invalid").expect("scope");
        let mut b = bundle("diff-invalid");
        b.set_cgroups_path(scope.cgroups_path());
        b.save().expect("save");
        break_it(&mut b);
        let id = unique::container_id("diff-invalid");
        let r = {
            let _guard = runc.guard(&id);
            runc.create(&b, &id).expect("runc create")
        };
        let k = {
            let _guard = keelson.guard(&id);
            keelson.create(&b, &id).expect("keelson create")
        };
        if r.code != 1 {
            let _ = writeln!(
                problems,
                "{name}: runc exited {} (expected 1)\n{r}\n",
                r.code
            );
        }
        if k.code != r.code {
            let _ = writeln!(
                problems,
                "{name}: keelson exited {}, runc {}\n{k}\n",
                k.code, r.code
            );
        }
        if k.stderr.trim().is_empty() {
            let _ = writeln!(problems, "{name}: keelson said nothing\n");
        }
    }
    assert!(problems.is_empty(), "{problems}");
}
