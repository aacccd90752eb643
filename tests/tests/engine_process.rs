//! What the container's process sees of itself: capabilities, no_new_privs, user and groups,
//! umask, rlimits, hostname, environment, oom_score_adj, exit codes, file descriptors, and the
//! protection of the runtime binary.

use std::fs;
use std::os::unix::fs::MetadataExt;

use keelson_tests::caps::{self, CapSets};
use keelson_tests::probe::{probe, value_of};
use keelson_tests::{Bundle, CgroupScope, Runtime, spec, unique};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn bundle(hint: &str) -> Bundle {
    Bundle::busybox(hint).expect("busybox bundle")
}

fn set_process(bundle: &mut Bundle, key: &str, value: Value) {
    spec::object_at(bundle.config_mut(), &["process"]).insert(key.into(), value);
}

fn run_ok(rt: &Runtime, bundle: &mut Bundle, script: &str) -> String {
    let out = probe(rt, bundle, script).expect("probe runs");
    assert!(out.success(), "probe failed: {out}");
    out.stdout
}

fn cap_sets(stdout: &str) -> CapSets {
    caps::parse_status(stdout).unwrap_or_else(|| panic!("no Cap* lines in:\n{stdout}"))
}

fn mask(names: &[&str]) -> u64 {
    caps::mask(names).expect("known capability names")
}

fn show(mask: u64) -> String {
    format!("{mask:016x} {:?}", caps::names(mask))
}

const BOUNDING: [&str; 7] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_AUDIT_WRITE",
];
const PERMITTED: [&str; 3] = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
const INHERITABLE: [&str; 2] = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
const AMBIENT: [&str; 1] = ["CAP_NET_BIND_SERVICE"];

fn set_caps(bundle: &mut Bundle) {
    set_process(
        bundle,
        "capabilities",
        json!({
            "bounding": BOUNDING,
            "effective": PERMITTED,
            "permitted": PERMITTED,
            "inheritable": INHERITABLE,
            "ambient": AMBIENT,
        }),
    );
}

#[test]
fn default_caps_are_runc_spec_caps() {
    let rt = keelson();
    let mut b = bundle("caps-default");
    let sets = cap_sets(&run_ok(&rt, &mut b, "grep Cap /proc/self/status"));
    let default = mask(&spec::DEFAULT_CAPS);
    assert_eq!(sets.bounding, default, "CapBnd {}", show(sets.bounding));
    assert_eq!(sets.effective, default, "CapEff {}", show(sets.effective));
    assert_eq!(sets.permitted, default, "CapPrm {}", show(sets.permitted));
    assert_eq!(sets.inheritable, 0, "CapInh {}", show(sets.inheritable));
    // The default ambient set cannot be raised: the inheritable set is empty. Like runc, the
    // runtime skips it silently.
    assert_eq!(sets.ambient, 0, "CapAmb {}", show(sets.ambient));
}

#[test]
fn caps_of_root_follow_bounding_inheritable_and_permitted_sets() {
    let rt = keelson();
    let mut b = bundle("caps-root");
    set_caps(&mut b);
    for no_new_privileges in [true, false] {
        set_process(&mut b, "noNewPrivileges", json!(no_new_privileges));
        let sets = cap_sets(&run_ok(&rt, &mut b, "grep Cap /proc/self/status"));
        assert_eq!(
            sets.bounding,
            mask(&BOUNDING),
            "CapBnd {}",
            show(sets.bounding)
        );
        assert_eq!(
            sets.inheritable,
            mask(&INHERITABLE),
            "CapInh {}",
            show(sets.inheritable)
        );
        // For uid 0, execve gives permitted = inheritable | bounding, capped by the permitted
        // set held before execve when no_new_privs is set; effective = permitted. The ambient
        // set survives (it is within inheritable and permitted).
        let mut expected = mask(&BOUNDING) | mask(&INHERITABLE);
        if no_new_privileges {
            expected &= mask(&PERMITTED);
        }
        let what = format!("noNewPrivileges={no_new_privileges}");
        assert_eq!(
            sets.permitted,
            expected,
            "{what}: CapPrm {}",
            show(sets.permitted)
        );
        assert_eq!(
            sets.effective,
            expected,
            "{what}: CapEff {}",
            show(sets.effective)
        );
        assert_eq!(
            sets.ambient,
            mask(&AMBIENT),
            "{what}: CapAmb {}",
            show(sets.ambient)
        );
    }
}

