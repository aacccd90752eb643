//! portmap: host ports reachable from another host, from the node itself and from 127.0.0.1,
//! like the reference plugin's (iptables) rules; DEL removes exactly its own rules; bad configs
//! change nothing. Everything runs in test-made netns.

use keelson_tests::Netns;
use keelson_tests::cni::{self, Client, HttpServer, Invocation, Plugins, TestNet, invoke};
use serde_json::{Value, json};

fn ours() -> Plugins {
    Plugins::keelson().expect("keelson CNI plugins")
}

fn portmap_conf(net: &TestNet, prev: &Value, mappings: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": net.name,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev,
    })
}

/// The whole host-side ruleset of the test host, both nftables and iptables views.
fn ruleset(net: &TestNet) -> String {
    let nft = net.host.exec(&["nft", "list", "ruleset"]).unwrap();
    let ipt = net.host.exec(&["iptables-save"]).unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&nft.stdout),
        String::from_utf8_lossy(&ipt.stdout)
    )
}

struct Pod {
    ns: Netns,
    id: String,
    bridge_conf: Value,
    pm_conf: Value,
    _server: HttpServer,
}

fn pod(p: &Plugins, net: &TestNet, id: &str, host_port: u16) -> Pod {
    pod_with(p, net, id, host_port, None)
}

