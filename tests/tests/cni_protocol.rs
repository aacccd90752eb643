//! The CNI protocol of keelson's plugins: commands, error codes, versions, DEL idempotence,
//! bad input that changes nothing. Every test runs the plugins inside its own "host" netns.

use keelson_tests::Netns;
use keelson_tests::cni::{self, Invocation, Plugins, TestNet, invoke, invoke_raw};
use keelson_tests::unique;
use serde_json::{Value, json};

fn ours() -> Plugins {
    Plugins::keelson().expect("keelson CNI plugins")
}

/// The host netns holds nothing but lo, and no address is allocated.
fn assert_untouched(net: &TestNet) {
    assert_eq!(cni::link_names(&net.host).unwrap(), vec!["lo".to_string()]);
    assert!(net.allocated_ips().is_empty(), "{:?}", net.allocations());
}

#[test]
fn version_lists_supported_versions() {
    let p = ours();
    let net = TestNet::new("ver").unwrap();
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        let inv = Invocation {
            command: "VERSION".into(),
            ..Default::default()
        };
        let out = invoke(&p, plugin, &net.host, &inv, &json!({"cniVersion": "1.1.0"}))
            .unwrap()
            .ok();
        let v = out.json();
        assert_eq!(v["cniVersion"], "1.1.0", "{plugin}");
        let sup: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(sup.contains(&want), "{plugin} lacks {want}: {sup:?}");
        }
    }
}

#[test]
fn add_check_del_in_every_version() {
    let p = ours();
    let net = TestNet::new("vers").unwrap();
    let c = Netns::new("cvers").unwrap();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let id = unique::container_id("v");
        let conf = net.bridge_conf(version);
        let inv = Invocation::new("ADD", &id, &c, "eth0");
        let res = invoke(&p, "bridge", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json();
        assert_eq!(res["cniVersion"], version);
        let ip = &res["ips"][0];
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: {res}");
        } else {
            assert!(ip.get("version").is_none(), "{version}: {res}");
        }
        assert_eq!(ip["interface"], 2);
        assert_eq!(
            res["interfaces"][2]["sandbox"],
            c.path().display().to_string()
        );
        let mut checked = conf.clone();
        checked["prevResult"] = res.clone();
        let out = invoke(
            &p,
            "bridge",
            &net.host,
            &inv.with_command("CHECK"),
            &checked,
        )
        .unwrap();
        if version.starts_with("0.3") {
            assert_eq!(out.code(), Some(1), "CHECK needs 0.4.0: {}", out.stdout);
        } else {
            out.ok();
        }
        invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &checked)
            .unwrap()
            .ok();
        let lo = vec!["lo".to_string()];
        assert_eq!(cni::settled_link_names(&c, &lo), lo);
    }
    assert!(net.allocated_ips().is_empty());
}

#[test]
fn missing_env_is_code_4() {
    let p = ours();
    let net = TestNet::new("env").unwrap();
    let c = Netns::new("cenv").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let mut inv = Invocation::new("ADD", "c1", &c, "eth0");
    inv.netns = None;
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
    assert!(!out.success);
    assert_eq!(out.code(), Some(4), "{}", out.stdout);
    assert!(out.stdout.contains("CNI_NETNS"), "{}", out.stdout);

    let mut inv = Invocation::new("ADD", "c1", &c, "eth0");
    inv.unset = vec!["CNI_COMMAND"];
    assert_eq!(
        invoke(&p, "bridge", &net.host, &inv, &conf).unwrap().code(),
        Some(4)
    );
    let inv = Invocation::new("FROB", "c1", &c, "eth0");
    assert_eq!(
        invoke(&p, "bridge", &net.host, &inv, &conf).unwrap().code(),
        Some(4)
    );
    let mut inv = Invocation::new("ADD", "c1", &c, "eth0");
    inv.unset = vec!["CNI_CONTAINERID"];
    assert_eq!(
        invoke(&p, "host-local", &net.host, &inv, &conf)
            .unwrap()
            .code(),
        Some(4)
    );
    assert_untouched(&net);
}

