//! bridge `vlan`, `vlanTrunk` and `preserveDefaultVlan`.
//!
//! VLAN filtering needs a kernel with CONFIG_BRIDGE_VLAN_FILTERING. The tests that need it run
//! in the user-mode-linux guest of `tests/cgroup-v2/run.sh` (its kernel has it; `guest-init.sh`
//! sets `KEELSON_UML_GUEST=1` and loads the bridge, veth and 8021q modules), where they must
//! run: unavailable filtering fails them there. Elsewhere (this VM's kernel lacks it) they say
//! why they skip, and `vlan_fails_cleanly_without_kernel_support` checks the refusal instead.

use keelson_tests::Netns;
use keelson_tests::cni::{self, Invocation, Plugins, TestNet, invoke};
use serde_json::{Value, json};

fn ours() -> Plugins {
    Plugins::keelson().expect("keelson CNI plugins")
}

fn in_guest() -> bool {
    std::env::var_os("KEELSON_UML_GUEST").is_some()
}

/// Whether the kernel can make a VLAN-filtering bridge (tried inside the test host netns).
fn vlan_filtering_available(host: &Netns) -> bool {
    let name = format!("ktvp{:06x}", std::process::id() & 0xffffff);
    let out = host
        .exec(&[
            "ip",
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ])
        .unwrap();
    if out.status.success() {
        let _ = host.exec(&["ip", "link", "del", &name]);
    }
    out.status.success()
}

/// Guest: filtering must work. Elsewhere: true when it works, else prints why the test skips.
fn require_vlan_filtering(net: &TestNet, test: &str) -> bool {
    let ok = vlan_filtering_available(&net.host);
    assert!(
        ok || !in_guest(),
        "bridge vlan filtering unavailable in the cgroup-v2 guest (bridge module not loaded?)"
    );
    if !ok {
        eprintln!(
            "{test}: skipped: this kernel has no bridge vlan filtering \
             (CONFIG_BRIDGE_VLAN_FILTERING); it runs in tests/cgroup-v2/run.sh's guest"
        );
    }
    ok
}

/// The test net's bridge name shortened to 10 bytes, so `<bridge>.<vlan>` fits in 15.
fn bridge(net: &TestNet) -> String {
    format!("kv{}{}", &net.bridge[5..9], &net.bridge[11..15])
}

fn vlan_conf(net: &TestNet, extra: Value) -> Value {
    let mut conf = net.bridge_conf("1.0.0");
    conf["bridge"] = json!(bridge(net));
    // Container-to-container and gateway traffic only: no default route needed.
    conf["isDefaultGateway"] = json!(false);
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf
}

/// `bridge -j vlan show` of `ns`: ifname -> [(vid, flags)], sorted.
/// A port's vlans: (vid, sorted flags), sorted.
type PortVlans = Vec<(u64, Vec<String>)>;

fn vlans(ns: &Netns) -> Vec<(String, PortVlans)> {
    let out = ns.exec(&["bridge", "-j", "vlan", "show"]).unwrap();
    assert!(
        out.status.success(),
        "bridge vlan show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut all = Vec::new();
    for port in v.as_array().into_iter().flatten() {
        let name = port["ifname"].as_str().unwrap_or_default().to_string();
        let mut vs: PortVlans = port["vlans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                let mut flags: Vec<String> = x["flags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(String::from))
                    .collect();
                flags.sort();
                (x["vlan"].as_u64().unwrap_or(0), flags)
            })
            .collect();
        vs.sort();
        all.push((name, vs));
    }
    all.sort();
    all
}

