//! Tests of the CNI caller against real plugins: the reference plugins of Debian's
//! containernetworking-plugins in /usr/lib/cni (bridge, host-local, loopback) in netns this test
//! creates, and small shell-script plugins that record what they were given. Run as root. Every
//! netns, bridge and temp dir is removed by a Drop guard, also when an assertion fails.

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

#[test]
fn chain_passes_prev_results_capabilities_and_env_like_libcni() {
    let dirs = Dirs::new();
    let first = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.213.9.2/24", "interface": 0}]});
    let second = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "fd00:213::2/64", "interface": 0},
                {"address": "10.213.9.2/24", "interface": 0}]});
    dirs.recorder("first", &first);
    dirs.recorder("second", &second);
    let cni = dirs.cni(Duration::from_secs(20));
    let conf = json!({"cniVersion": "1.0.0", "name": "chain", "plugins": [
        {"type": "first", "capabilities": {"portMappings": true, "bandwidth": false}, "own": "x"},
        {"type": "second", "name": "other", "cniVersion": "0.3.1"}]});
    let network = cni
        .network_from_conflist(&serde_json::to_vec(&conf).expect("json"))
        .expect("network");
    assert_eq!(network.capabilities(), vec!["portMappings".to_string()]);
    let ports = [PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: "tcp".into(),
        host_ip: String::new(),
    }];
    let att = pod_attachment("sb4", "/run/netns/x")
        .with_port_mappings(&ports)
        .with_bandwidth(Bandwidth {
            ingress_rate: 1000,
            ..Default::default()
        });
    let result = network.add(&att).expect("ADD");

    let a = dirs.dumped("ADD", "first");
    assert_eq!(a["name"], "chain");
    assert_eq!(a["own"], "x");
    assert!(a.get("prevResult").is_none());
    // Only the declared (and true) capability reaches the plugin.
    assert_eq!(
        a["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]})
    );
    let b = dirs.dumped("ADD", "second");
    assert_eq!(b["name"], "chain");
    assert_eq!(b["cniVersion"], "1.0.0");
    assert_eq!(b["prevResult"], first);
    assert!(b.get("runtimeConfig").is_none(), "{b}");
    let env = fs::read_to_string(dirs.dump.join("ADD-second.env")).expect("env");
    for line in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=sb4",
        "CNI_NETNS=/run/netns/x",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb4;K8S_POD_UID=0b6f7a4e",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    let path_line = format!("CNI_PATH={}:{REFERENCE_PLUGINS}", dirs.bin.display());
    assert!(
        env.lines().any(|l| l == path_line),
        "{path_line} not in\n{env}"
    );

    // The last plugin's result is the network's; IPv4 is the primary pod IP.
    assert_eq!(result.raw, second);
    let ips = result.pod_ips("eth0", IpPreference::Ipv4).expect("ips");
    assert_eq!(ips.primary.to_string(), "10.213.9.2");
    assert_eq!(
        ips.additional,
        vec!["fd00:213::2".parse::<std::net::IpAddr>().expect("ip")]
    );

    // CHECK and DEL get the cached result; DEL runs in reverse and reuses ADD's capability args
    // even when the caller no longer has them.
    network.check(&att).expect("CHECK");
    assert_eq!(dirs.dumped("CHECK", "first")["prevResult"], second);
    let bare = Attachment::new("sb4", "", "eth0");
    network.del(&bare).expect("DEL");
    let d = dirs.dumped("DEL", "first");
    assert_eq!(d["prevResult"], second);
    assert_eq!(d["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    let env = fs::read_to_string(dirs.dump.join("DEL-first.env")).expect("env");
    assert!(env.contains("K8S_POD_INFRA_CONTAINER_ID=sb4"), "{env}");
    assert_eq!(
        dirs.order(),
        vec![
            "first ADD",
            "second ADD",
            "first CHECK",
            "second CHECK",
            "second DEL",
            "first DEL"
        ]
    );
    // A DEL without a cache entry has no prevResult.
    network.del(&bare).expect("second DEL");
    assert!(dirs.dumped("DEL", "first").get("prevResult").is_none());
}

#[test]
fn results_of_old_versions_and_check_rules() {
    let dirs = Dirs::new();
    let v04 = json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/y"}],
        "ips": [{"version": "4", "address": "10.213.8.3/24", "interface": 0}]});
    dirs.recorder("old", &v04);
    let cni = dirs.cni(Duration::from_secs(20));
    let att = Attachment::new("sb5", "/run/netns/y", "eth0");

    let conf = |v: &str| {
        serde_json::to_vec(&json!({"cniVersion": v, "name": "old", "plugins": [{"type": "old"}]}))
            .expect("json")
    };
    let network = cni.network_from_conflist(&conf("0.4.0")).expect("network");
    let r = network.add(&att).expect("ADD");
    assert_eq!(
        r.pod_ips("eth0", IpPreference::Ipv4)
            .expect("ip")
            .primary
            .to_string(),
        "10.213.8.3"
    );
    // The same attachment seen through a 1.0.0 config gets the cached result in 1.0 shape.
    let newer = cni.network_from_conflist(&conf("1.0.0")).expect("network");
    newer.check(&att).expect("CHECK");
    let prev = &dirs.dumped("CHECK", "old")["prevResult"];
    assert_eq!(prev["cniVersion"], "1.0.0");
    assert!(prev["ips"][0].get("version").is_none(), "{prev}");
    newer.del(&att).expect("DEL");

    let older = cni.network_from_conflist(&conf("0.3.1")).expect("network");
    assert!(matches!(
        older.check(&att),
        Err(CniError::CheckNotSupported { .. })
    ));
    let disabled = serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "old",
        "disableCheck": true, "plugins": [{"type": "old"}]}))
    .expect("json");
    cni.network_from_conflist(&disabled)
        .expect("network")
        .check(&att)
        .expect("disableCheck succeeds without running anything");
    let checks = dirs.order().iter().filter(|l| *l == "old CHECK").count();
    assert_eq!(checks, 1, "disableCheck ran the plugin: {:?}", dirs.order());

    // A plugin whose ADD output is not a result fails the ADD (and is DELed).
    dirs.script(
        "garbage",
        "[ \"$CNI_COMMAND\" = ADD ] && echo 'not json'; exit 0",
    );
    let g = serde_json::to_vec(
        &json!({"cniVersion": "1.0.0", "name": "g", "plugins": [{"type": "garbage"}]}),
    )
    .expect("json");
    let err = cni
        .network_from_conflist(&g)
        .expect("network")
        .add(&att)
        .expect_err("garbage result");
    assert!(matches!(err, CniError::InvalidResult { .. }), "{err}");
}