fn refused(p: &Plugins, net: &TestNet, c: &Netns, conf: &Value, code: u64, needle: &str) {
    let inv = Invocation::new("ADD", "c-bad", c, "eth0");
    let out = invoke(p, "bridge", &net.host, &inv, conf).unwrap();
    assert!(!out.success, "accepted: {conf}");
    assert_eq!(out.code(), Some(code), "{conf}: {}", out.stdout);
    assert!(out.json()["msg"].is_string());
    assert!(
        out.stdout.contains(needle),
        "{needle:?} not in {}",
        out.stdout
    );
    assert_untouched(net);
    assert_eq!(cni::link_names(c).unwrap(), vec!["lo".to_string()]);
}

#[test]
fn bad_configs_get_the_right_code_and_change_nothing() {
    let p = ours();
    let net = TestNet::new("bad").unwrap();
    let c = Netns::new("cbad").unwrap();

    let inv = Invocation::new("ADD", "c-bad", &c, "eth0");
    let out = invoke_raw(&p, "bridge", &net.host, &inv, b"{\"cniVersion\": ").unwrap();
    assert_eq!(out.code(), Some(6), "{}", out.stdout);
    assert_untouched(&net);

    let mut conf = net.bridge_conf("1.0.0");
    conf["frobnicate"] = json!(true);
    refused(&p, &net, &c, &conf, 2, "frobnicate");

    let mut conf = net.bridge_conf("1.0.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.300.0.0/24"}]]);
    refused(&p, &net, &c, &conf, 7, "10.300.0.0/24");

    let mut conf = net.bridge_conf("1.0.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.201.0.0/31"}]]);
    refused(&p, &net, &c, &conf, 7, "too small");

    let mut conf = net.bridge_conf("1.0.0");
    conf["bridge"] = json!("abcdefghijklmnop");
    refused(&p, &net, &c, &conf, 7, "abcdefghijklmnop");

    let mut conf = net.bridge_conf("1.0.0");
    conf["cniVersion"] = json!("0.2.0");
    refused(&p, &net, &c, &conf, 1, "0.2.0");

    let mut conf = net.bridge_conf("1.0.0");
    conf["mtu"] = json!("big");
    refused(&p, &net, &c, &conf, 7, "big");

    let mut conf = net.bridge_conf("1.0.0");
    conf["ipam"]["gateway"] = json!("10.9.9.9");
    conf["ipam"]["subnet"] = json!("10.202.0.0/24");
    refused(&p, &net, &c, &conf, 7, "not in network");
}

#[test]
fn del_is_idempotent() {
    let p = ours();
    let net = TestNet::new("del").unwrap();
    let c = Netns::new("cdel").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", "c-del", &c, "eth0");
    let res = invoke(&p, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res;
    let del = inv.with_command("DEL");
    invoke(&p, "bridge", &net.host, &del, &with_prev)
        .unwrap()
        .ok();
    // Repeated, without prevResult, with an empty and with a vanished netns.
    invoke(&p, "bridge", &net.host, &del, &with_prev)
        .unwrap()
        .ok();
    invoke(&p, "bridge", &net.host, &del, &conf).unwrap().ok();
    let mut empty = del.clone();
    empty.netns = Some(String::new());
    invoke(&p, "bridge", &net.host, &empty, &conf).unwrap().ok();
    let mut unset = del.clone();
    unset.netns = None;
    invoke(&p, "bridge", &net.host, &unset, &conf).unwrap().ok();

    // ADD, then the container's netns disappears before DEL.
    let c2 = Netns::new("cdel2").unwrap();
    let inv2 = Invocation::new("ADD", "c-del2", &c2, "eth0");
    invoke(&p, "bridge", &net.host, &inv2, &conf).unwrap().ok();
    drop(c2);
    invoke(&p, "bridge", &net.host, &inv2.with_command("DEL"), &conf)
        .unwrap()
        .ok();
    invoke(
        &p,
        "loopback",
        &net.host,
        &inv2.with_command("DEL"),
        &json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}),
    )
    .unwrap()
    .ok();
    assert!(net.allocated_ips().is_empty(), "{:?}", net.allocations());
    // Deleting a netns removes its veth end and with it the host end (asynchronously, in the
    // kernel's netns cleanup work).
    let want = vec![net.bridge.clone(), "lo".to_string()];
    assert_eq!(cni::settled_link_names(&net.host, &want), want);
}

