//! Registry protocol details against a real docker-registry behind a test proxy
//! (keelson_tests::regproxy): bearer-token auth (anonymous tokens, a token endpoint behind
//! basic credentials, a CRI `registry_token`), a re-pull of an unchanged tag costing one HEAD,
//! blob downloads resumed with HTTP ranges after a connection breaks off (in one pull and
//! across pulls), and hosts.toml settings: `ca`, `skip_verify`, `header`, `override_path` and
//! `client` against a TLS proxy.

use std::fs;
use std::path::Path;
use std::process::Command;

use keelson_image::auth::HostOptions;
use keelson_image::{AuthConfig, Error, ImageStore, RegistryHosts, StoreConfig};
use keelson_tests::images::{Compression, ImageSpec, LayerBuilder, Layout};
use keelson_tests::registry::Registry;
use keelson_tests::regproxy::{ProxyConfig, RegistryProxy, TOKEN_SERVICE, TokenAuth};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn store_with(hosts: RegistryHosts) -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::Builder::new()
        .prefix("kt-store-")
        .tempdir()
        .unwrap();
    let mut cfg = StoreConfig::new(dir.path().join("root"));
    cfg.hosts = hosts;
    let s = ImageStore::open(cfg).unwrap();
    (dir, s)
}

fn new_store() -> (tempfile::TempDir, ImageStore) {
    store_with(RegistryHosts::default())
}

fn small_image(label: &str) -> ImageSpec {
    let base = LayerBuilder::busybox_base().unwrap().finish();
    let top = LayerBuilder::new().file("label", label.as_bytes()).finish();
    let mut spec = ImageSpec::new(vec![(base, Compression::Gzip), (top, Compression::Gzip)]);
    spec.label = Some(label.to_string());
    spec
}

/// Pushes `spec` as `<repo>:<tag>`; returns the manifest JSON.
fn push(reg: &Registry, spec: &ImageSpec, repo: &str, tag: &str) -> serde_json::Value {
    let mut layout = Layout::new().unwrap();
    let d = layout.add_tagged(spec, tag).unwrap();
    reg.push_layout(layout.path(), tag, repo, &[]).unwrap();
    serde_json::from_slice(&fs::read(layout.blob_path(d["digest"].as_str().unwrap())).unwrap())
        .unwrap()
}