/// A pod with an HTTP server on port 80 mapped from `host_port`, with portmap's `backend`.
fn pod_with(p: &Plugins, net: &TestNet, id: &str, host_port: u16, backend: Option<&str>) -> Pod {
    let ns = Netns::new("cpm").unwrap();
    let bridge_conf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", id, &ns, "eth0");
    let prev = invoke(p, "bridge", &net.host, &inv, &bridge_conf)
        .unwrap()
        .ok()
        .json();
    let mut pm_conf = portmap_conf(
        net,
        &prev,
        json!([{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]),
    );
    if let Some(b) = backend {
        pm_conf["backend"] = json!(b);
    }
    let out = invoke(p, "portmap", &net.host, &inv, &pm_conf)
        .unwrap()
        .ok();
    assert_eq!(out.json(), prev, "portmap passes prevResult through");
    let server = HttpServer::start(&ns, 80).unwrap();
    Pod {
        ns,
        id: id.to_string(),
        bridge_conf,
        pm_conf,
        _server: server,
    }
}

fn del(p: &Plugins, net: &TestNet, pod: &Pod) {
    let inv = Invocation::new("DEL", &pod.id, &pod.ns, "eth0");
    invoke(p, "portmap", &net.host, &inv, &pod.pm_conf)
        .unwrap()
        .ok();
    invoke(p, "bridge", &net.host, &inv, &pod.bridge_conf)
        .unwrap()
        .ok();
}

#[test]
fn host_port_is_reachable_like_with_the_reference() {
    for (p, backend) in [
        (ours(), None),
        (ours(), Some("nftables")),
        (Plugins::reference(), None),
    ] {
        let net = TestNet::new(&format!("pm{}", p.label)).unwrap();
        let client = Client::attach(&net.host).unwrap();
        let before = ruleset(&net);
        let pod = pod_with(&p, &net, "c-pm", 8080, backend);
        let body = pod._server.body.clone();
        let from = |ns: &Netns, ip: &str| cni::fetch(ns, &format!("http://{ip}:8080/"));
        assert_eq!(
            from(&client.ns, &client.host_ip),
            Some(body.clone()),
            "{} other host",
            p.label
        );
        assert_eq!(
            from(&net.host, &client.host_ip),
            Some(body.clone()),
            "{} node",
            p.label
        );
        assert_eq!(
            from(&net.host, "127.0.0.1"),
            Some(body.clone()),
            "{} localhost",
            p.label
        );
        assert_eq!(
            from(&net.host, &net.gateway()),
            Some(body.clone()),
            "{} bridge ip",
            p.label
        );

        if p.label == "keelson" {
            let inv = Invocation::new("CHECK", &pod.id, &pod.ns, "eth0");
            invoke(&p, "portmap", &net.host, &inv, &pod.pm_conf)
                .unwrap()
                .ok();
        }
        del(&p, &net, &pod);
        assert_eq!(
            from(&client.ns, &client.host_ip),
            None,
            "{} after DEL",
            p.label
        );
        let after = ruleset(&net);
        assert!(!after.contains("CNI-DN-"), "{after}");
        assert!(!after.contains("comment \"portmap"), "{after}");
        assert!(!before.contains("keelson_hostport"));
    }
}

#[test]
fn del_removes_exactly_its_own_rules() {
    let p = ours();
    let net = TestNet::new("pmdel").unwrap();
    let client = Client::attach(&net.host).unwrap();
    let a = pod(&p, &net, "c-pma", 8081);
    let b = pod(&p, &net, "c-pmb", 8082);
    let url = |port: u16| format!("http://{}:{port}/", client.host_ip);
    assert_eq!(
        cni::fetch(&client.ns, &url(8081)),
        Some(a._server.body.clone())
    );
    assert_eq!(
        cni::fetch(&client.ns, &url(8082)),
        Some(b._server.body.clone())
    );
    del(&p, &net, &a);
    assert_eq!(cni::fetch(&client.ns, &url(8081)), None);
    assert_eq!(
        cni::fetch(&client.ns, &url(8082)),
        Some(b._server.body.clone())
    );
    // A repeated DEL is fine and touches nothing else.
    del(&p, &net, &a);
    let inv = Invocation::new("CHECK", &b.id, &b.ns, "eth0");
    invoke(&p, "portmap", &net.host, &inv, &b.pm_conf)
        .unwrap()
        .ok();
    let inv = Invocation::new("CHECK", &a.id, &a.ns, "eth0");
    assert!(
        !invoke(&p, "portmap", &net.host, &inv, &a.pm_conf)
            .unwrap()
            .success
    );
    del(&p, &net, &b);
    assert!(!ruleset(&net).contains("portmap"));
}

#[test]
fn host_ip_limits_the_mapping() {
    let p = ours();
    let net = TestNet::new("pmip").unwrap();
    let client = Client::attach(&net.host).unwrap();
    let ns = Netns::new("cpmip").unwrap();
    let bconf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", "c-pmip", &ns, "eth0");
    let prev = invoke(&p, "bridge", &net.host, &inv, &bconf)
        .unwrap()
        .ok()
        .json();
    let conf = portmap_conf(
        &net,
        &prev,
        json!([{"hostPort": 8090, "containerPort": 80, "protocol": "tcp", "hostIP": client.host_ip}]),
    );
    invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
    let server = HttpServer::start(&ns, 80).unwrap();
    let via = |ip: &str| cni::fetch(&client.ns, &format!("http://{ip}:8090/"));
    assert_eq!(via(&client.host_ip), Some(server.body.clone()));
    assert_eq!(cni::fetch(&net.host, "http://127.0.0.1:8090/"), None);
    let del = inv.with_command("DEL");
    invoke(&p, "portmap", &net.host, &del, &conf).unwrap().ok();
    invoke(&p, "bridge", &net.host, &del, &bconf).unwrap().ok();
}

#[test]
fn bad_portmap_configs_change_nothing() {
    let p = ours();
    let net = TestNet::new("pmbad").unwrap();
    let ns = Netns::new("cpmbad").unwrap();
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.210.0.2/24"}]});
    let inv = Invocation::new("ADD", "c-bad", &ns, "eth0");
    let good = json!([{"hostPort": 8080, "containerPort": 80}]);
    let cases: Vec<(Value, u64)> = vec![
        (
            portmap_conf(&net, &prev, json!([{"hostPort": 0, "containerPort": 80}])),
            7,
        ),
        (
            portmap_conf(
                &net,
                &prev,
                json!([{"hostPort": 80, "containerPort": 70000}]),
            ),
            7,
        ),
        (
            portmap_conf(
                &net,
                &prev,
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
            ),
            7,
        ),
        (
            portmap_conf(
                &net,
                &prev,
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]),
            ),
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["markMasqBit"] = json!(40);
                c
            },
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["snatt"] = json!(true);
                c
            },
            2,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c.as_object_mut().unwrap().remove("prevResult");
                c
            },
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["backend"] = json!("ipchains");
                c
            },
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["externalSetMarkChain"] = json!("KT-MARK");
                c["markMasqBit"] = json!(5);
                c
            },
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["externalSetMarkChain"] = json!("KT-MARK");
                c["backend"] = json!("nftables");
                c
            },
            7,
        ),
        (
            {
                let mut c = portmap_conf(&net, &prev, good.clone());
                c["conditionsV4"] = json!(["-s", "10.0.0.1\n-A OUTPUT -j DROP"]);
                c
            },
            7,
        ),
    ];
    for (conf, code) in cases {
        let out = invoke(&p, "portmap", &net.host, &inv, &conf).unwrap();
        assert!(!out.success, "accepted {conf}");
        assert_eq!(out.code(), Some(code), "{conf}: {}", out.stdout);
        let rules = ruleset(&net);
        assert!(!rules.contains("keelson_hostport"), "{conf}");
        assert!(!rules.contains("CNI-"), "{conf}: {rules}");
    }
}