#[test]
fn exhausted_range_is_a_clear_error_and_leaves_nothing() {
    let p = ours();
    let net = TestNet::new("exh").unwrap();
    let c1 = Netns::new("cexh1").unwrap();
    let c2 = Netns::new("cexh2").unwrap();
    let mut conf = net.bridge_conf("1.0.0");
    // A /30 holds .1 (gateway) and .2 only.
    conf["ipam"]["ranges"] = json!([[{"subnet": format!("{}.0/30", net.prefix)}]]);
    invoke(
        &p,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-e1", &c1, "eth0"),
        &conf,
    )
    .unwrap()
    .ok();
    let out = invoke(
        &p,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-e2", &c2, "eth0"),
        &conf,
    )
    .unwrap();
    assert!(!out.success);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or("")
            .contains("no IP addresses available"),
        "{}",
        out.stdout
    );
    assert_eq!(cni::link_names(&c2).unwrap(), vec!["lo".to_string()]);
    assert_eq!(net.allocated_ips(), vec![format!("{}.2", net.prefix)]);
    let links = cni::link_names(&net.host).unwrap();
    assert_eq!(links.len(), 3, "bridge, lo and c1's veth only: {links:?}");
}

#[test]
fn loopback_up_and_down() {
    let p = ours();
    let net = TestNet::new("lo").unwrap();
    let c = Netns::new("clo").unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let inv = Invocation::new("ADD", "c-lo", &c, "lo");
    let res = invoke(&p, "loopback", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    assert_eq!(res["interfaces"][0]["name"], "lo");
    assert_eq!(res["ips"][0]["address"], "127.0.0.1/8");
    assert!(cni::ping(&c, "127.0.0.1").unwrap());
    let mut checked = conf.clone();
    checked["prevResult"] = res;
    invoke(
        &p,
        "loopback",
        &net.host,
        &inv.with_command("CHECK"),
        &checked,
    )
    .unwrap()
    .ok();
    invoke(&p, "loopback", &net.host, &inv.with_command("DEL"), &conf)
        .unwrap()
        .ok();
    let v = cni::ip_json(&c, &["link", "show", "lo"]).unwrap();
    let flags = v[0]["flags"].as_array().unwrap();
    assert!(!flags.iter().any(|f| f == "UP"), "{flags:?}");
}

#[test]
fn status_and_gc() {
    let p = ours();
    let net = TestNet::new("gc").unwrap();
    let c = Netns::new("cgc").unwrap();
    let conf = net.bridge_conf("1.1.0");
    let keep = Invocation::new("ADD", "c-keep", &c, "eth0");
    invoke(&p, "bridge", &net.host, &keep, &conf).unwrap().ok();
    let stale = Invocation::new("ADD", "c-stale", &c, "eth1");
    invoke(&p, "host-local", &net.host, &stale, &conf)
        .unwrap()
        .ok();
    assert_eq!(net.allocated_ips().len(), 2);
    let st = Invocation {
        command: "STATUS".into(),
        ..Default::default()
    };
    invoke(&p, "bridge", &net.host, &st, &conf).unwrap().ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    let inv = Invocation {
        command: "GC".into(),
        ..Default::default()
    };
    let mut with_path = inv.clone();
    with_path.container_id = String::new();
    invoke(&p, "bridge", &net.host, &with_path, &gc)
        .unwrap()
        .ok();
    assert_eq!(net.allocated_ips(), vec![format!("{}.2", net.prefix)]);
    // STATUS and GC need 1.1.0.
    let out = invoke(&p, "bridge", &net.host, &st, &net.bridge_conf("1.0.0")).unwrap();
    assert_eq!(out.code(), Some(1));
}

#[test]
fn concurrent_allocations_are_distinct() {
    let p = ours();
    let net = TestNet::new("race").unwrap();
    let c = Netns::new("crace").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let ips: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (p, net, c, conf) = (&p, &net, &c, &conf);
                s.spawn(move || {
                    let inv = Invocation::new("ADD", &format!("c-race-{i}"), c, "eth0");
                    let v = invoke(p, "host-local", &net.host, &inv, conf)
                        .unwrap()
                        .ok()
                        .json();
                    v["ips"][0]["address"].as_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 16, "{ips:?}");
    assert_eq!(net.allocated_ips().len(), 16);
}

#[test]
fn existing_container_interface_is_refused_and_undone() {
    let p = ours();
    let net = TestNet::new("dup").unwrap();
    let c = Netns::new("cdup").unwrap();
    let conf = net.bridge_conf("1.0.0");
    invoke(
        &p,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-dup1", &c, "eth0"),
        &conf,
    )
    .unwrap()
    .ok();
    let links = cni::link_names(&net.host).unwrap();
    let out = invoke(
        &p,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-dup2", &c, "eth0"),
        &conf,
    )
    .unwrap();
    assert!(!out.success);
    assert!(out.stdout.contains("already exists"), "{}", out.stdout);
    assert_eq!(cni::link_names(&net.host).unwrap(), links);
    assert_eq!(net.allocated_ips(), vec![format!("{}.2", net.prefix)]);
}

#[test]
fn requested_ips_are_assigned_or_refused() {
    let p = ours();
    let net = TestNet::new("req").unwrap();
    let c1 = Netns::new("creq1").unwrap();
    let c2 = Netns::new("creq2").unwrap();
    let c3 = Netns::new("creq3").unwrap();
    let conf = net.bridge_conf("1.0.0");
    // CNI_ARGS IP=...
    let mut inv = Invocation::new("ADD", "c-r1", &c1, "eth0");
    inv.args = Some(format!("IgnoreUnknown=1;IP={}.77", net.prefix));
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap().ok();
    assert_eq!(
        out.json()["ips"][0]["address"].as_str().unwrap_or_default(),
        format!("{}.77/24", net.prefix),
        "{}",
        out.stdout
    );
    // The runtimeConfig `ips` capability.
    let mut with_rc = conf.clone();
    with_rc["runtimeConfig"] = json!({"ips": [format!("{}.88/24", net.prefix)]});
    let out = invoke(
        &p,
        "bridge",
        &net.host,
        &Invocation::new("ADD", "c-r2", &c2, "eth0"),
        &with_rc,
    )
    .unwrap()
    .ok();
    assert!(
        out.stdout.contains(&format!("{}.88/24", net.prefix)),
        "{}",
        out.stdout
    );
    // A taken address, and one outside every range, are refused and leave nothing.
    let mut inv = Invocation::new("ADD", "c-r3", &c3, "eth0");
    inv.args = Some(format!("IgnoreUnknown=1;IP={}.77", net.prefix));
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or("")
            .contains("is not available"),
        "{}",
        out.stdout
    );
    inv.args = Some("IgnoreUnknown=1;IP=192.0.2.9".into());
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or("")
            .contains("were not assigned"),
        "{}",
        out.stdout
    );
    assert_eq!(cni::link_names(&c3).unwrap(), vec!["lo".to_string()]);
    let mut ips = net.allocated_ips();
    ips.sort();
    assert_eq!(
        ips,
        vec![format!("{}.77", net.prefix), format!("{}.88", net.prefix)]
    );
}

