//! Tests of the CNI caller against real plugins: the reference plugins of Debian's
//! containernetworking-plugins in /usr/lib/cni (bridge, host-local, loopback) in netns this test
//! creates (here), and small shell-script plugins that record what they were given ([`fake`]).
//! Run as root. Every netns, bridge and temp dir is removed by a Drop guard, also when an
//! assertion fails.

mod fake;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn require_root_and_reference_plugins() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create netns and bridges: run them as root"
    );
    for p in ["bridge", "host-local", "loopback"] {
        let path = Path::new(REFERENCE_PLUGINS).join(p);
        assert!(
            path.is_file(),
            "{} missing: install Debian's containernetworking-plugins",
            path.display()
        );
    }
}

/// A name unique to this process and call, `prefix` + pid + counter in hex.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id())
}

fn ip(args: &[&str]) -> (bool, String) {
    match std::process::Command::new("ip").args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run ip: {e}")),
    }
}

/// A netns made with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = unique("keelson-cni-t");
        let (ok, out) = ip(&["netns", "add", &name]);
        assert!(ok, "ip netns add {name}: {out}");
        Netns { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    fn delete(&self) {
        let _ = ip(&["netns", "del", &self.name]);
    }

    fn addrs(&self) -> String {
        ip(&["-n", &self.name, "-o", "addr", "show"]).1
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A link (the test's bridge) deleted on drop if it exists.
struct LinkGuard(String);

impl LinkGuard {
    fn ports(&self) -> String {
        ip(&["-o", "link", "show", "master", &self.0]).1
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if ip(&["link", "show", &self.0]).0 {
            let _ = ip(&["link", "del", &self.0]);
        }
    }
}

/// Temp dirs for fake plugins, the cache and host-local's data.
struct Dirs {
    _root: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    cache: PathBuf,
    ipam: PathBuf,
    dump: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let sub = |n: &str| {
            let p = root.path().join(n);
            fs::create_dir_all(&p).expect("mkdir");
            p
        };
        Dirs {
            bin: sub("bin"),
            conf: sub("net.d"),
            cache: sub("cache"),
            ipam: sub("ipam"),
            dump: sub("dump"),
            _root: root,
        }
    }

    fn cni(&self, timeout: Duration) -> Cni {
        Cni::new(CniOptions {
            conf_dir: self.conf.clone(),
            bin_dirs: vec![self.bin.clone(), PathBuf::from(REFERENCE_PLUGINS)],
            cache_dir: self.cache.clone(),
            plugin_timeout: timeout,
        })
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.bin.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write plugin");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod plugin");
    }

    /// A plugin that records its stdin and CNI_* env per command, appends "<name> <command>" to
    /// `order`, and on ADD prints `result`.
    fn recorder(&self, name: &str, result: &Value) {
        let d = self.dump.display();
        self.script(
            name,
            &format!(
                "cat > {d}/$CNI_COMMAND-{name}.json\n\
                 env | grep '^CNI_' | sort > {d}/$CNI_COMMAND-{name}.env\n\
                 echo \"{name} $CNI_COMMAND\" >> {d}/order\n\
                 if [ \"$CNI_COMMAND\" = ADD ]; then echo '{result}'; fi"
            ),
        );
    }

    fn dumped(&self, command: &str, name: &str) -> Value {
        let p = self.dump.join(format!("{command}-{name}.json"));
        let b = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_slice(&b).expect("plugin stdin is JSON")
    }

    fn order(&self) -> Vec<String> {
        fs::read_to_string(self.dump.join("order"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The addresses host-local has reserved in network `net`.
    fn reserved(&self, net: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.ipam.join(net)) else {
            return Vec::new();
        };
        let mut ips: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }
}

fn bridge_conflist(
    net: &str,
    bridge: &str,
    subnet: &str,
    ipam_dir: &Path,
    extra: &[Value],
) -> Vec<u8> {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        // No gateway address and no masquerade: nothing on the host changes but the bridge and
        // veths this test creates (isGateway would turn on net.ipv4.ip_forward).
        "isGateway": false,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": ipam_dir,
        }
    })];
    plugins.extend(extra.iter().cloned());
    serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": net, "plugins": plugins}))
        .expect("conflist")
}

