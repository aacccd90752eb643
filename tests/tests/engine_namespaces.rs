//! Namespaces: new ones differ from the host's, unlisted ones are shared, a namespace given by
//! path is joined, and `linux.sysctl` lands in the container's namespaces only.

use std::fs;

use keelson_tests::netns::{self, Netns};
use keelson_tests::probe::{probe, value_of};
use keelson_tests::{Bundle, Runtime, spec};
use serde_json::{Value, json};

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

fn bundle(hint: &str) -> Bundle {
    Bundle::busybox(hint).expect("busybox bundle")
}

fn set_namespaces(bundle: &mut Bundle, namespaces: Value) {
    spec::linux_mut(bundle.config_mut()).insert("namespaces".into(), namespaces);
}

const NS_FILES: [&str; 7] = ["pid", "net", "ipc", "uts", "mnt", "cgroup", "user"];

fn ns_script() -> String {
    NS_FILES
        .iter()
        .map(|n| format!("echo {n}=$(readlink /proc/self/ns/{n});"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn inside_links(rt: &Runtime, bundle: &mut Bundle) -> String {
    let out = probe(rt, bundle, &ns_script()).expect("probe");
    assert!(out.success(), "{out}");
    out.stdout
}

fn host_link(file: &str) -> String {
    netns::self_ns_link(file).expect("own namespace link")
}

#[test]
fn new_namespaces_differ_from_the_host() {
    let rt = keelson();
    let mut b = bundle("ns-new");
    set_namespaces(
        &mut b,
        json!([
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
        ]),
    );
    let out = inside_links(&rt, &mut b);
    for file in ["pid", "net", "ipc", "uts", "mnt", "cgroup"] {
        let inside = value_of(&out, file).unwrap_or_else(|| panic!("no {file} line in {out}"));
        assert!(inside.starts_with(&format!("{file}:[")), "{inside}");
        assert_ne!(
            inside,
            host_link(file),
            "{file} namespace is the host's\n{out}"
        );
    }
    // No user namespace was asked for.
    assert_eq!(value_of(&out, "user"), Some(host_link("user")), "{out}");
}

#[test]
fn unlisted_namespaces_are_shared_with_the_host() {
    let rt = keelson();
    let mut b = bundle("ns-shared");
    set_namespaces(&mut b, json!([{"type": "pid"}, {"type": "mount"}]));
    // Setting a hostname needs a private UTS namespace.
    if let Some(config) = b.config_mut().as_object_mut() {
        config.remove("hostname");
    }
    let out = inside_links(&rt, &mut b);
    for file in ["net", "ipc", "uts", "cgroup", "user"] {
        assert_eq!(value_of(&out, file), Some(host_link(file)), "{file}\n{out}");
    }
    for file in ["pid", "mnt"] {
        assert_ne!(value_of(&out, file), Some(host_link(file)), "{file}\n{out}");
    }
}

#[test]
fn network_namespace_given_by_path_is_joined() {
    let rt = keelson();
    let ns = Netns::new("join").expect("netns");
    let inode = ns.inode().expect("netns inode");
    let mut b = bundle("ns-join");
    set_namespaces(
        &mut b,
        json!([
            {"type": "pid"},
            {"type": "network", "path": ns.path()},
            {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ]),
    );
    let out = inside_links(&rt, &mut b);
    assert_eq!(
        value_of(&out, "net"),
        Some(format!("net:[{inode}]")),
        "{out}"
    );
    // The pinned namespace outlives the container.
    assert_eq!(ns.inode().expect("netns still there"), inode);
}

#[test]
fn init_is_pid_one_in_a_new_pid_namespace() {
    let rt = keelson();
    let mut b = bundle("ns-pid");
    let out = probe(
        &rt,
        &mut b,
        "echo pid=$$; echo count=$(ls -d /proc/[0-9]* | wc -l)",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(value_of(&out.stdout, "pid").as_deref(), Some("1"), "{out}");
    // Only sh, the command substitution's subshell, ls and wc exist in the namespace.
    let count: u32 = value_of(&out.stdout, "count")
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out}"));
    assert!(count <= 4, "{out}");
}

#[test]
fn sysctls_apply_inside_the_new_namespaces_only() {
    let rt = keelson();
    let host = |p: &str| fs::read_to_string(p).expect("host sysctl");
    let forward_before = host("/proc/sys/net/ipv4/ip_forward");
    let rmid_before = host("/proc/sys/kernel/shm_rmid_forced");
    let mut b = bundle("sysctl");
    spec::linux_mut(b.config_mut()).insert(
        "sysctl".into(),
        json!({"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"}),
    );
    let out = probe(
        &rt,
        &mut b,
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward); \
         echo rmid=$(cat /proc/sys/kernel/shm_rmid_forced)",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(
        value_of(&out.stdout, "forward").as_deref(),
        Some("1"),
        "{out}"
    );
    assert_eq!(value_of(&out.stdout, "rmid").as_deref(), Some("1"), "{out}");
    assert_eq!(
        host("/proc/sys/net/ipv4/ip_forward"),
        forward_before,
        "host ip_forward changed"
    );
    assert_eq!(
        host("/proc/sys/kernel/shm_rmid_forced"),
        rmid_before,
        "host shm_rmid_forced changed"
    );
}

#[test]
fn sysctl_applies_to_a_joined_network_namespace() {
    let rt = keelson();
    let ns = Netns::new("sysctl").expect("netns");
    let read_in_ns = || {
        let out = ns
            .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // A new netns starts from the host's value on some kernels: flip whatever it is.
    let before = read_in_ns();
    let wanted = if before == "1" { "0" } else { "1" };
    let mut b = bundle("sysctl-join");
    set_namespaces(
        &mut b,
        json!([
            {"type": "pid"},
            {"type": "network", "path": ns.path()},
            {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ]),
    );
    spec::linux_mut(b.config_mut()).insert("sysctl".into(), json!({"net.ipv4.ip_forward": wanted}));
    let out = probe(&rt, &mut b, "cat /proc/sys/net/ipv4/ip_forward").expect("probe");
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), wanted, "{out}");
    assert_eq!(
        read_in_ns(),
        wanted,
        "the sysctl did not land in the joined namespace"
    );
}

#[test]
fn host_sysctl_outside_the_container_namespaces_is_refused() {
    let rt = keelson();
    let mut b = bundle("sysctl-host");
    // Without a network namespace, a net.* sysctl would change the host: runtimes refuse it.
    set_namespaces(
        &mut b,
        json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]),
    );
    let before = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host sysctl");
    let wanted = if before.trim() == "1" { "0" } else { "1" };
    spec::linux_mut(b.config_mut()).insert("sysctl".into(), json!({"net.ipv4.ip_forward": wanted}));
    let out = probe(&rt, &mut b, "true").expect("probe");
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("net.ipv4.ip_forward"), "{out}");
    let after = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host sysctl");
    assert_eq!(before, after, "the host's ip_forward changed");
}