#[test]
fn check_verifies_mtu_hairpin_promisc_and_sysctls() {
    let p = ours();
    let net = TestNet::new("chk").unwrap();
    let c = Netns::new("cchk").unwrap();
    let mut conf = net.bridge_conf("1.0.0");
    conf["mtu"] = json!(1400);
    conf["hairpinMode"] = json!(true);
    conf["promiscMode"] = json!(true);
    let inv = Invocation::new("ADD", "c-chk", &c, "eth0");
    let res = invoke(&p, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    let mut chk = conf.clone();
    chk["prevResult"] = res;
    let check = || invoke(&p, "bridge", &net.host, &inv.with_command("CHECK"), &chk).unwrap();
    check().ok();
    let run = |ns: &Netns, args: &[&str]| {
        let out = ns.exec(args).unwrap();
        assert!(out.status.success(), "{args:?}");
    };
    let arp = "/proc/sys/net/ipv4/conf/eth0/arp_notify";
    let breakages: Vec<(&str, Vec<&str>, Vec<&str>, &Netns)> = vec![
        (
            "MTU",
            vec!["ip", "link", "set", "eth0", "mtu", "1300"],
            vec!["ip", "link", "set", "eth0", "mtu", "1400"],
            &c,
        ),
        (
            "hairpin",
            vec![
                "ip",
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "off",
            ],
            vec![
                "ip",
                "link",
                "set",
                &veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ],
            &net.host,
        ),
        (
            "promisc",
            vec!["ip", "link", "set", &net.bridge, "promisc", "off"],
            vec!["ip", "link", "set", &net.bridge, "promisc", "on"],
            &net.host,
        ),
    ];
    for (what, breaks, repairs, ns) in breakages {
        run(ns, &breaks);
        let out = check();
        assert!(!out.success, "CHECK passed with a wrong {what}");
        assert!(
            out.stdout.to_lowercase().contains(&what.to_lowercase()),
            "{what}: {}",
            out.stdout
        );
        run(ns, &repairs);
        check().ok();
    }
    run(&c, &["sh", "-c", &format!("echo 0 > {arp}")]);
    let out = check();
    assert!(
        !out.success && out.stdout.contains("arp_notify"),
        "{}",
        out.stdout
    );
    run(&c, &["sh", "-c", &format!("echo 1 > {arp}")]);
    check().ok();

    // A vanished container netns is an unknown container (code 3), for bridge and loopback.
    let mut gone = inv.with_command("CHECK");
    gone.netns = Some(format!("/run/netns/{}", unique::name("gone", "x")));
    let out = invoke(&p, "bridge", &net.host, &gone, &chk).unwrap();
    assert_eq!(out.code(), Some(3), "{}", out.stdout);
    let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let out = invoke(&p, "loopback", &net.host, &gone, &lo).unwrap();
    assert_eq!(out.code(), Some(3), "{}", out.stdout);
    // host-local knows no allocation of another container: code 3 too.
    let other = Invocation::new("CHECK", "c-other", &c, "eth0");
    let out = invoke(&p, "host-local", &net.host, &other, &chk).unwrap();
    assert_eq!(out.code(), Some(3), "{}", out.stdout);

    invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &conf)
        .unwrap()
        .ok();
}