#[test]
fn ipv6_host_port_is_reachable() {
    for backend in ["iptables", "nftables"] {
        ipv6_host_port(backend);
    }
}

fn ipv6_host_port(backend: &str) {
    let p = ours();
    let net = TestNet::new("pm6").unwrap();
    let ns = Netns::new("cpm6").unwrap();
    let v6 = format!("fd11:{}", net.prefix.replace("10.", "").replace('.', ":"));
    let mut bconf = net.bridge_conf("1.0.0");
    bconf["ipam"]["ranges"] =
        json!([[{"subnet": net.subnet()}], [{"subnet": format!("{v6}::/64")}]]);
    let inv = Invocation::new("ADD", "c-pm6", &ns, "eth0");
    let prev = invoke(&p, "bridge", &net.host, &inv, &bconf)
        .unwrap()
        .ok()
        .json();
    let mut conf = portmap_conf(
        &net,
        &prev,
        json!([{"hostPort": 8086, "containerPort": 80, "protocol": "tcp"}]),
    );
    conf["backend"] = json!(backend);
    invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
    let server = HttpServer::start(&ns, 80).unwrap();
    // The bridge's IPv6 gateway address is usable once duplicate address detection is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = net
            .host
            .exec(&["ip", "-6", "addr", "show", "dev", &net.bridge])
            .unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains("tentative") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "DAD never finished");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let url = format!("http://[{v6}::1]:8086/");
    assert_eq!(
        cni::fetch(&net.host, &url),
        Some(server.body.clone()),
        "{backend}"
    );
    let inv = inv.with_command("CHECK");
    invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
    let del = inv.with_command("DEL");
    invoke(&p, "portmap", &net.host, &del, &conf).unwrap().ok();
    assert_eq!(cni::fetch(&net.host, &url), None, "{backend}");
    let out = net.host.exec(&["ip6tables-save", "-t", "nat"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("CNI-DN-"));
    invoke(&p, "bridge", &net.host, &del, &bconf).unwrap().ok();
}

#[test]
fn our_del_unmaps_a_reference_add() {
    let (o, r) = (ours(), Plugins::reference());
    let net = TestNet::new("pmmix").unwrap();
    let client = Client::attach(&net.host).unwrap();
    let a = pod(&r, &net, "c-pmmix", 8083);
    let url = format!("http://{}:8083/", client.host_ip);
    assert_eq!(cni::fetch(&client.ns, &url), Some(a._server.body.clone()));
    assert!(ruleset(&net).contains("CNI-DN-"));
    del(&o, &net, &a);
    assert_eq!(cni::fetch(&client.ns, &url), None);
    let after = ruleset(&net);
    assert!(!after.contains("CNI-DN-"), "{after}");
    assert!(net.allocated_ips().is_empty());
}

/// `iptables-save -t nat` of the test host: chain declarations (without counters) and rules,
/// sorted.
fn nat_lines(net: &TestNet) -> Vec<String> {
    let out = net.host.exec(&["iptables-save", "-t", "nat"]).unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            if l.starts_with("-A ") {
                Some(l.to_string())
            } else {
                l.strip_prefix(':')
                    .and_then(|c| c.split(' ').next())
                    .map(|c| format!(":{c}"))
            }
        })
        .collect();
    v.sort();
    v
}

