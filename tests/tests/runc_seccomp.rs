//! linux.seccomp: syscalls denied with the configured errno, killed, allowed by argument;
//! installed with and without no_new_privs; applied to exec'd processes; bad profiles refused.

use keelson_tests::probe::probe;
use keelson_tests::{Bundle, CgroupScope, Runtime, spec, unique};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn with_profile(hint: &str, profile: Value) -> Bundle {
    let mut b = Bundle::busybox(hint).expect("bundle");
    spec::object_at(b.config_mut(), &["linux"]).insert("seccomp".into(), profile);
    b
}

fn deny_mkdir(errno: u32) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno}
        ]
    })
}

#[test]
fn a_denied_syscall_fails_with_the_configured_errno() {
    let rt = keelson();
    let mut b = with_profile("sc-errno", deny_mkdir(13));
    let out = probe(
        &rt,
        &mut b,
        "mkdir /dev/shm/x; echo mkdir=$?; ls / >/dev/null && echo ls=ok",
    )
    .expect("probe");
    assert!(out.stdout.contains("mkdir=1"), "{out}");
    assert!(
        out.stderr.contains("Permission denied"),
        "errno 13 expected: {out}"
    );
    assert!(out.stdout.contains("ls=ok"), "{out}");
    // Another errno gives another message.
    let mut b = with_profile("sc-errno2", deny_mkdir(95));
    let out = probe(&rt, &mut b, "mkdir /dev/shm/x").expect("probe");
    assert!(
        out.stderr.contains("Operation not supported"),
        "errno 95 expected: {out}"
    );
}

#[test]
fn kill_process_action_kills_with_sigsys() {
    let rt = keelson();
    let mut b = with_profile(
        "sc-kill",
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}]}),
    );
    let out = probe(&rt, &mut b, "uname").expect("probe");
    assert_eq!(out.code, 128 + 31, "SIGSYS expected: {out}");
}

#[test]
fn the_profile_is_installed_without_no_new_privileges_too() {
    let rt = keelson();
    let mut b = with_profile("sc-nonnp", deny_mkdir(13));
    spec::object_at(b.config_mut(), &["process"]).insert("noNewPrivileges".into(), json!(false));
    let out = probe(
        &rt,
        &mut b,
        "grep NoNewPrivs /proc/self/status; mkdir /dev/shm/x",
    )
    .expect("probe");
    assert!(out.stdout.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.stderr.contains("Permission denied"), "{out}");
}

#[test]
fn arguments_decide() {
    let rt = keelson();
    // Only fchmodat with mode 0700 is refused.
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["fchmodat", "chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                      "args": [{"index": 2, "value": 448, "op": "SCMP_CMP_EQ"}]},
                     {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                      "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]}]
    });
    let mut b = with_profile("sc-args", profile);
    let out = probe(
        &rt,
        &mut b,
        "touch /dev/shm/f; chmod 0644 /dev/shm/f && echo c644=ok; chmod 0700 /dev/shm/f || echo c700=denied",
    )
    .expect("probe");
    assert!(out.stdout.contains("c644=ok"), "{out}");
    assert!(out.stdout.contains("c700=denied"), "{out}");
}

#[test]
fn exec_d_processes_get_the_profile() {
    let rt = keelson();
    let sc = CgroupScope::new("sc-exec").expect("scope");
    let mut b = with_profile("sc-exec", deny_mkdir(13));
    b.set_args(&["sleep", "1000"]);
    b.set_cgroups_path(sc.cgroups_path());
    b.save().expect("save");
    let id = unique::container_id("sc-exec");
    let mut guard = rt.guard(&id);
    assert!(rt.run_detached(&b, &id).expect("run").success());
    guard.record_from_state();
    let out = rt
        .cmd(["exec", id.as_str(), "mkdir", "/dev/shm/y"])
        .expect("exec");
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("Permission denied"), "{out}");
}

#[test]
fn a_notify_profile_is_refused_as_unimplemented() {
    let rt = keelson();
    let mut b = with_profile("sc-notify", json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    let out = probe(&rt, &mut b, "true").expect("probe");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("unimplemented"), "{out}");
    let mut b = with_profile("sc-bad", json!({"defaultAction": "SCMP_ACT_BOGUS"}));
    let out = probe(&rt, &mut b, "true").expect("probe");
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("SCMP_ACT_BOGUS"), "{out}");
}