#[test]
fn caps_of_non_root_user_are_the_ambient_set() {
    let rt = keelson();
    let mut b = bundle("caps-user");
    set_caps(&mut b);
    set_process(&mut b, "user", json!({"uid": 1000, "gid": 1000}));
    let sets = cap_sets(&run_ok(&rt, &mut b, "grep Cap /proc/self/status"));
    assert_eq!(
        sets.bounding,
        mask(&BOUNDING),
        "CapBnd {}",
        show(sets.bounding)
    );
    assert_eq!(
        sets.inheritable,
        mask(&INHERITABLE),
        "CapInh {}",
        show(sets.inheritable)
    );
    assert_eq!(
        sets.ambient,
        mask(&AMBIENT),
        "CapAmb {}",
        show(sets.ambient)
    );
    // A non-root execve of a file without file caps keeps exactly the ambient set.
    assert_eq!(
        sets.permitted,
        mask(&AMBIENT),
        "CapPrm {}",
        show(sets.permitted)
    );
    assert_eq!(
        sets.effective,
        mask(&AMBIENT),
        "CapEff {}",
        show(sets.effective)
    );
}

#[test]
fn no_new_privileges_follows_config() {
    let rt = keelson();
    let mut b = bundle("nnp");
    let on = run_ok(&rt, &mut b, "grep NoNewPrivs /proc/self/status");
    assert_eq!(caps::status_field(&on, "NoNewPrivs"), Some("1"), "{on}");
    set_process(&mut b, "noNewPrivileges", json!(false));
    let off = run_ok(&rt, &mut b, "grep NoNewPrivs /proc/self/status");
    assert_eq!(caps::status_field(&off, "NoNewPrivs"), Some("0"), "{off}");
}

#[test]
fn user_group_and_additional_gids() {
    let rt = keelson();
    let mut b = bundle("user");
    set_process(
        &mut b,
        "user",
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1001]}),
    );
    let out = run_ok(
        &rt,
        &mut b,
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status; echo id=$(id)",
    );
    assert_eq!(
        caps::status_field(&out, "Uid"),
        Some("1000\t1000\t1000\t1000"),
        "{out}"
    );
    assert_eq!(
        caps::status_field(&out, "Gid"),
        Some("1000\t1000\t1000\t1000"),
        "{out}"
    );
    assert_eq!(caps::status_field(&out, "Groups"), Some("1001"), "{out}");
    let id = value_of(&out, "id").expect("id line");
    assert!(id.starts_with("uid=1000(kt) gid=1000(kt)"), "{id}");
    assert!(id.contains("1001(ktextra)"), "{id}");
}

#[test]
fn root_user_has_no_supplementary_groups_by_default() {
    let rt = keelson();
    let mut b = bundle("root-groups");
    let out = run_ok(
        &rt,
        &mut b,
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status",
    );
    assert_eq!(caps::status_field(&out, "Uid"), Some("0\t0\t0\t0"), "{out}");
    assert_eq!(caps::status_field(&out, "Groups"), Some(""), "{out}");
}

#[test]
fn umask_default_and_configured() {
    let rt = keelson();
    let mut b = bundle("umask");
    assert_eq!(run_ok(&rt, &mut b, "umask").trim(), "0022");
    set_process(&mut b, "user", json!({"uid": 0, "gid": 0, "umask": 0o027}));
    assert_eq!(run_ok(&rt, &mut b, "umask").trim(), "0027");
}

