//! keelson's CNI plugins against the reference plugins in /usr/lib/cni: same config, same result
//! shape, same state in the netns, same allocation files, working connectivity, and mixed use
//! (ADD with one, DEL with the other) that leaves a clean host.

use keelson_tests::Netns;
use keelson_tests::cni::{self, Invocation, Plugins, TestNet, invoke};
use keelson_tests::unique;
use serde_json::{Value, json};

fn ours() -> Plugins {
    Plugins::keelson().expect("keelson CNI plugins")
}

/// The test net's IPv6 /64, derived from its IPv4 prefix.
fn v6_prefix(net: &TestNet) -> String {
    format!("fd10:{}", net.prefix.replace("10.", "").replace('.', ":"))
}

fn dual_stack_conf(net: &TestNet, version: &str) -> Value {
    let mut conf = net.bridge_conf(version);
    conf["ipam"]["ranges"] = json!([
        [{"subnet": net.subnet()}],
        [{"subnet": format!("{}::/64", v6_prefix(net))}],
    ]);
    conf
}

/// Replaces the net's own prefixes, so two nets compare equal.
fn normalize(net: &TestNet, s: &str) -> String {
    s.replace(&v6_prefix(net), "P6").replace(&net.prefix, "P4")
}

fn normalize_all(net: &TestNet, v: &[String]) -> Vec<String> {
    v.iter().map(|s| normalize(net, s)).collect()
}

#[derive(Debug, PartialEq)]
struct Observed {
    result: Value,
    container_links: Vec<String>,
    container_addrs: Vec<String>,
    container_routes: Vec<String>,
    bridge_addrs: Vec<String>,
    host_links: usize,
    files: Vec<(String, String)>,
    ping_gateway: bool,
    ping_from_host: bool,
}