#[test]
fn bearer_token_auth() {
    let reg = Registry::start().unwrap();
    push(&reg, &small_image("token"), "kt/tok", "v1");
    let rt = rt();

    // Anonymous tokens: the challenge's realm is asked for a token for the pull scope.
    let anon = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        token_auth: Some(TokenAuth::default()),
        ..Default::default()
    })
    .unwrap();
    let (_d, store) = new_store();
    let name = format!("{}/kt/tok:v1", anon.addr());
    let img = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert!(anon.tokens_issued() >= 1);
    let seen = anon.seen();
    let token_reqs: Vec<_> = seen
        .iter()
        .filter(|s| s.path.starts_with("/token"))
        .collect();
    assert!(!token_reqs.is_empty());
    for t in &token_reqs {
        assert!(
            t.path.contains("scope=repository:kt/tok:pull")
                && t.path.contains(&format!("service={TOKEN_SERVICE}")),
            "{t:?}"
        );
        assert_eq!(t.header("authorization"), None, "anonymous token request");
    }
    // The proxy refuses every /v2/ request without an issued token, so the manifest and blob
    // requests that reached the registry carried one.
    let blob_gets: Vec<_> = seen
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 3, "config + 2 layers: {seen:#?}");
    for g in &blob_gets {
        assert!(
            g.header("authorization")
                .is_some_and(|a| a.starts_with("Bearer kt-token-")),
            "{g:?}"
        );
    }

    // A token endpoint behind basic credentials.
    let basic = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        token_auth: Some(TokenAuth {
            basic: Some(("ktuser".into(), "ktpass".into())),
            static_token: Some("kt-static-token".into()),
            refresh_token: None,
        }),
        ..Default::default()
    })
    .unwrap();
    let name = format!("{}/kt/tok:v1", basic.addr());
    let (_d, store) = new_store();
    for auth in [AuthConfig::default(), AuthConfig::basic("ktuser", "wrong")] {
        let err = rt.block_on(store.pull(&name, &auth)).unwrap_err();
        assert!(matches!(err, Error::Registry { .. }), "{err}");
    }
    assert!(store.list().unwrap().is_empty());
    assert_eq!(basic.tokens_issued(), 0);
    let img = rt
        .block_on(store.pull(&name, &AuthConfig::basic("ktuser", "ktpass")))
        .unwrap();
    assert_eq!(img.repo_tags, vec![name.clone()]);
    assert!(basic.tokens_issued() >= 1);
    assert!(
        basic
            .seen()
            .iter()
            .filter(|s| s.path.starts_with("/token"))
            .any(|s| s.header("authorization") == Some("Basic a3R1c2VyOmt0cGFzcw=="))
    );

    // The same through the store's own client (a host with a `header` setting).
    let mut hosts = RegistryHosts::default();
    hosts.options.insert(
        basic.addr().to_string(),
        HostOptions {
            headers: vec![("x-kt".into(), "direct".into())],
            ..Default::default()
        },
    );
    let (_d, direct) = store_with(hosts);
    let issued = basic.tokens_issued();
    let err = rt
        .block_on(direct.pull(&name, &AuthConfig::basic("ktuser", "wrong")))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    let img3 = rt
        .block_on(direct.pull(&name, &AuthConfig::basic("ktuser", "ktpass")))
        .unwrap();
    assert_eq!(img3.id, img.id);
    assert_eq!(basic.tokens_issued(), issued + 1);
    assert!(
        basic
            .seen()
            .iter()
            .any(|q| q.path.contains("/blobs/") && q.header("x-kt") == Some("direct"))
    );

    // A CRI identity_token is an OAuth2 refresh token: exchanged with a form POST to the
    // realm (grant_type=refresh_token, the scope and service); a wrong one gets nothing.
    let oauth = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        token_auth: Some(TokenAuth {
            refresh_token: Some("kt-refresh".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    let oname = format!("{}/kt/tok:v1", oauth.addr());
    let (_d, ostore) = new_store();
    let identity = |t: &str| AuthConfig {
        identity_token: t.into(),
        ..Default::default()
    };
    for auth in [AuthConfig::default(), identity("wrong")] {
        let err = rt.block_on(ostore.pull(&oname, &auth)).unwrap_err();
        assert!(matches!(err, Error::Registry { .. }), "{err}");
    }
    assert!(ostore.list().unwrap().is_empty());
    assert_eq!(oauth.tokens_issued(), 0);
    let img4 = rt
        .block_on(ostore.pull(&oname, &identity("kt-refresh")))
        .unwrap();
    assert_eq!(img4.id, img.id);
    assert!(oauth.tokens_issued() >= 1);
    let posts: Vec<_> = oauth
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST" && s.path.starts_with("/token"))
        .collect();
    assert!(!posts.is_empty());
    assert!(
        posts.iter().any(|p| {
            let f: Vec<&str> = p.body.split('&').collect();
            f.contains(&"grant_type=refresh_token")
                && f.contains(&"refresh_token=kt-refresh")
                && f.contains(&"scope=repository:kt/tok:pull")
                && f.contains(&format!("service={TOKEN_SERVICE}").as_str())
        }),
        "{posts:#?}"
    );

    // A CRI registry_token is sent as is: no token request.
    let issued = basic.tokens_issued();
    let token_requests = basic.count("GET", "/token");
    let (_d, store) = new_store();
    let token = AuthConfig {
        registry_token: "kt-static-token".into(),
        ..Default::default()
    };
    let img2 = rt.block_on(store.pull(&name, &token)).unwrap();
    assert_eq!(img2.id, img.id);
    assert_eq!(basic.tokens_issued(), issued);
    assert_eq!(basic.count("GET", "/token"), token_requests);
    let bad = AuthConfig {
        registry_token: "not-a-token".into(),
        ..Default::default()
    };
    let (_d, store) = new_store();
    let err = rt.block_on(store.pull(&name, &bad)).unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn repull_of_an_unchanged_tag_is_one_head_request() {
    let reg = Registry::start().unwrap();
    push(&reg, &small_image("repull-1"), "kt/repull", "v1");
    let (_d, store) = new_store();
    let rt = rt();
    let name = format!("{}/kt/repull:v1", reg.addr());
    // (HEAD manifests, GET manifests, GET blobs) since `base`.
    let counts = || {
        (
            reg.requests("HEAD", "/manifests/"),
            reg.requests("GET", "/manifests/"),
            reg.blob_gets(),
        )
    };
    let delta = |base: (usize, usize, usize)| {
        let now = counts();
        (now.0 - base.0, now.1 - base.1, now.2 - base.2)
    };
    let base = counts();
    let img = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    // Resolve the tag, fetch the manifest by digest, then config + 2 layers.
    assert_eq!(delta(base), (1, 1, 3), "{}", reg.log());

    let base = counts();
    let again = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(again, img);
    assert_eq!(delta(base), (1, 0, 0), "{}", reg.log());

    // The tag moves: the new manifest is fetched by digest, and only the new config and top
    // layer are downloaded (the base layer is shared).
    push(&reg, &small_image("repull-2"), "kt/repull", "v1");
    let base = counts();
    let moved = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_ne!(moved.id, img.id);
    assert_eq!(moved.repo_tags, vec![name.clone()]);
    assert_eq!(delta(base), (1, 1, 2), "{}", reg.log());
}

#[test]
fn interrupted_blob_downloads_resume_with_a_range() {
    let reg = Registry::start().unwrap();
    let manifest = push(&reg, &small_image("resume"), "kt/resume", "v1");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    const CUT: u64 = 64 << 10;
    assert!(size > 6 * CUT, "busybox layer of {size} bytes is too small");
    let rt = rt();
    let layer_gets = |p: &RegistryProxy| -> Vec<Option<String>> {
        p.seen()
            .iter()
            .filter(|s| s.method == "GET" && s.path.contains(&layer))
            .map(|s| s.header("range").map(str::to_string))
            .collect()
    };

    // Cut once: the same pull continues from the bytes it has.
    let once = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        cut: Some((layer.clone(), CUT, 1)),
        ..Default::default()
    })
    .unwrap();
    let (_d, store) = new_store();
    let name = format!("{}/kt/resume:v1", once.addr());
    let img = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(layer_gets(&once), vec![None, Some(format!("bytes={CUT}-"))]);
    let d = keelson_image::Digest::parse(&layer).unwrap();
    assert_eq!(
        fs::read(store.content().path(&d)).unwrap(),
        fs::read(reg.blob_data(&layer)).unwrap()
    );
    assert_eq!(store.get(&name).unwrap().id, img.id);

    // The same through the store's own client (a host with a `header` setting).
    let once2 = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        cut: Some((layer.clone(), CUT, 1)),
        ..Default::default()
    })
    .unwrap();
    let mut hosts = RegistryHosts::default();
    hosts.options.insert(
        once2.addr().to_string(),
        HostOptions {
            headers: vec![("x-kt".into(), "direct".into())],
            ..Default::default()
        },
    );
    let (_d, store) = store_with(hosts);
    let img_direct = rt
        .block_on(store.pull(
            &format!("{}/kt/resume:v1", once2.addr()),
            &AuthConfig::default(),
        ))
        .unwrap();
    assert_eq!(img_direct.id, img.id);
    assert_eq!(
        layer_gets(&once2),
        vec![None, Some(format!("bytes={CUT}-"))]
    );

    // Cut more often than one pull tries: the pull fails and keeps what it got; the next
    // pull continues from there.
    let often = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        cut: Some((layer.clone(), CUT, 5)),
        ..Default::default()
    })
    .unwrap();
    let (_d, store) = new_store();
    let name = format!("{}/kt/resume:v1", often.addr());
    let err = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    let partials = store.content().partials().unwrap();
    assert_eq!(partials.len(), 1, "{partials:?}");
    assert_eq!(fs::metadata(&partials[0]).unwrap().len(), 4 * CUT);
    let tries = layer_gets(&often).len();
    assert_eq!(tries, 4);
    let img2 = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img2.id, img.id);
    let gets = layer_gets(&often);
    assert_eq!(
        gets[tries..],
        [
            Some(format!("bytes={}-", 4 * CUT)),
            Some(format!("bytes={}-", 5 * CUT))
        ]
    );
    assert!(store.content().partials().unwrap().is_empty());

    // A partial file with wrong bytes: the resumed blob fails verification and is downloaded
    // again from byte 0.
    let (_d, store) = new_store();
    let name = format!("{}/kt/resume:v1", reg.addr());
    let partial = store
        .content()
        .path(&d)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("ingest")
        .join(format!("sha256-{}.partial", d.hex()));
    fs::write(&partial, vec![0x5a; 1000]).unwrap();
    let before = reg.blob_gets();
    let img3 = rt
        .block_on(store.pull(&name, &AuthConfig::default()))
        .unwrap();
    assert_eq!(img3.id, img.id);
    // config + top layer + the base layer twice (resumed, then whole).
    assert_eq!(reg.blob_gets() - before, 4, "{}", reg.log());
    assert!(!partial.exists());
}