#[test]
fn locked_store_is_try_again_later() {
    use std::os::unix::fs::OpenOptionsExt;
    let p = ours();
    let net = TestNet::new("lock").unwrap();
    let c = Netns::new("clock").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let dir = net.data_dir.path().join(&net.name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))
        .unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut inv = Invocation::new("ADD", "c-lock", &c, "eth0");
    inv.env = vec![("KEELSON_CNI_LOCK_TIMEOUT_MS".into(), "300".into())];
    let out = invoke(&p, "host-local", &net.host, &inv, &conf).unwrap();
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    // Through bridge too, which undoes its links.
    let out = invoke(&p, "bridge", &net.host, &inv, &conf).unwrap();
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    assert_eq!(cni::link_names(&c).unwrap(), vec!["lo".to_string()]);
    drop(lock);
    invoke(&p, "bridge", &net.host, &inv, &conf).unwrap().ok();
    assert_eq!(net.allocated_ips().len(), 1);
    invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &conf)
        .unwrap()
        .ok();
    assert!(net.allocated_ips().is_empty());
}

#[test]
fn status_of_an_unusable_store_is_50() {
    let p = ours();
    let net = TestNet::new("st50").unwrap();
    let file = net.data_dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let mut conf = net.bridge_conf("1.1.0");
    conf["ipam"]["dataDir"] = json!(file);
    let st = Invocation {
        command: "STATUS".into(),
        ..Default::default()
    };
    for plugin in ["host-local", "bridge"] {
        let out = invoke(&p, plugin, &net.host, &st, &conf).unwrap();
        assert_eq!(out.code(), Some(50), "{plugin}: {}", out.stdout);
    }
    let pm = json!({"cniVersion": "1.1.0", "name": net.name, "type": "portmap"});
    invoke(&p, "portmap", &net.host, &st, &pm).unwrap().ok();
}