#[test]
fn rlimits_are_applied() {
    let rt = keelson();
    let mut b = bundle("rlimits");
    set_process(
        &mut b,
        "rlimits",
        json!([
            {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
            {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
            {"type": "RLIMIT_CORE", "soft": 4096, "hard": 8192},
            {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 8388608}
        ]),
    );
    let out = run_ok(
        &rt,
        &mut b,
        "echo n=$(ulimit -n); echo Hn=$(ulimit -Hn); echo u=$(ulimit -u); echo Hu=$(ulimit -Hu); \
         grep -E '^Max (core file size|stack size)' /proc/self/limits",
    );
    assert_eq!(value_of(&out, "n").as_deref(), Some("256"), "{out}");
    assert_eq!(value_of(&out, "Hn").as_deref(), Some("512"), "{out}");
    assert_eq!(value_of(&out, "u").as_deref(), Some("300"), "{out}");
    assert_eq!(value_of(&out, "Hu").as_deref(), Some("400"), "{out}");
    let limits = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(limits("Max core file size")[..2], ["4096", "8192"], "{out}");
    assert_eq!(
        limits("Max stack size")[..2],
        ["4194304", "8388608"],
        "{out}"
    );
}

#[test]
fn hostname_is_set_in_the_uts_namespace_only() {
    let rt = keelson();
    let mut b = bundle("uts");
    let host_before = fs::read_to_string("/proc/sys/kernel/hostname").expect("host hostname");
    b.config_mut()["hostname"] = json!("kt-host");
    let out = run_ok(&rt, &mut b, "echo host=$(hostname)");
    assert_eq!(value_of(&out, "host").as_deref(), Some("kt-host"), "{out}");
    let host_after = fs::read_to_string("/proc/sys/kernel/hostname").expect("host hostname");
    assert_eq!(host_before, host_after, "the host's hostname changed");
}

/// keelson-specific: `domainname` is OCI runtime-spec 1.1; runc 1.1 ignores it.
#[test]
fn domainname_is_set() {
    let rt = keelson();
    let mut b = bundle("domain");
    let host_before = fs::read_to_string("/proc/sys/kernel/domainname").expect("host domainname");
    b.config_mut()["domainname"] = json!("kt.example");
    let out = run_ok(
        &rt,
        &mut b,
        "echo domain=$(cat /proc/sys/kernel/domainname)",
    );
    assert_eq!(
        value_of(&out, "domain").as_deref(),
        Some("kt.example"),
        "{out}"
    );
    let host_after = fs::read_to_string("/proc/sys/kernel/domainname").expect("host domainname");
    assert_eq!(host_before, host_after, "the host's domainname changed");
}

#[test]
fn env_cwd_and_home() {
    let rt = keelson();
    let mut b = bundle("env");
    set_process(
        &mut b,
        "env",
        json!(["PATH=/bin", "KT_VAR=hello world", "KT_EMPTY="]),
    );
    set_process(&mut b, "cwd", json!("/tmp"));
    let out = run_ok(
        &rt,
        &mut b,
        "echo pwd=$(pwd); echo var=$KT_VAR; echo empty=[$KT_EMPTY]; echo home=$HOME; \
         echo cwdlink=$(readlink /proc/self/cwd)",
    );
    assert_eq!(value_of(&out, "pwd").as_deref(), Some("/tmp"), "{out}");
    assert_eq!(value_of(&out, "cwdlink").as_deref(), Some("/tmp"), "{out}");
    assert_eq!(
        value_of(&out, "var").as_deref(),
        Some("hello world"),
        "{out}"
    );
    assert_eq!(value_of(&out, "empty").as_deref(), Some("[]"), "{out}");
    // Like runc: HOME comes from /etc/passwd when the config does not set it.
    assert_eq!(value_of(&out, "home").as_deref(), Some("/root"), "{out}");
}

#[test]
fn positive_oom_score_adj_is_exact() {
    let rt = keelson();
    let mut b = bundle("oomadj");
    set_process(&mut b, "oomScoreAdj", json!(500));
    assert_eq!(
        run_ok(&rt, &mut b, "cat /proc/self/oom_score_adj").trim(),
        "500"
    );
}

/// keelson-specific: this machine's root lacks CAP_SYS_RESOURCE, so lowering oom_score_adj
/// gets EPERM. keelson clamps instead of failing (runc 1.1 fails the container here).
#[test]
fn negative_oom_score_adj_is_clamped_not_fatal() {
    let rt = keelson();
    let mut b = bundle("oomadj-neg");
    set_process(&mut b, "oomScoreAdj", json!(-500));
    let out = run_ok(&rt, &mut b, "cat /proc/self/oom_score_adj");
    let value: i32 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {out}"));
    assert!((-500..=0).contains(&value), "oom_score_adj {value}");
}

#[test]
fn run_returns_the_exit_code() {
    let rt = keelson();
    let mut b = bundle("exit");
    for code in [0, 1, 42, 255] {
        let out = probe(&rt, &mut b, &format!("exit {code}")).expect("probe");
        assert_eq!(out.code, code, "{out}");
    }
}

#[test]
fn no_file_descriptors_leak_into_the_container() {
    let rt = keelson();
    let mut b = bundle("fds");
    // `ls` runs as a plain command (no command substitution, which would open a pipe in the
    // shell), so /proc/1/fd shows exactly what the runtime handed over to the init process.
    let out = run_ok(
        &rt,
        &mut b,
        "echo '[init]'; ls /proc/1/fd; echo '[self]'; ls /proc/self/fd; echo '[end]'; \
         echo cwd=$(readlink /proc/self/cwd); echo root=$(readlink /proc/self/root)",
    );
    let section = |name: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| *l != format!("[{name}]"))
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .map(|l| l.trim().to_string())
            .collect()
    };
    assert_eq!(section("init"), ["0", "1", "2"], "{out}");
    // ls opens one directory itself (fd 3).
    assert_eq!(section("self"), ["0", "1", "2", "3"], "{out}");
    assert_eq!(value_of(&out, "cwd").as_deref(), Some("/"), "{out}");
    assert_eq!(value_of(&out, "root").as_deref(), Some("/"), "{out}");
}