#[test]
fn user_namespace_with_id_mappings() {
    let rt = keelson();
    let mut b = bundle("ns-user");
    set_namespaces(
        &mut b,
        json!([
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "user"}
        ]),
    );
    let linux = spec::linux_mut(b.config_mut());
    linux.insert(
        "uidMappings".into(),
        json!([{"containerID": 0, "hostID": 200000, "size": 65536}]),
    );
    linux.insert(
        "gidMappings".into(),
        json!([{"containerID": 0, "hostID": 300000, "size": 65536}]),
    );
    let script = format!(
        "{} echo uidmap=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'); \
         echo gidmap=$(cat /proc/self/gid_map | tr -s ' ' | sed 's/^ //'); \
         echo ids=$(id -u):$(id -g); echo null=$(head -c0 /dev/null && echo ok)",
        ns_script()
    );
    let out = probe(&rt, &mut b, &script).expect("probe");
    assert!(out.success(), "{out}");
    let v = |k: &str| value_of(&out.stdout, k);
    assert_eq!(v("uidmap").as_deref(), Some("0 200000 65536"), "{out}");
    assert_eq!(v("gidmap").as_deref(), Some("0 300000 65536"), "{out}");
    assert_eq!(v("ids").as_deref(), Some("0:0"), "{out}");
    assert_ne!(v("user"), Some(host_link("user")), "{out}");
    // Devices are bound from the host inside a user namespace and still work.
    assert_eq!(v("null").as_deref(), Some("ok"), "{out}");
}

#[test]
fn user_namespace_without_mappings_is_refused() {
    let rt = keelson();
    let mut b = bundle("ns-user-bad");
    set_namespaces(&mut b, json!([{"type": "mount"}, {"type": "user"}]));
    if let Some(config) = b.config_mut().as_object_mut() {
        config.remove("hostname");
    }
    let out = probe(&rt, &mut b, "true").expect("probe");
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("no uid/gid mappings"), "{out}");
}

#[test]
fn cgroup_namespace_roots_the_container_cgroup() {
    let rt = keelson();
    let mut b = bundle("ns-cgroup");
    set_namespaces(
        &mut b,
        json!([
            {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
            {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
        ]),
    );
    let out = probe(
        &rt,
        &mut b,
        "cut -d: -f3 /proc/self/cgroup | sort -u | sed 's/^/path=/'",
    )
    .expect("probe");
    assert!(out.success(), "{out}");
    // Inside its own cgroup namespace the container sees its cgroup as the root, in every
    // hierarchy (v1 controllers, name=systemd, and the v2 one).
    assert_eq!(out.stdout.trim(), "path=/", "{out}");
}
