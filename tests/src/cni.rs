//! CNI fixtures: a throwaway "host" netns the plugins run in, container netns, plugin drivers
//! for keelson's plugins and the reference ones, and readers of what a netns holds.
//!
//! Nothing here touches the machine's own network namespace: every plugin runs with a test
//! [`Netns`] as its own namespace, and dropping that namespace takes the bridge, the host
//! veths and any nftables/iptables rules made inside it along.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Netns;
use crate::unique;

/// Where the reference plugins live (Debian's containernetworking-plugins).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A set of plugin binaries (one directory, used as `CNI_PATH` too).
#[derive(Debug, Clone)]
pub struct Plugins {
    pub dir: PathBuf,
    pub label: &'static str,
}

impl Plugins {
    /// keelson's plugins: `$KEELSON_CNI_DIR`; else `debug/` of the `CARGO_TARGET_DIR` the tests
    /// were built with; else `<workspace>/target/debug`.
    pub fn keelson() -> io::Result<Plugins> {
        if let Some(d) = std::env::var_os("KEELSON_CNI_DIR") {
            return Ok(Plugins {
                dir: PathBuf::from(d),
                label: "keelson",
            });
        }
        let candidates = crate::runtime::build_dirs();
        candidates
            .into_iter()
            .find(|c| c.join("bridge").is_file() && c.join("host-local").is_file())
            .map(|dir| Plugins {
                dir,
                label: "keelson",
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "keelson CNI plugins not found; build them with \
                     `cargo build -p keelson-cni-plugins` or set KEELSON_CNI_DIR",
                )
            })
    }

    /// The reference plugins in [`REFERENCE_DIR`].
    pub fn reference() -> Plugins {
        Plugins {
            dir: PathBuf::from(REFERENCE_DIR),
            label: "reference",
        }
    }

    pub fn bin(&self, plugin: &str) -> PathBuf {
        self.dir.join(plugin)
    }
}