#[test]
fn iptables_rules_match_the_reference_and_mix() {
    let (o, r) = (ours(), Plugins::reference());
    let net = TestNet::new("pmipt").unwrap();
    let ns = Netns::new("cpmipt").unwrap();
    let bconf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", "c-pmipt", &ns, "eth0");
    let prev = invoke(&o, "bridge", &net.host, &inv, &bconf)
        .unwrap()
        .ok()
        .json();
    let conf = portmap_conf(
        &net,
        &prev,
        json!([
            {"hostPort": 8091, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8092, "containerPort": 81, "protocol": "tcp"},
            {"hostPort": 8093, "containerPort": 53, "protocol": "udp"},
            {"hostPort": 8094, "containerPort": 82, "protocol": "tcp", "hostIP": "10.77.0.1"},
        ]),
    );
    let del = inv.with_command("DEL");
    let mut layouts = Vec::new();
    for (adder, deleter) in [(&o, &r), (&r, &o), (&o, &o)] {
        let what = format!("ADD {} DEL {}", adder.label, deleter.label);
        invoke(adder, "portmap", &net.host, &inv, &conf)
            .unwrap()
            .ok();
        let rules = nat_lines(&net);
        assert!(
            rules.iter().any(|l| l.contains("-j CNI-HOSTPORT-SETMARK")),
            "{what}: {rules:?}"
        );
        // Our CHECK accepts the rules of either implementation.
        invoke(&o, "portmap", &net.host, &inv.with_command("CHECK"), &conf)
            .unwrap()
            .ok();
        layouts.push(rules);
        invoke(deleter, "portmap", &net.host, &del, &conf)
            .unwrap()
            .ok();
        let after = nat_lines(&net);
        assert!(
            !after.iter().any(|l| l.contains("CNI-DN-")),
            "{what}: {after:?}"
        );
        // What stays is the shared top-level chains, as the reference leaves them.
        let builtin = [":INPUT", ":OUTPUT", ":POSTROUTING", ":PREROUTING"];
        assert!(
            after
                .iter()
                .all(|l| l.contains("CNI-HOSTPORT-") || builtin.contains(&l.as_str())),
            "{what}: {after:?}"
        );
        let out = invoke(&o, "portmap", &net.host, &inv.with_command("CHECK"), &conf).unwrap();
        assert!(!out.success, "{what}: CHECK passed after DEL");
    }
    assert_eq!(layouts[0], layouts[1], "same rules as the reference");
    assert_eq!(layouts[0], layouts[2]);
    invoke(&o, "bridge", &net.host, &del, &bconf).unwrap().ok();
}

#[test]
fn external_set_mark_chain_like_the_reference() {
    let mut layouts = Vec::new();
    for p in [ours(), Plugins::reference()] {
        let net = TestNet::new("pmext").unwrap();
        let out = net
            .host
            .exec(&["iptables", "-t", "nat", "-N", "KT-MARK"])
            .unwrap();
        assert!(out.status.success());
        let ns = Netns::new("cpmext").unwrap();
        let inv = Invocation::new("ADD", "c-pmext", &ns, "eth0");
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": ns.path()}],
            "ips": [{"interface": 0, "address": "10.211.0.2/24"}],
        });
        let mut conf = portmap_conf(
            &net,
            &prev,
            json!([{"hostPort": 8095, "containerPort": 80, "protocol": "tcp"}]),
        );
        conf["name"] = json!("kt-pmext");
        conf["externalSetMarkChain"] = json!("KT-MARK");
        invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
        let rules = nat_lines(&net);
        assert!(rules.iter().any(|l| l.ends_with("-j KT-MARK")), "{rules:?}");
        assert!(
            !rules.iter().any(|l| l.contains("CNI-HOSTPORT-SETMARK")),
            "{rules:?}"
        );
        layouts.push(rules);
        invoke(&p, "portmap", &net.host, &inv.with_command("DEL"), &conf)
            .unwrap()
            .ok();
        assert!(!nat_lines(&net).iter().any(|l| l.contains("CNI-DN-")));
    }
    assert_eq!(layouts[0], layouts[1]);
}