fn pod_attachment(id: &str, netns: &str) -> Attachment {
    Attachment::for_pod(
        id,
        netns,
        "eth0",
        PodRef {
            namespace: "default",
            name: "web",
            uid: "0b6f7a4e",
        },
    )
}

#[test]
fn reference_bridge_and_loopback_add_check_del() {
    require_root_and_reference_plugins();
    let dirs = Dirs::new();
    let ns = Netns::new();
    let bridge = LinkGuard(unique("kcn"));
    let net = unique("keelson-add-");
    let cni = dirs.cni(Duration::from_secs(30));

    // Loopback first, as containerd does.
    let lo = cni.loopback().expect("loopback network");
    let lo_att = Attachment::new("sb1", ns.path(), "lo");
    let lo_result = lo.add(&lo_att).expect("loopback ADD");
    assert!(
        lo_result
            .sandbox_ips("lo")
            .contains(&"127.0.0.1".parse().expect("ip")),
        "{lo_result:?}"
    );
    assert!(ns.addrs().contains("127.0.0.1/8"), "{}", ns.addrs());

    let network = cni
        .network_from_conflist(&bridge_conflist(
            &net,
            &bridge.0,
            "10.213.1.0/24",
            &dirs.ipam,
            &[],
        ))
        .expect("bridge network");
    let att = pod_attachment("sb1", &ns.path());
    let result = network.add(&att).expect("bridge ADD");
    let pod_ips = result
        .pod_ips("eth0", IpPreference::Ipv4)
        .expect("a pod IP");
    let ip = pod_ips.primary.to_string();
    assert!(ip.starts_with("10.213.1."), "{ip}");
    assert!(pod_ips.additional.is_empty());
    // Configured inside the netns, on eth0.
    let addrs = ns.addrs();
    assert!(addrs.contains(&format!("eth0    inet {ip}/24")), "{addrs}");
    // host-local reserved it in our data dir; the veth's host end is on our bridge.
    assert_eq!(dirs.reserved(&net), vec![ip.clone()]);
    assert!(!bridge.ports().trim().is_empty(), "no veth on {}", bridge.0);

    // The cache entry, in libcni's shape.
    let cache_file = dirs.cache.join("results").join(format!("{net}-sb1-eth0"));
    let cached: Value =
        serde_json::from_slice(&fs::read(&cache_file).expect("cache file")).expect("cache JSON");
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "sb1");
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["networkName"], net.as_str());
    assert_eq!(cached["netns"], ns.path().as_str());
    assert_eq!(
        cached["cniArgs"],
        json!([
            ["IgnoreUnknown", "1"],
            ["K8S_POD_NAMESPACE", "default"],
            ["K8S_POD_NAME", "web"],
            ["K8S_POD_INFRA_CONTAINER_ID", "sb1"],
            ["K8S_POD_UID", "0b6f7a4e"]
        ])
    );
    use base64::Engine;
    let config = base64::engine::general_purpose::STANDARD
        .decode(cached["config"].as_str().expect("config is base64 text"))
        .expect("base64");
    assert_eq!(config, network.config().bytes);
    assert_eq!(cached["result"], result.raw);
    assert_eq!(cached["result"]["ips"][0]["address"], format!("{ip}/24"));
    assert!(
        dirs.cache
            .join(format!("results/{}-sb1-lo", LOOPBACK_NETWORK))
            .is_file()
    );

    // CHECK passes with the cached result; after DEL it has nothing to check.
    network.check(&att).expect("CHECK");

    network.del(&att).expect("DEL");
    assert!(!cache_file.exists(), "cache entry left after DEL");
    assert!(
        dirs.reserved(&net).is_empty(),
        "IP not released: {:?}",
        dirs.reserved(&net)
    );
    assert!(!ns.addrs().contains(&ip), "{}", ns.addrs());
    assert!(
        bridge.ports().trim().is_empty(),
        "veth left: {}",
        bridge.ports()
    );
    assert!(matches!(
        network.check(&att),
        Err(CniError::NotAdded { .. })
    ));
    // DEL again: idempotent.
    network.del(&att).expect("second DEL");
    lo.del(&lo_att).expect("loopback DEL");
    assert!(cni.cached_attachments(Some("sb1")).is_empty());
}