fn vlans_of(ns: &Netns, ifname: &str) -> PortVlans {
    vlans(ns)
        .into_iter()
        .find(|(n, _)| n == ifname)
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn vlan_filtering_of(ns: &Netns, bridge: &str) -> Option<u64> {
    let v = cni::ip_json(ns, &["-d", "link", "show", "dev", bridge]).unwrap();
    v[0]["linkinfo"]["info_data"]["vlan_filtering"].as_u64()
}

/// The container address (without prefix) from an ADD result.
fn ip_of(res: &Value) -> String {
    res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

struct Attached {
    ns: Netns,
    res: Value,
    host_veth: String,
}

fn attach(p: &Plugins, net: &TestNet, conf: &Value, id: &str) -> Attached {
    let ns = Netns::new("cvlan").unwrap();
    let inv = Invocation::new("ADD", id, &ns, "eth0");
    let res = invoke(p, "bridge", &net.host, &inv, conf)
        .unwrap()
        .ok()
        .json();
    let host_veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    Attached { ns, res, host_veth }
}

fn detach(p: &Plugins, net: &TestNet, conf: &Value, id: &str, a: &Attached) {
    let inv = Invocation::new("DEL", id, &a.ns, "eth0");
    invoke(p, "bridge", &net.host, &inv, conf).unwrap().ok();
}

/// What one implementation leaves for an access vlan with a gateway: two containers on vlan 10,
/// one on vlan 20, each port as `bridge vlan show` shows it (by role), the gateway interface and
/// its address, and who reaches whom.
#[derive(Debug, PartialEq)]
struct Observed {
    filtering: Option<u64>,
    ports: Vec<(String, PortVlans)>,
    gateway_addrs: Vec<String>,
    bridge_addrs: Vec<String>,
    result_interfaces: Vec<String>,
    a_reaches_b: bool,
    a_reaches_gateway: bool,
    a_reaches_c: bool,
}

fn observe_access(p: &Plugins) -> Observed {
    let net = TestNet::new(&format!("vl{}", p.label)).unwrap();
    let conf10 = vlan_conf(&net, json!({"vlan": 10}));
    let conf20 = vlan_conf(&net, json!({"vlan": 20, "isGateway": false}));
    let a = attach(p, &net, &conf10, "c-vla");
    let b = attach(p, &net, &conf10, "c-vlb");
    let c = attach(p, &net, &conf20, "c-vlc");
    let gw_if = format!("{}.10", bridge(&net));
    let roles = |name: &str| -> String {
        if name == bridge(&net) {
            "bridge".into()
        } else if name == a.host_veth {
            "a".into()
        } else if name == b.host_veth {
            "b".into()
        } else if name == c.host_veth {
            "c".into()
        } else {
            "gateway port".into()
        }
    };
    let mut ports: Vec<_> = vlans(&net.host)
        .into_iter()
        .map(|(n, v)| (roles(&n), v))
        .collect();
    ports.sort();
    let result_interfaces = a.res["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let n = i["name"].as_str().unwrap_or_default();
            if n.starts_with("veth") {
                "<veth>".to_string()
            } else {
                n.replace(&bridge(&net), "<bridge>")
            }
        })
        .collect();
    if p.label == "keelson" {
        let inv = Invocation::new("CHECK", "c-vla", &a.ns, "eth0");
        let mut check = conf10.clone();
        check["prevResult"] = a.res.clone();
        invoke(p, "bridge", &net.host, &inv, &check).unwrap().ok();
    }
    let observed = Observed {
        filtering: vlan_filtering_of(&net.host, &bridge(&net)),
        ports,
        gateway_addrs: cni::addresses(&net.host, &gw_if)
            .unwrap_or_default()
            .iter()
            .map(|s| s.replace(&net.prefix, "P4"))
            .collect(),
        bridge_addrs: cni::addresses(&net.host, &bridge(&net)).unwrap_or_default(),
        result_interfaces,
        a_reaches_b: cni::ping(&a.ns, &ip_of(&b.res)).unwrap(),
        a_reaches_gateway: cni::ping(&a.ns, &net.gateway()).unwrap(),
        a_reaches_c: cni::ping(&a.ns, &ip_of(&c.res)).unwrap(),
    };
    detach(p, &net, &conf10, "c-vla", &a);
    detach(p, &net, &conf10, "c-vlb", &b);
    detach(p, &net, &conf20, "c-vlc", &c);
    // DEL leaves the bridge and the vlan gateway (as the reference), no container port (ours
    // deletes the pair a moment after the DEL: see `settled_link_names`).
    let ports = [&a.host_veth, &b.host_veth, &c.host_veth];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let left = loop {
        let left: Vec<String> = vlans(&net.host).into_iter().map(|(n, _)| n).collect();
        if !left.iter().any(|n| ports.contains(&n)) || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        !left.iter().any(|n| ports.contains(&n)),
        "{} left ports: {left:?}",
        p.label
    );
    observed
}

#[test]
fn access_vlan_like_the_reference() {
    let probe = TestNet::new("vlprobe").unwrap();
    if !require_vlan_filtering(&probe, "access_vlan_like_the_reference") {
        return;
    }
    let theirs = observe_access(&Plugins::reference());
    let mine = observe_access(&ours());
    eprintln!("access vlan, both implementations: {mine:?}");
    assert_eq!(mine, theirs);
    // And what that state is: a filtering bridge, each container port untagged PVID of its
    // vlan (the default vlan 1 kept, as the reference does), the gateway on <bridge>.10.
    assert_eq!(mine.filtering, Some(1));
    let pvid = |v: u64| (v, vec!["Egress Untagged".to_string(), "PVID".to_string()]);
    let untagged = |v: u64| (v, vec!["Egress Untagged".to_string()]);
    let port = |role: &str| {
        mine.ports
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(port("a"), vec![untagged(1), pvid(10)], "{mine:?}");
    assert_eq!(port("c"), vec![untagged(1), pvid(20)], "{mine:?}");
    assert_eq!(
        port("gateway port"),
        vec![untagged(1), pvid(10)],
        "{mine:?}"
    );
    assert_eq!(mine.gateway_addrs, vec!["P4.1/24".to_string()]);
    assert!(mine.a_reaches_b && mine.a_reaches_gateway, "{mine:?}");
    assert!(!mine.a_reaches_c, "vlan 10 reached vlan 20: {mine:?}");
}

#[test]
fn trunk_ports_carry_tagged_vlans() {
    let net = TestNet::new("vltrunk").unwrap();
    if !require_vlan_filtering(&net, "trunk_ports_carry_tagged_vlans") {
        return;
    }
    let p = ours();
    // An access container on vlan 10 (no gateway) and a trunk container with 10 and 30-32.
    let access_conf = vlan_conf(&net, json!({"vlan": 10, "isGateway": false}));
    let trunk_conf = vlan_conf(
        &net,
        json!({"isGateway": false,
               "vlanTrunk": [{"id": 10}, {"minID": 30, "maxID": 32}, {"id": 31}]}),
    );
    let a = attach(&p, &net, &access_conf, "c-vta");
    let t = attach(&p, &net, &trunk_conf, "c-vtt");
    assert_eq!(vlan_filtering_of(&net.host, &bridge(&net)), Some(1));
    let pvid1 = (1, vec!["Egress Untagged".to_string(), "PVID".to_string()]);
    assert_eq!(
        vlans_of(&net.host, &t.host_veth),
        vec![
            pvid1.clone(),
            (10, vec![]),
            (30, vec![]),
            (31, vec![]),
            (32, vec![])
        ]
    );
    // CHECK sees the trunk.
    let inv = Invocation::new("CHECK", "c-vtt", &t.ns, "eth0");
    let mut check = trunk_conf.clone();
    check["prevResult"] = t.res.clone();
    invoke(&p, "bridge", &net.host, &inv, &check).unwrap().ok();
    // Tagged frames of vlan 10 from the trunk container (a vlan sub-interface there) reach the
    // access container, on addresses of their own.
    for args in [
        vec![
            "ip", "link", "add", "link", "eth0", "name", "eth0.10", "type", "vlan", "id", "10",
        ],
        vec!["ip", "addr", "add", "10.254.254.2/24", "dev", "eth0.10"],
        vec!["ip", "link", "set", "eth0.10", "up"],
    ] {
        let out = t.ns.exec(&args).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out =
        a.ns.exec(&["ip", "addr", "add", "10.254.254.1/24", "dev", "eth0"])
            .unwrap();
    assert!(out.status.success());
    assert!(
        cni::ping(&t.ns, "10.254.254.1").unwrap(),
        "tagged vlan 10 from the trunk did not reach the access port"
    );

    // preserveDefaultVlan false: the port carries only its own vlan.
    let strict_conf = vlan_conf(
        &net,
        json!({"vlan": 10, "isGateway": false, "preserveDefaultVlan": false}),
    );
    let s = attach(&p, &net, &strict_conf, "c-vts");
    assert_eq!(
        vlans_of(&net.host, &s.host_veth),
        vec![(10, vec!["Egress Untagged".to_string(), "PVID".to_string()])]
    );
    let inv = Invocation::new("CHECK", "c-vts", &s.ns, "eth0");
    let mut check = strict_conf.clone();
    check["prevResult"] = s.res.clone();
    invoke(&p, "bridge", &net.host, &inv, &check).unwrap().ok();
    // CHECK notices a port that lost its vlan.
    let out = net
        .host
        .exec(&["bridge", "vlan", "del", "dev", &s.host_veth, "vid", "10"])
        .unwrap();
    assert!(out.status.success());
    let failed = invoke(&p, "bridge", &net.host, &inv, &check).unwrap();
    assert!(!failed.success, "CHECK passed without the vlan");
    assert!(failed.stdout.contains("vlan 10"), "{}", failed.stdout);

    detach(&p, &net, &strict_conf, "c-vts", &s);
    detach(&p, &net, &trunk_conf, "c-vtt", &t);
    detach(&p, &net, &access_conf, "c-vta", &a);
}

/// Bad vlan configs are refused (code 7, upstream's messages) before anything is made; this
/// needs no vlan support and runs everywhere.
#[test]
fn vlan_config_errors_like_upstream() {
    let p = ours();
    let net = TestNet::new("vlerr").unwrap();
    let ns = Netns::new("cvlerr").unwrap();
    let before = cni::link_names(&net.host).unwrap();
    for (extra, msg) in [
        (json!({"vlan": 4095}), "invalid VLAN ID 4095"),
        (json!({"vlan": -1}), "invalid VLAN ID -1"),
        (
            json!({"vlan": 10, "vlanTrunk": [{"id": 20}]}),
            "cannot set vlan and vlanTrunk at the same time",
        ),
        (
            json!({"vlanTrunk": [{"id": 0}]}),
            "incorrect trunk id parameter",
        ),
        (
            json!({"vlanTrunk": [{"minID": 0, "maxID": 5}]}),
            "incorrect trunk minID parameter",
        ),
        (
            json!({"vlanTrunk": [{"minID": 5, "maxID": 4095}]}),
            "incorrect trunk maxID parameter",
        ),
        (
            json!({"vlanTrunk": [{"minID": 9, "maxID": 5}]}),
            "minID is greater than maxID in trunk parameter",
        ),
        (json!({"vlanTrunk": [{"maxID": 5}]}), "minID is missing"),
        (json!({"vlanTrunk": [{"minID": 5}]}), "maxID is missing"),
        (
            json!({"vlan": 4000, "bridge": "ktbridge123456"}),
            "vlan gateway interface name",
        ),
    ] {
        let conf = vlan_conf(&net, extra.clone());
        let inv = Invocation::new("ADD", "c-vlerr", &ns, "eth0");
        let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
        assert!(!out.success, "{extra} accepted");
        assert_eq!(out.code(), Some(7), "{extra}: {}", out.stdout);
        assert!(out.stdout.contains(msg), "{extra}: {}", out.stdout);
    }
    assert_eq!(cni::link_names(&net.host).unwrap(), before);
    assert!(net.allocated_ips().is_empty());
}

/// Without kernel support a vlan ADD fails naming the missing feature and leaves no bridge, no
/// veth and no allocation. Runs where filtering is missing (this VM); in the guest, where the
/// kernel has it, the other tests run instead.
#[test]
fn vlan_fails_cleanly_without_kernel_support() {
    let net = TestNet::new("vlnosup").unwrap();
    if vlan_filtering_available(&net.host) {
        eprintln!(
            "vlan_fails_cleanly_without_kernel_support: skipped: this kernel has bridge vlan \
             filtering (the guest); the vlan tests run here instead"
        );
        return;
    }
    let p = ours();
    let ns = Netns::new("cvlnos").unwrap();
    let before = cni::link_names(&net.host).unwrap();
    for extra in [json!({"vlan": 10}), json!({"vlanTrunk": [{"id": 10}]})] {
        let conf = vlan_conf(&net, extra.clone());
        let inv = Invocation::new("ADD", "c-vlnos", &ns, "eth0");
        let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
        assert!(!out.success, "{extra} accepted");
        assert!(
            out.stdout.contains("CONFIG_BRIDGE_VLAN_FILTERING"),
            "{extra}: {}",
            out.stdout
        );
        assert_eq!(cni::link_names(&net.host).unwrap(), before, "{extra}");
        assert_eq!(cni::link_names(&ns).unwrap(), vec!["lo".to_string()]);
        assert!(net.allocated_ips().is_empty(), "{extra}");
    }
    // An existing bridge without filtering: the port's vlan is refused the same way, and the
    // veth pair goes again.
    let out = net
        .host
        .exec(&["ip", "link", "add", &bridge(&net), "type", "bridge"])
        .unwrap();
    assert!(out.status.success());
    let before = cni::link_names(&net.host).unwrap();
    let conf = vlan_conf(&net, json!({"vlan": 10}));
    let inv = Invocation::new("ADD", "c-vlnos", &ns, "eth0");
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
    assert!(!out.success);
    assert!(
        out.stdout.contains("CONFIG_BRIDGE_VLAN_FILTERING"),
        "{}",
        out.stdout
    );
    assert_eq!(cni::link_names(&net.host).unwrap(), before);
    assert!(net.allocated_ips().is_empty());
}