/// What one plugin invocation returned.
#[derive(Debug, Clone)]
pub struct CniOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    /// stdout as JSON (Null when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }

    /// The error code of a failed call.
    pub fn code(&self) -> Option<u64> {
        self.json().get("code").and_then(Value::as_u64)
    }

    /// Panics with both streams unless the call succeeded.
    pub fn ok(self) -> CniOutput {
        assert!(
            self.success,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One invocation's environment.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    /// `CNI_NETNS`; None leaves it unset.
    pub netns: Option<String>,
    pub ifname: String,
    pub args: Option<String>,
    /// Variables to leave out (to test missing ones).
    pub unset: Vec<&'static str>,
    /// Extra variables.
    pub env: Vec<(String, String)>,
}

impl Invocation {
    pub fn new(command: &str, container_id: &str, netns: &Netns, ifname: &str) -> Invocation {
        Invocation {
            command: command.to_string(),
            container_id: container_id.to_string(),
            netns: Some(netns.path().display().to_string()),
            ifname: ifname.to_string(),
            ..Default::default()
        }
    }

    pub fn with_command(&self, command: &str) -> Invocation {
        Invocation {
            command: command.to_string(),
            ..self.clone()
        }
    }
}

/// Runs `plugin` of `plugins` with `conf` on stdin, inside the network namespace `host`.
pub fn invoke(
    plugins: &Plugins,
    plugin: &str,
    host: &Netns,
    inv: &Invocation,
    conf: &Value,
) -> io::Result<CniOutput> {
    invoke_raw(plugins, plugin, host, inv, conf.to_string().as_bytes())
}

/// [`invoke`] with raw stdin bytes (for malformed configs).
pub fn invoke_raw(
    plugins: &Plugins,
    plugin: &str,
    host: &Netns,
    inv: &Invocation,
    stdin: &[u8],
) -> io::Result<CniOutput> {
    run_plugin(plugins, plugin, Some(host), inv, stdin)
}

/// Runs `plugin` in the calling thread's network namespace (the caller has joined the test
/// host's netns on this thread): without a `pre_exec` hook the child is started with
/// `posix_spawn` instead of `fork`, so the timing holds less of the caller's own cost.
pub fn invoke_here(
    plugins: &Plugins,
    plugin: &str,
    inv: &Invocation,
    conf: &Value,
) -> io::Result<CniOutput> {
    run_plugin(plugins, plugin, None, inv, conf.to_string().as_bytes())
}

/// Moves the calling thread into `ns` (for [`invoke_here`]).
pub fn enter_netns(ns: &Netns) -> io::Result<()> {
    let f = File::open(ns.path())?;
    if libc_setns(f.as_raw_fd()) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn run_plugin(
    plugins: &Plugins,
    plugin: &str,
    host: Option<&Netns>,
    inv: &Invocation,
    stdin: &[u8],
) -> io::Result<CniOutput> {
    let ns_file = host.map(|h| File::open(h.path())).transpose()?;
    let mut cmd = Command::new(plugins.bin(plugin));
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", &inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", &plugins.dir);
    if let Some(n) = &inv.netns {
        cmd.env("CNI_NETNS", n);
    }
    if let Some(a) = &inv.args {
        cmd.env("CNI_ARGS", a);
    }
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    for u in &inv.unset {
        cmd.env_remove(u);
    }
    if let Some(f) = &ns_file {
        let fd = f.as_raw_fd();
        // SAFETY: between fork and exec only the async-signal-safe setns(2) syscall runs, on a
        // descriptor that stays open in the parent until the child has been spawned.
        unsafe {
            cmd.pre_exec(move || {
                if libc_setns(fd) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    if let Some(mut s) = child.stdin.take() {
        // A plugin that refuses early may close stdin first.
        let _ = s.write_all(stdin);
    }
    let out = child.wait_with_output()?;
    drop(ns_file);
    Ok(CniOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}

fn libc_setns(fd: i32) -> i32 {
    // SAFETY: setns(2) on a valid descriptor of a network namespace; no memory is touched.
    unsafe { nix::libc::setns(fd, nix::libc::CLONE_NEWNET) }
}

/// A test network: its own "host" netns, a unique network and bridge name, a private /24, and a
/// temporary host-local data dir. Drop deletes the netns (with everything in it) and the dir.
pub struct TestNet {
    pub host: Netns,
    pub name: String,
    pub bridge: String,
    /// The /24's first three octets, e.g. `10.200.7`.
    pub prefix: String,
    pub data_dir: tempfile::TempDir,
}

static SUBNET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl TestNet {
    pub fn new(hint: &str) -> io::Result<TestNet> {
        let host = Netns::new(&format!("h{hint}"))?;
        let n = unique::next();
        let name = format!(
            "kt-{}-{}-{n}",
            unique::sanitize(hint, 16),
            std::process::id()
        );
        // 15 bytes at most: "ktb" + 12 hex digits of (pid, counter).
        let bridge = format!(
            "ktb{:06x}{:06x}",
            std::process::id() & 0xffffff,
            n & 0xffffff
        );
        let s = SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("10.{}.{}", 200 + (s / 250) % 50, s % 250 + 1);
        let data_dir = tempfile::Builder::new().prefix("kt-cni-").tempdir()?;
        // Host ports are reached through 127.0.0.1 too.
        let out = host.exec(&["ip", "link", "set", "lo", "up"])?;
        if !out.status.success() {
            return Err(io::Error::other(
                "ip link set lo up failed in the test host netns",
            ));
        }
        Ok(TestNet {
            host,
            name,
            bridge,
            prefix,
            data_dir,
        })
    }

    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A bridge + host-local config of `version` on this network.
    pub fn bridge_conf(&self, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data_dir.path(),
                "ranges": [[{"subnet": self.subnet()}]],
                "routes": [{"dst": "10.250.0.0/16"}],
            },
        })
    }

    /// What a CRI runtime under test needs to use this network: in `bin_dir`, a wrapper per
    /// plugin that enters the test host netns and execs the real plugin of `plugins`; in
    /// `conf_dir`, the conflist `file` (bridge + host-local, then portmap).
    ///
    /// The wrapper is a shell script running `nsenter`, or with `launcher` (the benches'
    /// `netns-exec`) a script whose `#!` line names the launcher, the netns and the plugin:
    /// one small exec per call instead of a shell and `nsenter`.
    pub fn write_runtime_cni(
        &self,
        plugins: &Plugins,
        bin_dir: &std::path::Path,
        conf_dir: &std::path::Path,
        file: &str,
        launcher: Option<&std::path::Path>,
    ) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for name in ["bridge", "host-local", "loopback", "portmap"] {
            let real = plugins.bin(name);
            if !real.is_file() {
                return Err(io::Error::other(format!(
                    "CNI plugin {} not found",
                    real.display()
                )));
            }
            let wrapper = bin_dir.join(name);
            let script = match launcher {
                Some(l) => format!(
                    "#!{} {} {}\n",
                    l.display(),
                    self.host.path().display(),
                    real.display()
                ),
                None => format!(
                    "#!/bin/sh\nexec nsenter --net={} {} \"$@\"\n",
                    self.host.path().display(),
                    real.display()
                ),
            };
            std::fs::write(&wrapper, script)?;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut bridge = self.bridge_conf("1.0.0");
        if let Some(o) = bridge.as_object_mut() {
            o.remove("cniVersion");
            o.remove("name");
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": true}}],
        });
        std::fs::write(conf_dir.join(file), conflist.to_string())
    }

    /// `<dataDir>/<network>/` entries as (file name, content), sorted.
    pub fn allocations(&self) -> Vec<(String, String)> {
        let dir = self.data_dir.path().join(&self.name);
        let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Allocated addresses only (no lock, no last_reserved_ip.*).
    pub fn allocated_ips(&self) -> Vec<String> {
        self.allocations()
            .into_iter()
            .filter(|(n, _)| n.parse::<std::net::IpAddr>().is_ok())
            .map(|(n, _)| n)
            .collect()
    }
}

/// `ip -j <args>` inside `ns`, parsed.
pub fn ip_json(ns: &Netns, args: &[&str]) -> io::Result<Value> {
    let mut all = vec!["ip", "-j"];
    all.extend_from_slice(args);
    let out = ns.exec(&all)?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

/// Names of the links in `ns`, sorted.
pub fn link_names(ns: &Netns) -> io::Result<Vec<String>> {
    let v = ip_json(ns, &["link", "show"])?;
    let mut names: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// The link names of `ns` once they are `want`, or what they are after 10 s. Our bridge's DEL
/// leaves the container's interface down and renamed while a detached process deletes it
/// (see `remove_container_link` in cni-plugins/src/bridge.rs), and a deleted netns's links go
/// in the kernel's cleanup work: both settle a moment after the call that started them.
pub fn settled_link_names(ns: &Netns, want: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let links = link_names(ns).unwrap_or_default();
        if links == want || std::time::Instant::now() > deadline {
            return links;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `ip/prefix` of the global addresses of `ifname` in `ns`, sorted.
pub fn addresses(ns: &Netns, ifname: &str) -> io::Result<Vec<String>> {
    let v = ip_json(ns, &["addr", "show", "dev", ifname])?;
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l
            .get("addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if a.get("scope").and_then(Value::as_str) == Some("link") {
                continue;
            }
            if let (Some(ip), Some(p)) = (
                a.get("local").and_then(Value::as_str),
                a.get("prefixlen").and_then(Value::as_u64),
            ) {
                out.push(format!("{ip}/{p}"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Routes of `ns` (IPv4 and IPv6 main table) as `dst via gw dev X`, sorted, kernel-made
/// link-local IPv6 routes left out.
pub fn routes(ns: &Netns) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let v = ip_json(ns, &[fam, "route", "show"])?;
        for r in v.as_array().into_iter().flatten() {
            let dst = r.get("dst").and_then(Value::as_str).unwrap_or("?");
            if dst.starts_with("fe80:") || dst.starts_with("multicast") {
                continue;
            }
            let gw = r.get("gateway").and_then(Value::as_str).unwrap_or("-");
            let dev = r.get("dev").and_then(Value::as_str).unwrap_or("-");
            out.push(format!("{dst} via {gw} dev {dev}"));
        }
    }
    out.sort();
    Ok(out)
}

/// `busybox ping -c1 -W2 <ip>` from inside `ns`.
pub fn ping(ns: &Netns, ip: &str) -> io::Result<bool> {
    let busybox = std::env::var("KEELSON_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    let out = ns.exec(&[&busybox, "ping", "-c1", "-W2", ip])?;
    Ok(out.status.success())
}

/// The JSON shape of a result: the same structure with every string value replaced by a
/// marker of its kind (MACs and veth names vary between runs).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(s) if s.len() == 17 && s.matches(':').count() == 5 => "<mac>".into(),
        Value::String(s) if s.starts_with("veth") => "<veth>".into(),
        other => other.clone(),
    }
}

/// `busybox httpd` serving one file from inside a netns; Drop stops it.
pub struct HttpServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// What `GET /` returns.
    pub body: String,
}

impl HttpServer {
    pub fn start(ns: &Netns, port: u16) -> io::Result<HttpServer> {
        let dir = tempfile::Builder::new().prefix("kt-httpd-").tempdir()?;
        let body = unique::name("body", ns.name());
        std::fs::write(dir.path().join("index.html"), &body)?;
        // The container's own lo, so the server can bind.
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        let busybox =
            std::env::var("KEELSON_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), &busybox, "httpd", "-f", "-p"])
            .arg(port.to_string())
            .arg("-h")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = HttpServer {
            child,
            _dir: dir,
            body,
        };
        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if fetch(ns, &format!("http://127.0.0.1:{port}/")).as_deref() == Some(&server.body) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other("httpd did not come up"))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -s -m 3 <url>` from inside `ns`; the body, or None when it failed.
pub fn fetch(ns: &Netns, url: &str) -> Option<String> {
    let out = ns
        .exec(&["curl", "-s", "-m", "3", "--noproxy", "*", url])
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Another "host" on a link to the test host: a netns with a veth whose peer sits in `host`.
/// Host side `192.168.<n>.1/24`, client side `.2`. Dropping the client netns removes both ends.
pub struct Client {
    pub ns: Netns,
    /// The host's address on the link, the one the client connects to.
    pub host_ip: String,
}

impl Client {
    pub fn attach(host: &Netns) -> io::Result<Client> {
        let ns = Netns::new("client")?;
        let n = SUBNET.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250 + 1;
        let host_if = format!("ktc{:06x}{:03x}", std::process::id() & 0xffffff, n);
        let host_ip = format!("192.168.{n}.1");
        let run = |ns: &Netns, args: &[&str]| -> io::Result<()> {
            let out = ns.exec(args)?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )))
            }
        };
        run(
            host,
            &[
                "ip",
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        )?;
        run(
            host,
            &[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &host_if,
            ],
        )?;
        run(host, &["ip", "link", "set", &host_if, "up"])?;
        run(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("192.168.{n}.2/24"),
                "dev",
                "eth0",
            ],
        )?;
        run(&ns, &["ip", "link", "set", "eth0", "up"])?;
        run(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(Client { ns, host_ip })
    }
}