/// DEL frees the container's interface name before it returns (the link is down and renamed
/// out of the way; a detached process finishes the kernel's slow unregister): an ADD of the
/// same name right after works, and the old pair is gone a moment later.
#[test]
fn del_frees_the_name_at_once_and_the_old_pair_goes_after() {
    let p = ours();
    let net = TestNet::new("delfree").unwrap();
    let c = Netns::new("cdelfree").unwrap();
    let conf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", "c-delfree", &c, "eth0");
    let host_veth = |res: &Value| -> String {
        res["interfaces"][1]["name"]
            .as_str()
            .expect("host veth in the result")
            .to_string()
    };
    let add = || {
        invoke(&p, "bridge", &net.host, &inv, &conf)
            .unwrap()
            .ok()
            .json()
    };
    let del = |res: Value| {
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res;
        let del = inv.with_command("DEL");
        invoke(&p, "bridge", &net.host, &del, &with_prev)
            .unwrap()
            .ok();
    };
    let first = add();
    let old_veth = host_veth(&first);
    assert!(old_veth.starts_with("veth"), "{first}");
    del(first);
    let now = cni::link_names(&c).unwrap();
    assert!(!now.contains(&"eth0".to_string()), "{now:?}");
    assert!(net.allocated_ips().is_empty(), "{:?}", net.allocations());
    let second = add();
    let new_veth = host_veth(&second);
    assert_ne!(new_veth, old_veth);
    let want = vec!["eth0".to_string(), "lo".to_string()];
    assert_eq!(cni::settled_link_names(&c, &want), want);
    let mut want = vec![net.bridge.clone(), "lo".to_string(), new_veth];
    want.sort();
    assert_eq!(cni::settled_link_names(&net.host, &want), want);
    del(second);
    let lo = vec!["lo".to_string()];
    assert_eq!(cni::settled_link_names(&c, &lo), lo);
    let want = vec![net.bridge.clone(), "lo".to_string()];
    assert_eq!(cni::settled_link_names(&net.host, &want), want);
}

/// The plugins are linked statically and not position-independent (cni-plugins/build.rs): a
/// plugin call is a process start, and the dynamic loader's work is a good part of one.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn the_plugins_are_static_and_not_pie() {
    let p = ours();
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        if let Err(e) = keelson_static_link::check_static_no_pie(&p.bin(plugin)) {
            panic!("{e} (cni-plugins/build.rs)");
        }
    }
}

/// Both ends of the pod's veth are created with one TX and one RX queue (what the kernel cuts
/// a veth down to anyway; asking for it up front spares a grace-period wait under the RTNL).
#[test]
fn the_veth_pair_has_one_queue_each_way() {
    let p = ours();
    let net = TestNet::new("vq").unwrap();
    let c = Netns::new("cvq").unwrap();
    let id = unique::container_id("vq");
    let conf = net.bridge_conf("1.0.0");
    let inv = Invocation::new("ADD", &id, &c, "eth0");
    let res = invoke(&p, "bridge", &net.host, &inv, &conf)
        .unwrap()
        .ok()
        .json();
    let host_end = res["interfaces"][1]["name"].as_str().unwrap().to_string();
    let queues = |ns: &Netns, dev: &str| {
        let out = ns.exec(&["ip", "-d", "link", "show", "dev", dev]).unwrap();
        assert!(out.status.success(), "ip -d link show {dev}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |name: &str| {
            let words: Vec<&str> = text.split_whitespace().collect();
            words
                .windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].to_string())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("numtxqueues"), field("numrxqueues"))
    };
    assert_eq!(queues(&net.host, &host_end), ("1".into(), "1".into()));
    assert_eq!(queues(&c, "eth0"), ("1".into(), "1".into()));
    invoke(&p, "bridge", &net.host, &inv.with_command("DEL"), &conf)
        .unwrap()
        .ok();
    assert!(net.allocated_ips().is_empty());
}
