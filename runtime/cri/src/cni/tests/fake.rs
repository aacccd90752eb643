//! The CNI caller against shell-script plugins that record their stdin, environment and call
//! order: what libcni puts on a plugin's stdin and in its environment, result versions, CHECK
//! rules, timeouts, STATUS, GC and conf-dir discovery.

use std::fs;
use std::time::Duration;

use serde_json::json;

use super::*;

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

#[test]
fn status_runs_plugins_only_for_cni_1_1() {
    let dirs = Dirs::new();
    let d = dirs.dump.display();
    dirs.script(
        "notready",
        &format!(
            "cat > {d}/$CNI_COMMAND-notready.json\n\
             echo \"notready $CNI_COMMAND $CNI_CONTAINERID\" >> {d}/order\n\
             if [ \"$CNI_COMMAND\" = STATUS ]; then\n\
               echo '{{\"cniVersion\":\"1.1.0\",\"code\":50,\"msg\":\"plugin not available\"}}'; exit 1\n\
             fi"
        ),
    );
    let cni = dirs.cni(Duration::from_secs(20));
    let conf = |v: &str| {
        serde_json::to_vec(
            &json!({"cniVersion": v, "name": "st", "plugins": [{"type": "notready", "k": 1}]}),
        )
        .expect("json")
    };
    cni.network_from_conflist(&conf("1.0.0"))
        .expect("network")
        .status()
        .expect("a 1.0.0 list is always ready");
    assert!(dirs.order().is_empty(), "{:?}", dirs.order());

    let err = cni
        .network_from_conflist(&conf("1.1.0"))
        .expect("network")
        .status()
        .expect_err("plugin says not ready");
    assert_eq!(err.code(), Some(50), "{err}");
    assert!(
        matches!(
            &err,
            CniError::Plugin {
                command: Command::Status,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(dirs.order(), vec!["notready STATUS "]);
    let stdin = dirs.dumped("STATUS", "notready");
    assert_eq!(
        (&stdin["name"], &stdin["cniVersion"], &stdin["k"]),
        (&json!("st"), &json!("1.1.0"), &json!(1))
    );
}

#[test]
fn gc_deletes_stale_cached_attachments_and_tells_plugins_the_valid_ones() {
    let dirs = Dirs::new();
    let result = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.213.7.2/24"}]});
    dirs.recorder("rec", &result);
    let cni = dirs.cni(Duration::from_secs(20));
    let conf = json!({"cniVersion": "1.1.0", "name": "gcnet", "plugins": [{"type": "rec"}]});
    let network = cni
        .network_from_conflist(&serde_json::to_vec(&conf).expect("json"))
        .expect("network");
    let keep = Attachment::new("keep1", "/run/netns/k", "eth0");
    let stale = Attachment::new("stale1", "/run/netns/s", "eth0").with_arg("K8S_POD_NAME", "old");
    network.add(&keep).expect("ADD keep");
    network.add(&stale).expect("ADD stale");
    // Another network's entry is not this network's business.
    let other = cni
        .network_from_conflist(
            br#"{"cniVersion":"1.1.0","name":"othernet","plugins":[{"type":"rec"}]}"#,
        )
        .expect("network");
    other.add(&stale).expect("ADD other");

    let valid = [GcAttachment {
        container_id: "keep1".into(),
        ifname: "eth0".into(),
    }];
    network.gc(&valid).expect("GC");
    let mut left: Vec<(String, String)> = cni
        .cached_attachments(None)
        .into_iter()
        .map(|c| (c.network_name, c.container_id))
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            ("gcnet".to_string(), "keep1".to_string()),
            ("othernet".to_string(), "stale1".to_string())
        ]
    );
    // The stale one was DELed with what its ADD used.
    let del_env = fs::read_to_string(dirs.dump.join("DEL-rec.env")).expect("env");
    assert!(del_env.contains("CNI_CONTAINERID=stale1"), "{del_env}");
    assert!(del_env.contains("CNI_NETNS=/run/netns/s"), "{del_env}");
    assert!(del_env.contains("CNI_ARGS=K8S_POD_NAME=old"), "{del_env}");
    assert_eq!(dirs.dumped("DEL", "rec")["prevResult"], result);
    let gc = dirs.dumped("GC", "rec");
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID": "keep1", "ifname": "eth0"}])
    );
    assert_eq!(gc["name"], "gcnet");

    // disableGC: nothing runs.
    let before = dirs.order().len();
    let off = json!({"cniVersion": "1.1.0", "name": "gcnet", "disableGC": true, "plugins": [{"type": "rec"}]});
    cni.network_from_conflist(&serde_json::to_vec(&off).expect("json"))
        .expect("network")
        .gc(&[])
        .expect("GC off");
    assert_eq!(dirs.order().len(), before);
    assert_eq!(cni.cached_attachments(Some("keep1")).len(), 1);
}