/// A UDP socket bound in `ns`: made by a thread that joined the namespace (a socket stays in the
/// namespace it was made in, whichever thread uses it later).
fn udp_socket_in(ns: &Netns, bind: &str) -> std::net::UdpSocket {
    std::thread::scope(|s| {
        s.spawn(|| {
            cni::enter_netns(ns).unwrap();
            std::net::UdpSocket::bind(bind).unwrap()
        })
        .join()
        .unwrap()
    })
}

/// The conntrack entries of `ns` (`/proc/net/nf_conntrack` read inside it) of UDP flows to
/// `port`.
fn udp_entries_to(ns: &Netns, port: u16) -> Vec<String> {
    let out = ns.exec(&["cat", "/proc/net/nf_conntrack"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" udp ") && l.contains(&format!(" dport={port} ")))
        .map(String::from)
        .collect()
}

/// A UDP flow that began before its host port was mapped (so conntrack recorded it un-NATed and
/// keeps it so while packets come) reaches the container after ADD: the ADD deletes the UDP
/// conntrack entries to the mapped host port, as the reference does.
#[test]
fn add_deletes_stale_udp_conntrack_entries_like_the_reference() {
    for (p, backend) in [
        (ours(), None),
        (ours(), Some("nftables")),
        (Plugins::reference(), None),
    ] {
        let label = format!("{} {backend:?}", p.label);
        let net = TestNet::new(&format!("pmu{}", p.label)).unwrap();
        let client = Client::attach(&net.host).unwrap();
        // Connection tracking on in the test host (both families), as on any node with NAT
        // rules.
        let out = net
            .host
            .exec(&[
                "nft",
                "add table inet kt_ct; \
                 add chain inet kt_ct pre { type filter hook prerouting priority -150; }; \
                 add rule inet kt_ct pre ct state new counter",
            ])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let ns = Netns::new("cpmu").unwrap();
        // Dual stack: the entries of both families' tables go.
        let v6 = format!("fd12:{}", net.prefix.replace("10.", "").replace('.', ":"));
        let mut bconf = net.bridge_conf("1.0.0");
        bconf["ipam"]["ranges"] =
            json!([[{"subnet": net.subnet()}], [{"subnet": format!("{v6}::/64")}]]);
        let inv = Invocation::new("ADD", "c-pmu", &ns, "eth0");
        let prev = invoke(&p, "bridge", &net.host, &inv, &bconf)
            .unwrap()
            .ok()
            .json();
        let server = udp_socket_in(&ns, "0.0.0.0:5353");
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        // One client socket throughout: the same source port, so the same conntrack tuple.
        let sender = udp_socket_in(&client.ns, "0.0.0.0:0");
        let target = format!("{}:9053", client.host_ip);
        // Before the mapping: to the host itself (nothing listens), tracked without NAT.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while udp_entries_to(&net.host, 9053).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: no conntrack entry"
            );
            sender.send_to(b"early", &target).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // An IPv6 flow to the port from the node itself.
        let local6 = udp_socket_in(&net.host, "[::1]:0");
        while !udp_entries_to(&net.host, 9053)
            .iter()
            .any(|l| l.starts_with("ipv6"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: no IPv6 conntrack entry"
            );
            local6.send_to(b"early", "[::1]:9053").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }

        let mut conf = portmap_conf(
            &net,
            &prev,
            json!([{"hostPort": 9053, "containerPort": 5353, "protocol": "udp"}]),
        );
        if let Some(b) = backend {
            conf["backend"] = json!(b);
        }
        invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
        let left = udp_entries_to(&net.host, 9053);
        assert!(
            left.is_empty(),
            "{label}: stale entries after ADD: {left:?}"
        );

        // The same flow now reaches the container.
        let mut got = None;
        let mut buf = [0u8; 64];
        for _ in 0..10 {
            sender.send_to(b"late", &target).unwrap();
            if let Ok((n, _)) = server.recv_from(&mut buf) {
                got = Some(buf[..n].to_vec());
                break;
            }
        }
        assert_eq!(got.as_deref(), Some(&b"late"[..]), "{label}");

        let inv = Invocation::new("DEL", "c-pmu", &ns, "eth0");
        invoke(&p, "portmap", &net.host, &inv, &conf).unwrap().ok();
        invoke(&p, "bridge", &net.host, &inv, &bconf).unwrap().ok();
    }
}