/// A CA and a server certificate for 127.0.0.1 made with openssl: (ca.pem, cert, key).
fn tls_material(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=keelson test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A client certificate (cli.pem + cli.key, PKCS#8) from the same CA.
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "cli.key",
        "-out",
        "cli.csr",
        "-subj",
        "/CN=kt-client",
    ]);
    fs::write(dir.join("cli.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "cli.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cli.pem",
        "-days",
        "2",
        "-extfile",
        "cli.cnf",
    ]);
    (
        fs::read(dir.join("ca.pem")).unwrap(),
        fs::read(dir.join("srv.pem")).unwrap(),
        fs::read(dir.join("srv.key")).unwrap(),
    )
}

#[test]
fn hosts_toml_ca_skip_verify_header_override_path_and_client() {
    let reg = Registry::start().unwrap();
    push(&reg, &small_image("tls"), "kt/tls", "v1");
    let tmp = tempfile::Builder::new()
        .prefix("kt-tls-")
        .tempdir()
        .unwrap();
    let (ca, cert, key) = tls_material(tmp.path());
    let proxy = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        tls: Some((cert, key)),
        ..Default::default()
    })
    .unwrap();
    let rt = rt();
    let name = "kt-tls.test/kt/tls:v1";
    let certs_d = tmp.path().join("certs.d");
    let host_dir = certs_d.join("kt-tls.test");
    fs::create_dir_all(&host_dir).unwrap();
    let pull = |hosts_toml: &str| {
        fs::write(host_dir.join("hosts.toml"), hosts_toml).unwrap();
        let hosts = RegistryHosts::load_dir(&certs_d).unwrap();
        let (d, store) = store_with(hosts);
        let res = rt.block_on(store.pull(name, &AuthConfig::default()));
        if res.is_err() {
            assert!(store.list().unwrap().is_empty());
        }
        (d, res)
    };
    let server = format!("server = \"https://{}\"\n", proxy.addr());

    // The system roots do not know the test CA.
    let (_d, res) = pull(&server);
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Registry { .. }), "{err}");
    assert_eq!(proxy.count("GET", "/v2/kt/tls/blobs/"), 0);

    // `ca` (relative to the host's directory) makes the certificate trusted.
    fs::write(host_dir.join("ca.pem"), &ca).unwrap();
    let (_d, res) = pull(&format!("{server}ca = \"ca.pem\"\n"));
    let img = res.unwrap();
    assert_eq!(img.repo_tags, vec![name.to_string()]);
    assert_eq!(proxy.count("GET", "/v2/kt/tls/blobs/"), 3);

    // The same for a `[host]` entry, with `ca` as a list of absolute paths.
    let (_d, res) = pull(&format!(
        "[host.\"https://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = [\"{}\"]\n",
        proxy.addr(),
        host_dir.join("ca.pem").display()
    ));
    assert_eq!(res.unwrap().id, img.id);

    // `skip_verify` trusts any certificate.
    let (_d, res) = pull(&format!("{server}skip_verify = true\n"));
    assert_eq!(res.unwrap().id, img.id);

    // A CA file that is not there is an error, not silently the system roots.
    let (_d, res) = pull(&format!("{server}ca = \"missing.pem\"\n"));
    let err = res.unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");

    // `header`: sent with every request (a name may repeat).
    let before = proxy.seen().len();
    let (_d, res) = pull(&format!(
        "{server}ca = \"ca.pem\"\n[header]\n  x-kt-test = [\"one\", \"two\"]\n  x-kt-single = \"s\"\n"
    ));
    assert_eq!(res.unwrap().id, img.id);
    let seen = proxy.seen();
    let reqs = &seen[before..];
    assert!(reqs.iter().any(|q| q.method == "HEAD"), "{reqs:#?}");
    for q in reqs {
        let xs: Vec<&str> = q
            .headers
            .iter()
            .filter(|(n, _)| n == "x-kt-test")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(xs == ["one", "two"] || xs == ["one, two"], "{q:?}");
        assert_eq!(q.header("x-kt-single"), Some("s"), "{q:?}");
    }

    let srv = || {
        (
            fs::read(tmp.path().join("srv.pem")).unwrap(),
            fs::read(tmp.path().join("srv.key")).unwrap(),
        )
    };
    // `override_path`: the URL's path is the API root.
    let routed = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        tls: Some(srv()),
        path_prefix: Some("/kt-mirror".into()),
        ..Default::default()
    })
    .unwrap();
    let host = format!(
        "[host.\"https://{}/kt-mirror/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"ca.pem\"\n",
        routed.addr()
    );
    let (_d, res) = pull(&format!("{host}  override_path = true\n"));
    assert_eq!(res.unwrap().id, img.id);
    let seen = routed.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|q| q.path.starts_with("/kt-mirror/v2/kt/tls/")),
        "{seen:#?}"
    );
    // Without it `/v2` is added and the routed registry does not answer there.
    let n = routed.seen().len();
    let (_d, res) = pull(&host);
    assert!(res.is_err());
    let seen = routed.seen();
    assert!(seen.len() > n);
    assert!(seen[n..].iter().all(|q| q.path.starts_with("/v2/")));

    // `client`: a registry that demands a client certificate.
    let mtls = RegistryProxy::start(ProxyConfig {
        upstream: reg.addr().into(),
        tls: Some(srv()),
        client_ca: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap();
    let server = format!("server = \"https://{}\"\nca = \"ca.pem\"\n", mtls.addr());
    let (_d, res) = pull(&server);
    assert!(matches!(res, Err(Error::Registry { .. })), "{res:?}");
    assert!(mtls.seen().is_empty(), "no request passes the handshake");
    for f in ["cli.pem", "cli.key"] {
        fs::copy(tmp.path().join(f), host_dir.join(f)).unwrap();
    }
    let (_d, res) = pull(&format!("{server}client = [\"cli.pem\", \"cli.key\"]\n"));
    assert_eq!(res.unwrap().id, img.id);
    assert_eq!(mtls.count("GET", "/v2/kt/tls/blobs/"), 3);
    // A client file that is not there is an error.
    let (_d, res) = pull(&format!("{server}client = \"nope.pem\"\n"));
    let err = res.unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}