#[test]
fn del_after_the_netns_is_gone_and_del_of_a_never_added_pod_succeed() {
    require_root_and_reference_plugins();
    let dirs = Dirs::new();
    let ns = Netns::new();
    let bridge = LinkGuard(unique("kcn"));
    let net = unique("keelson-gone-");
    let cni = dirs.cni(Duration::from_secs(30));
    let network = cni
        .network_from_conflist(&bridge_conflist(
            &net,
            &bridge.0,
            "10.213.2.0/24",
            &dirs.ipam,
            &[],
        ))
        .expect("bridge network");

    let att = pod_attachment("sb2", &ns.path());
    network.add(&att).expect("ADD");
    assert_eq!(dirs.reserved(&net).len(), 1);
    assert_eq!(cni.cached_attachments(Some("sb2")).len(), 1);

    // The netns goes away first (the veth pair with it); DEL still releases the IP.
    ns.delete();
    assert!(!Path::new(&ns.path()).exists());
    network.del(&att).expect("DEL with a missing netns");
    assert!(dirs.reserved(&net).is_empty(), "{:?}", dirs.reserved(&net));
    assert!(cni.cached_attachments(Some("sb2")).is_empty());

    // Never added, no netns at all.
    network
        .del(&pod_attachment("never-added", ""))
        .expect("DEL of a never-added attachment");
}

#[test]
fn a_failing_plugin_makes_add_undo_the_whole_list() {
    require_root_and_reference_plugins();
    let dirs = Dirs::new();
    let ns = Netns::new();
    let bridge = LinkGuard(unique("kcn"));
    let net = unique("keelson-fail-");
    let cni = dirs.cni(Duration::from_secs(30));
    // Fails ADD with a CNI error; records and accepts DEL.
    let d = dirs.dump.display();
    dirs.script(
        "failing",
        &format!(
            "echo \"failing $CNI_COMMAND\" >> {d}/order\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
               echo '{{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"Invalid Configuration\",\"details\":\"no such thing\"}}'\n\
               echo 'failing plugin log line' >&2\n\
               exit 1\n\
             fi"
        ),
    );
    let network = cni
        .network_from_conflist(&bridge_conflist(
            &net,
            &bridge.0,
            "10.213.3.0/24",
            &dirs.ipam,
            &[json!({"type": "failing"})],
        ))
        .expect("network");
    let att = pod_attachment("sb3", &ns.path());
    let err = network.add(&att).expect_err("ADD must fail");
    assert_eq!(err.code(), Some(7), "{err}");
    assert_eq!(err.plugin(), Some("failing"), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("type=\"failing\"") && msg.contains("Invalid Configuration; no such thing"),
        "{msg}"
    );
    assert!(msg.contains("failing plugin log line"), "{msg}");
    assert!(
        matches!(
            &err,
            CniError::Plugin {
                command: Command::Add,
                rollback: None,
                ..
            }
        ),
        "{err:?}"
    );
    // DEL ran for the whole list, in reverse: the failing plugin, then bridge (which let go of
    // its veth and had host-local release the IP).
    assert_eq!(dirs.order(), vec!["failing ADD", "failing DEL"]);
    assert!(
        bridge.ports().trim().is_empty(),
        "veth left: {}",
        bridge.ports()
    );
    assert!(!ns.addrs().contains("10.213.3."), "{}", ns.addrs());
    assert!(
        dirs.reserved(&net).is_empty(),
        "IP kept: {:?}",
        dirs.reserved(&net)
    );
    assert!(cni.cached_attachments(Some("sb3")).is_empty());
}