fn observe(p: &Plugins, version: &str, id: &str) -> (TestNet, Netns, Value, Value, Observed) {
    let net = TestNet::new(&format!("d{}", p.label)).unwrap();
    let c = Netns::new("cdiff").unwrap();
    let conf = dual_stack_conf(&net, version);
    let inv = Invocation::new("ADD", id, &c, "eth0");
    let res = invoke(p, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let normalized: Value =
        serde_json::from_str(&normalize(&net, &cni::shape(&res).to_string())).unwrap();
    let ipv4 = res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let o = Observed {
        result: normalized,
        container_links: cni::link_names(&c).unwrap(),
        container_addrs: normalize_all(&net, &cni::addresses(&c, "eth0").unwrap()),
        container_routes: normalize_all(&net, &cni::routes(&c).unwrap()),
        bridge_addrs: normalize_all(&net, &cni::addresses(&net.host, &net.bridge).unwrap()),
        host_links: cni::link_names(&net.host).unwrap().len(),
        files: net
            .allocations()
            .into_iter()
            .map(|(n, d)| (normalize(&net, &n), normalize(&net, &d)))
            .collect(),
        ping_gateway: cni::ping(&c, &net.gateway()).unwrap(),
        ping_from_host: cni::ping(&net.host, &ipv4).unwrap(),
    };
    (net, c, conf, res, o)
}

#[test]
fn same_config_gives_the_same_result_state_and_files() {
    let (o, r) = (ours(), Plugins::reference());
    for version in ["0.4.0", "1.0.0"] {
        let id = unique::container_id("diff");
        let (net_o, c_o, conf_o, res_o, seen_o) = observe(&o, version, &id);
        let (net_r, c_r, conf_r, res_r, seen_r) = observe(&r, version, &id);
        let mut seen_o_cmp = seen_o;
        let mut seen_r_cmp = seen_r;
        if version == "0.4.0" {
            // The reference (v1.1.1) leaves out ips[].version, which 0.4.0 results carry.
            for ip in seen_o_cmp.result["ips"].as_array_mut().unwrap() {
                ip.as_object_mut().unwrap().remove("version");
            }
            for ip in seen_r_cmp.result["ips"].as_array_mut().unwrap() {
                ip.as_object_mut().unwrap().remove("version");
            }
        }
        seen_r_cmp.result["interfaces"][2]["sandbox"] =
            seen_o_cmp.result["interfaces"][2]["sandbox"].clone();
        seen_r_cmp.result["interfaces"][0]["name"] = json!("BR");
        seen_o_cmp.result["interfaces"][0]["name"] = json!("BR");
        let strip = |v: &mut Vec<(String, String)>| {
            v.iter_mut().for_each(|(_, d)| *d = d.replace(&id, "ID"))
        };
        strip(&mut seen_o_cmp.files);
        strip(&mut seen_r_cmp.files);
        assert_eq!(seen_o_cmp, seen_r_cmp, "version {version}");
        assert!(seen_o_cmp.ping_gateway && seen_o_cmp.ping_from_host);

        for (p, net, c, conf, res) in [
            (&o, &net_o, &c_o, conf_o, res_o),
            (&r, &net_r, &c_r, conf_r, res_r),
        ] {
            let inv = Invocation::new("CHECK", &id, c, "eth0");
            let mut checked = conf.clone();
            checked["prevResult"] = res;
            let out = invoke(p, "bridge", &net.host, &inv, &checked).unwrap();
            if p.label == "reference" {
                // Debian's v1.1.1 fails CHECK on a route without gw (fixed upstream in v1.3.0).
                assert!(
                    out.success || out.stdout.contains("not found in routing table"),
                    "{}",
                    out.stdout
                );
            } else {
                out.ok();
            }
            invoke(p, "bridge", &net.host, &inv.with_command("DEL"), &checked)
                .unwrap()
                .ok();
            let want = vec![net.bridge.clone(), "lo".to_string()];
            assert_eq!(
                cni::settled_link_names(&net.host, &want),
                want,
                "{}",
                p.label
            );
            assert!(net.allocated_ips().is_empty(), "{}", p.label);
            let lo = vec!["lo".to_string()];
            assert_eq!(cni::settled_link_names(c, &lo), lo);
        }
    }
}

#[test]
fn our_check_accepts_a_reference_add() {
    let (o, r) = (ours(), Plugins::reference());
    let net = TestNet::new("chk").unwrap();
    let c = Netns::new("cchk").unwrap();
    let conf = dual_stack_conf(&net, "1.0.0");
    let inv = Invocation::new("ADD", "c-chk", &c, "eth0");
    let res = invoke(&r, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let mut checked = conf.clone();
    checked["prevResult"] = res;
    invoke(
        &o,
        "bridge",
        &net.host,
        &inv.with_command("CHECK"),
        &checked,
    )
    .unwrap()
    .ok();
    // Remove the address: CHECK must notice.
    let addr = checked["prevResult"]["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let out = c
        .exec(&["ip", "addr", "del", &addr, "dev", "eth0"])
        .unwrap();
    assert!(out.status.success());
    let out = invoke(
        &o,
        "bridge",
        &net.host,
        &inv.with_command("CHECK"),
        &checked,
    )
    .unwrap();
    assert!(!out.success, "CHECK missed a removed address");
    invoke(&o, "bridge", &net.host, &inv.with_command("DEL"), &checked)
        .unwrap()
        .ok();
}

#[test]
fn containers_on_one_bridge_reach_each_other() {
    let o = ours();
    let net = TestNet::new("c2c").unwrap();
    let a = Netns::new("ca").unwrap();
    let b = Netns::new("cb").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let ra = invoke(
        &o,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-a", &a, "eth0"),
        &conf,
    )
    .unwrap()
    .ok()
    .json();
    let rb = invoke(
        &o,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-b", &b, "eth0"),
        &conf,
    )
    .unwrap()
    .ok()
    .json();
    let ip = |r: &Value| {
        r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    assert!(cni::ping(&a, &ip(&rb)).unwrap());
    assert!(cni::ping(&b, &ip(&ra)).unwrap());
    for (ns, id) in [(&a, "c-a"), (&b, "c-b")] {
        invoke(
            &o,
            "bridge",
            &net.host,
            &Invocation::new("DEL", id, ns, "eth0"),
            &conf,
        )
        .unwrap()
        .ok();
    }
    assert!(net.allocated_ips().is_empty());
}

#[test]
fn mixed_add_and_del_leave_a_clean_host() {
    let (o, r) = (ours(), Plugins::reference());
    for (adder, deleter) in [(&o, &r), (&r, &o)] {
        let net = TestNet::new("mix").unwrap();
        let c = Netns::new("cmix").unwrap();
        let conf = dual_stack_conf(&net, "1.0.0");
        let inv = Invocation::new("ADD", "c-mix", &c, "eth0");
        let res = invoke(adder, "bridge", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json();
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res;
        invoke(
            deleter,
            "bridge",
            &net.host,
            &inv.with_command("DEL"),
            &with_prev,
        )
        .unwrap()
        .ok();
        let want = vec![net.bridge.clone(), "lo".to_string()];
        assert_eq!(
            cni::settled_link_names(&net.host, &want),
            want,
            "ADD {} DEL {}",
            adder.label,
            deleter.label
        );
        let lo = vec!["lo".to_string()];
        assert_eq!(cni::settled_link_names(&c, &lo), lo);
        assert!(net.allocated_ips().is_empty(), "{:?}", net.allocations());
    }
}

#[test]
fn host_local_shares_one_network_with_the_reference() {
    let (o, r) = (ours(), Plugins::reference());
    let net = TestNet::new("share").unwrap();
    let c = Netns::new("cshare").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let mut ips = Vec::new();
    for (i, p) in [&o, &r, &o, &r].iter().enumerate() {
        let inv = Invocation::new("ADD", &format!("c-share-{i}"), &c, "eth0");
        let v = invoke(p, "host-local", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json();
        ips.push(v["ips"][0]["address"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = (2..6).map(|n| format!("{}.{n}/24", net.prefix)).collect();
    assert_eq!(ips, want);
    // Each releases what the other allocated.
    for (i, p) in [&r, &o, &r, &o].iter().enumerate() {
        let inv = Invocation::new("DEL", &format!("c-share-{i}"), &c, "eth0");
        invoke(p, "host-local", &net.host, &inv, &conf)
            .unwrap()
            .ok();
    }
    assert!(net.allocated_ips().is_empty(), "{:?}", net.allocations());
}

#[test]
fn loopback_matches_the_reference() {
    let (o, r) = (ours(), Plugins::reference());
    let net = TestNet::new("lod").unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let mut results = Vec::new();
    for p in [&o, &r] {
        let c = Netns::new("clod").unwrap();
        let inv = Invocation::new("ADD", "c-lo", &c, "lo");
        let mut v = invoke(p, "loopback", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json();
        v["interfaces"][0]["sandbox"] = json!("NS");
        results.push(v);
        assert!(cni::ping(&c, "127.0.0.1").unwrap());
        invoke(p, "loopback", &net.host, &inv.with_command("DEL"), &conf)
            .unwrap()
            .ok();
    }
    assert_eq!(results[0], results[1]);
}

/// `iptables-save -t nat` rule lines of `ns`, with the net's names and prefixes normalized.
fn nat_rules(net: &TestNet) -> Vec<String> {
    let out = net.host.exec(&["iptables-save", "-t", "nat"]).unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A") || (l.starts_with(':') && l.contains("CNI-")))
        .map(|l| normalize(net, &l.replace(&net.name, "NET")))
        .map(|l| {
            // The chain name hashes the network name: normalize it too.
            l.split(' ')
                .map(|w| {
                    if w.trim_start_matches(':').starts_with("CNI-") {
                        "CNI-CHAIN"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ip_masq_matches_the_reference_and_mixes() {
    let (o, r) = (ours(), Plugins::reference());
    let mut rules = Vec::new();
    for (adder, deleter) in [(&o, &r), (&r, &o), (&o, &o)] {
        let net = TestNet::new("masq").unwrap();
        let client = cni::Client::attach(&net.host).unwrap();
        let c = Netns::new("cmasq").unwrap();
        let mut conf = net.bridge_conf("1.0.0");
        conf["ipMasq"] = json!(true);
        let inv = Invocation::new("ADD", "c-masq", &c, "eth0");
        let res = invoke(adder, "bridge", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json();
        rules.push((adder.label, nat_rules(&net)));
        // The client has no route to the container subnet: only masquerading lets this work.
        let client_ip = client.host_ip.trim_end_matches(".1").to_string() + ".2";
        assert!(
            cni::ping(&c, &client_ip).unwrap(),
            "{} masquerade",
            adder.label
        );
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res;
        invoke(
            deleter,
            "bridge",
            &net.host,
            &inv.with_command("DEL"),
            &with_prev,
        )
        .unwrap()
        .ok();
        assert_eq!(
            nat_rules(&net),
            Vec::<String>::new(),
            "ADD {} DEL {}",
            adder.label,
            deleter.label
        );
        assert!(net.allocated_ips().is_empty());
    }
    assert_eq!(rules[0].1, rules[1].1, "same nat rules as the reference");
    assert!(!rules[0].1.is_empty());
}

#[test]
fn macspoofchk_drops_foreign_source_macs_like_the_reference() {
    for p in [ours(), Plugins::reference()] {
        let net = TestNet::new("spoof").unwrap();
        let mut conf = net.bridge_conf("1.0.0");
        conf["macspoofchk"] = json!(true);
        let mut pods = Vec::new();
        for i in 0..2 {
            let ns = Netns::new("cspoof").unwrap();
            let id = format!("c-spoof-{i}");
            let inv = Invocation::new("ADD", &id, &ns, "eth0");
            let res = invoke(&p, "bridge", &net.host, &inv, &conf)
                .unwrap()
                .ok()
                .json();
            let ip = res["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string();
            pods.push((ns, id, ip));
        }
        assert!(
            cni::ping(&pods[0].0, &pods[1].2).unwrap(),
            "{}: own MAC",
            p.label
        );
        let out = pods[0]
            .0
            .exec(&["ip", "link", "set", "eth0", "address", "02:42:00:00:00:99"])
            .unwrap();
        assert!(out.status.success());
        assert!(
            !cni::ping(&pods[0].0, &pods[1].2).unwrap(),
            "{}: spoofed MAC passed",
            p.label
        );
        for (ns, id, _) in &pods {
            invoke(
                &p,
                "bridge",
                &net.host,
                &Invocation::new("DEL", id, ns, "eth0"),
                &conf,
            )
            .unwrap()
            .ok();
        }
        if p.label == "keelson" {
            let out = net.host.exec(&["nft", "list", "ruleset"]).unwrap();
            assert!(!String::from_utf8_lossy(&out.stdout).contains("comment \"macspoofchk"));
        }
    }
}

#[test]
fn ip_masq_nftables_backend_masquerades_and_cleans_up() {
    let o = ours();
    let net = TestNet::new("masqnft").unwrap();
    let client = cni::Client::attach(&net.host).unwrap();
    let c = Netns::new("cmasqnft").unwrap();
    let mut conf = net.bridge_conf("1.0.0");
    conf["ipMasq"] = json!(true);
    conf["ipMasqBackend"] = json!("nftables");
    let inv = Invocation::new("ADD", "c-masqnft", &c, "eth0");
    let res = invoke(&o, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let table = || {
        let out = net
            .host
            .exec(&["nft", "list", "table", "inet", "cni_plugins_masquerade"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ip = res["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let rules = table();
    assert!(
        rules.contains(&format!("ip saddr {ip} ip daddr != {}", net.subnet())),
        "{rules}"
    );
    assert!(rules.contains(", net: "), "{rules}");
    assert_eq!(nat_rules(&net), Vec::<String>::new(), "no iptables rules");
    let client_ip = client.host_ip.trim_end_matches(".1").to_string() + ".2";
    assert!(cni::ping(&c, &client_ip).unwrap(), "masquerade");
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res;
    invoke(
        &o,
        "bridge",
        &net.host,
        &inv.with_command("DEL"),
        &with_prev,
    )
    .unwrap()
    .ok();
    assert!(!table().contains(&ip), "{}", table());
    assert!(!cni::ping(&c, &client_ip).unwrap_or(false));
}

#[test]
fn requested_mac_is_set_like_the_reference() {
    let mac = "02:42:0a:0b:0c:0d";
    for p in [ours(), Plugins::reference()] {
        for how in ["runtimeConfig", "args", "CNI_ARGS"] {
            let net = TestNet::new("mac").unwrap();
            let c = Netns::new("cmac").unwrap();
            let mut conf = net.bridge_conf("1.0.0");
            let mut inv = Invocation::new("ADD", "c-mac", &c, "eth0");
            match how {
                "runtimeConfig" => conf["runtimeConfig"] = json!({"mac": mac}),
                "args" => conf["args"] = json!({"cni": {"mac": mac}}),
                // The reference refuses unknown CNI_ARGS keys without IgnoreUnknown.
                _ => inv.args = Some(format!("IgnoreUnknown=1;MAC={mac}")),
            }
            let res = invoke(&p, "bridge", &net.host, &inv, &conf)
                .unwrap()
                .ok()
                .json();
            assert_eq!(res["interfaces"][2]["mac"], json!(mac), "{} {how}", p.label);
            let link = cni::ip_json(&c, &["link", "show", "eth0"]).unwrap();
            assert_eq!(link[0]["address"], json!(mac), "{} {how}", p.label);
            invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &conf)
                .unwrap()
                .ok();
        }
    }
    // A malformed MAC is refused before anything is made.
    let net = TestNet::new("macbad").unwrap();
    let c = Netns::new("cmacbad").unwrap();
    let mut conf = net.bridge_conf("1.0.0");
    conf["runtimeConfig"] = json!({"mac": "02:42:zz:0b:0c:0d"});
    let out = invoke(
        &ours(),
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-mb", &c, "eth0"),
        &conf,
    )
    .unwrap();
    assert_eq!(out.code(), Some(7), "{}", out.stdout);
    assert!(net.allocated_ips().is_empty());
    assert_eq!(cni::link_names(&c).unwrap(), vec!["lo".to_string()]);
}

/// Unknown CNI_ARGS keys: refused by bridge and host-local like the reference's
/// `types.LoadArgs` (same code, same message) unless IgnoreUnknown is set; nothing is made.
#[test]
fn unknown_cni_args_are_refused_like_the_reference() {
    let mut answers = Vec::new();
    for p in [ours(), Plugins::reference()] {
        let net = TestNet::new("uarg").unwrap();
        let c = Netns::new("cuarg").unwrap();
        let conf = net.bridge_conf("1.0.0");
        let mut inv = Invocation::new("ADD", "c-uarg", &c, "eth0");
        inv.args = Some("K8S_POD_NAME=web;FOO=1".into());
        let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
        assert!(!out.success, "{} {}", p.label, out.stdout);
        answers.push((out.code(), out.json()["msg"].clone()));
        assert!(net.allocated_ips().is_empty(), "{}", p.label);
        assert_eq!(cni::link_names(&c).unwrap(), vec!["lo".to_string()]);
        // host-local alone: IP is its only key.
        let ipam = json!({
            "cniVersion": "1.0.0",
            "name": conf["name"],
            "ipam": conf["ipam"],
        });
        let out = invoke(&p, "host-local", &net.host, &inv, &ipam).unwrap();
        assert!(!out.success, "{} {}", p.label, out.stdout);
        answers.push((out.code(), out.json()["msg"].clone()));
        // IgnoreUnknown=1 (what containerd, CRI-O, podman and keelsond send): accepted.
        inv.args = Some("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=1".into());
        invoke(&p, "bridge", &net.host, &inv, &conf).unwrap().ok();
        invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &conf)
            .unwrap()
            .ok();
    }
    assert_eq!(answers[0], answers[2], "bridge: ours vs reference");
    assert_eq!(answers[1], answers[3], "host-local: ours vs reference");
    assert_eq!(answers[0].0, Some(999));
    assert_eq!(
        answers[0].1,
        json!("ARGS: unknown args [\"K8S_POD_NAME=web\" \"FOO=1\"]")
    );
}