#[test]
fn own_exe_cannot_be_opened_for_writing() {
    let rt = keelson();
    let mut b = bundle("exe-self");
    // The container's pid 1 runs the container's program, never the runtime (no runtime code
    // stays behind in the container once it runs); and that program cannot be rewritten.
    let out = run_ok(
        &rt,
        &mut b,
        "echo exe=$(readlink /proc/1/exe); \
         if echo x >> /proc/1/exe 2>/dev/null; then echo result=WRITABLE; else echo result=DENIED; fi",
    );
    assert_eq!(
        value_of(&out, "exe").as_deref(),
        Some("/bin/busybox"),
        "{out}"
    );
    assert_eq!(value_of(&out, "result").as_deref(), Some("DENIED"), "{out}");
}

fn file_fingerprint(path: &std::path::Path) -> (u64, i64, i64, Vec<u8>) {
    let meta = fs::metadata(path).expect("runtime binary metadata");
    let data = fs::read(path).expect("read runtime binary");
    (meta.len(), meta.mtime(), meta.mtime_nsec(), data)
}

/// Between `create` and `start` the container's init is the runtime itself. A second container
/// that joins the first one's pid namespace sees that process as its pid 1 and must not be able
/// to open `/proc/1/exe` for writing (CVE-2019-5736), and the runtime binary on the host must
/// stay unchanged.
#[test]
fn runtime_binary_is_protected_from_a_neighbour_container() {
    let rt = keelson();
    let before = file_fingerprint(&rt.bin);
    let scope = CgroupScope::new("exe-victim").expect("scope");
    let mut victim = bundle("exe-victim");
    victim.set_args(&["sleep", "1000"]);
    victim.set_cgroups_path(scope.cgroups_path());
    victim.save().expect("save");
    let id = unique::container_id("exe-victim");
    let mut guard = rt.guard(&id);
    let created = rt.create(&victim, &id).expect("create");
    assert!(created.success(), "{created}");
    guard.record_from_state();
    let pid = rt.state(&id).expect("state")["pid"].as_i64().expect("pid");

    let mut attacker = bundle("exe-attacker");
    let namespaces = json!([
        {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
        {"type": "network"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"}
    ]);
    spec::linux_mut(attacker.config_mut()).insert("namespaces".into(), namespaces);
    let out = probe(
        &rt,
        &mut attacker,
        "if echo x >> /proc/1/exe 2>/dev/null; then echo result=WRITABLE; else echo result=DENIED; fi; \
         if (true > /proc/1/exe) 2>/dev/null; then echo trunc=WRITABLE; else echo trunc=DENIED; fi",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(
        value_of(&out.stdout, "result").as_deref(),
        Some("DENIED"),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "trunc").as_deref(),
        Some("DENIED"),
        "{out}"
    );
    assert_eq!(rt.status(&id).expect("victim state"), "created");
    let after = file_fingerprint(&rt.bin);
    assert!(
        before == after,
        "the runtime binary {} changed",
        rt.bin.display()
    );
}