#[test]
fn a_hanging_plugin_is_killed_at_the_timeout() {
    let dirs = Dirs::new();
    dirs.script("hang", "if [ \"$CNI_COMMAND\" = ADD ]; then sleep 600; fi");
    let cni = dirs.cni(Duration::from_millis(700));
    let network = cni
        .network_from_conflist(br#"{"cniVersion":"1.0.0","name":"h","plugins":[{"type":"hang"}]}"#)
        .expect("network");
    let started = std::time::Instant::now();
    let err = network
        .add(&Attachment::new("sb6", "", "eth0"))
        .expect_err("must time out");
    assert!(started.elapsed() < Duration::from_secs(20));
    match &err {
        CniError::Plugin { error, .. } => {
            assert!(matches!(**error, PluginError::Timeout { .. }), "{err}")
        }
        other => panic!("{other}"),
    }
}

#[test]
fn discovery_takes_the_first_valid_file_and_explains_a_bad_dir() {
    let dirs = Dirs::new();
    dirs.script("good", "exit 0");
    let cni = dirs.cni(Duration::from_secs(5));
    let put = |name: &str, body: &str| fs::write(dirs.conf.join(name), body).expect("write conf");

    // Missing and empty dirs.
    let missing = Cni::new(CniOptions {
        conf_dir: dirs.conf.join("nope"),
        ..cni.options().clone()
    });
    let e = missing.status().expect_err("missing dir");
    assert!(matches!(e, LoadError::NoConfig { .. }), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(matches!(cni.load(), Err(LoadError::NoConfig { .. })));

    put("00-malformed.conflist", "{\"name\": ");
    put(
        "05-notype.conflist",
        r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"ipam":{}}]}"#,
    );
    put(
        "10-version.conflist",
        r#"{"cniVersion":"0.2.0","name":"b","plugins":[{"type":"good"}]}"#,
    );
    put(
        "15-nobinary.conflist",
        r#"{"cniVersion":"1.0.0","name":"c","plugins":[{"type":"absent-plugin"}]}"#,
    );
    put(
        "17-list-in-conf.conf",
        r#"{"cniVersion":"1.0.0","name":"d","plugins":[{"type":"good"}]}"#,
    );
    put("18-ignored.txt", "not a config");
    fs::create_dir(dirs.conf.join("19-dir.conflist")).expect("mkdir");

    let e = cni.status().expect_err("nothing valid yet");
    let msg = e.to_string();
    for needle in [
        dirs.conf.display().to_string(),
        "00-malformed.conflist: malformed JSON".into(),
        "05-notype.conflist: plugin 0: missing \"type\"".into(),
        "10-version.conflist: unsupported cniVersion \"0.2.0\"".into(),
        "15-nobinary.conflist: plugin 0: binary \"absent-plugin\" not found in".into(),
        "17-list-in-conf.conf: missing \"type\"".into(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} not in {msg}");
    }
    assert!(
        !msg.contains("18-ignored") && !msg.contains("19-dir"),
        "{msg}"
    );
    match &e {
        LoadError::NoneValid { rejected, .. } => assert_eq!(rejected.len(), 5),
        other => panic!("{other}"),
    }

    put(
        "20-single.conf",
        r#"{"cniVersion":"0.4.0","name":"single","type":"good","x":1}"#,
    );
    put(
        "30-later.conflist",
        r#"{"cniVersion":"1.0.0","name":"later","plugins":[{"type":"good"}]}"#,
    );
    let loaded = cni.load().expect("a valid file");
    assert_eq!(loaded.network.name(), "single");
    assert_eq!(loaded.network.cni_version(), "0.4.0");
    assert_eq!(loaded.network.plugin_types(), vec!["good"]);
    assert_eq!(
        loaded.network.source(),
        Some(dirs.conf.join("20-single.conf").as_path())
    );
    assert_eq!(loaded.skipped.len(), 5);
    cni.status().expect("ready");
    // .json counts too, and name order decides.
    put(
        "01-first.json",
        r#"{"cniVersion":"1.0.0","name":"json-net","type":"good"}"#,
    );
    assert_eq!(cni.load().expect("valid").network.name(), "json-net");
}
