//! A kubelet for end-to-end tests: the workspace's `kubelet` binary in standalone mode against
//! a private keelsond ([`crate::cri::Keelsond`]), with its root dir, pod logs and static pod
//! directory in a temp dir, its servers on free loopback ports and its pods' cgroups below
//! keelsond's own cgroup (a relative `cgroupRoot`).
//!
//! The kubelet runs in keelsond's private mount namespace (as kubelet and runtime share the
//! host's on a node): the tmpfs and bind mounts it makes for pod volumes are seen by the runtime
//! and never reach the machine's mount table.
//!
//! The kubelet server on `port` speaks HTTPS with the certificate the kubelet generates in
//! `<dir>/pki` (the client here accepts it without verification); the healthz port is plain
//! HTTP. The `/var/log/containers` links go to `<dir>/containers`.
//!
//! Drop kills the kubelet (kill -9), unmounts whatever it left mounted below its temp dir and
//! removes the cgroup tree it named; the pods it ran go with the Keelsond fixture's Drop.

use crate::cri::Keelsond;
use crate::runtime::built_binary;
use keelson_proto::runtime::v1 as pb;
use serde_json::Value;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The kubelet binary: `$KEELSON_KUBELET_BIN`, else the workspace's debug build.
pub fn kubelet_binary() -> io::Result<PathBuf> {
    built_binary("KEELSON_KUBELET_BIN", "kubelet", "keelson-kubelet")
}

/// The node name the fixture passes with --hostname-override.
pub const NODE: &str = "kt-node";

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Kubelet {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub healthz_port: u16,
    bin: PathBuf,
    endpoint: String,
    /// The process holding the mount namespace the kubelet runs in (keelsond's).
    mount_ns_pid: u32,
    /// The relative `cgroupRoot` this fixture named (below this process's own cgroups):
    /// its whole tree goes on drop.
    owned_cgroup_root: Option<String>,
    /// More command line flags (see [`Kubelet::start_with_flags`]).
    extra_flags: Vec<String>,
}

impl Kubelet {
    /// Starts a kubelet on `k`'s socket and waits until its server answers /healthz.
    pub fn start(k: &Keelsond) -> io::Result<Kubelet> {
        Kubelet::start_with(k, "")
    }

    /// Like [`Kubelet::start`], with more KubeletConfiguration lines (YAML) appended.
    pub fn start_with(k: &Keelsond, extra_config: &str) -> io::Result<Kubelet> {
        Kubelet::start_with_flags(k, extra_config, &[])
    }

    /// Like [`Kubelet::start_with`], with more command line flags.
    pub fn start_with_flags(
        k: &Keelsond,
        extra_config: &str,
        extra_flags: &[&str],
    ) -> io::Result<Kubelet> {
        let cgroup_root = crate::unique::name("kt-kubelet", "pods");
        let mut kl = Kubelet::start_bin_with_flags(
            &kubelet_binary()?,
            &k.socket(),
            &cgroup_root,
            k.mount_ns_pid(),
            extra_config,
            extra_flags,
        )?;
        kl.owned_cgroup_root = Some(cgroup_root);
        Ok(kl)
    }

    /// Starts a kubelet on the CRI socket `socket` (any runtime) with `cgroup_root` as its
    /// `cgroupRoot`, in the mount namespace of `mount_ns_pid` (the runtime's, so that the
    /// volume mounts the kubelet makes are what the runtime sees), and waits until its server
    /// answers /healthz.
    pub fn start_on(socket: &Path, cgroup_root: &str, mount_ns_pid: u32) -> io::Result<Kubelet> {
        Kubelet::start_bin(&kubelet_binary()?, socket, cgroup_root, mount_ns_pid, "")
    }

    /// [`Kubelet::start_on`] with the kubelet binary `bin` (a bench's release build) and more
    /// KubeletConfiguration lines.
    pub fn start_bin(
        bin: &Path,
        socket: &Path,
        cgroup_root: &str,
        mount_ns_pid: u32,
        extra_config: &str,
    ) -> io::Result<Kubelet> {
        Kubelet::start_bin_with_flags(bin, socket, cgroup_root, mount_ns_pid, extra_config, &[])
    }

    fn start_bin_with_flags(
        bin: &Path,
        socket: &Path,
        cgroup_root: &str,
        mount_ns_pid: u32,
        extra_config: &str,
        extra_flags: &[&str],
    ) -> io::Result<Kubelet> {
        let dir = tempfile::Builder::new().prefix("kubelet").tempdir()?;
        for sub in ["root", "pods-logs", "manifests"] {
            fs::create_dir_all(dir.path().join(sub))?;
        }
        let mut kl = Kubelet {
            port: free_port()?,
            healthz_port: free_port()?,
            dir,
            child: None,
            bin: bin.to_path_buf(),
            endpoint: format!("unix://{}", socket.display()),
            mount_ns_pid,
            owned_cgroup_root: None,
            extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
        };
        // 1s unless the caller sets its own.
        let file_check = if extra_config.contains("fileCheckFrequency:") {
            ""
        } else {
            "fileCheckFrequency: 1s\n"
        };
        let config = format!(
            "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n\
             staticPodPath: {}\npodLogsDir: {}\n{file_check}syncFrequency: 10s\n\
             address: 127.0.0.1\nport: {}\nhealthzPort: {}\ncgroupRoot: {cgroup_root}\n{extra_config}",
            kl.manifests().display(),
            kl.pod_logs().display(),
            kl.port,
            kl.healthz_port,
        );
        fs::write(kl.config_path(), config)?;
        kl.launch()?;
        Ok(kl)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kubelet.yaml")
    }

    /// The static pod directory.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// podLogsDir.
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.path().join("pods-logs")
    }

    /// --root-dir.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The pid whose mount namespace the kubelet runs in (for `nsenter --mount`).
    /// The relative `cgroupRoot` the fixture gave the kubelet, if it named one.
    pub fn cgroup_root(&self) -> Option<&str> {
        self.owned_cgroup_root.as_deref()
    }

    pub fn mount_ns_pid(&self) -> u32 {
        self.mount_ns_pid
    }

    /// The mount points at or below `dir` in the kubelet's mount namespace, deepest first.
    pub fn mounts_below(&self, dir: &Path) -> Vec<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{}/mountinfo", self.mount_ns_pid))
            .unwrap_or_default();
        let mut v: Vec<PathBuf> = crate::mountinfo::parse(&text)
            .into_iter()
            .map(|m| PathBuf::from(m.mount_point))
            .filter(|p| p.starts_with(dir))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v.dedup();
        v
    }

    /// Unmounts (lazily) everything below the temp dir, in the kubelet's mount namespace and in
    /// this process's.
    fn unmount_all(&self) {
        for p in self.mounts_below(self.dir.path()) {
            let _ = Command::new("nsenter")
                .arg(format!("--mount=/proc/{}/ns/mnt", self.mount_ns_pid))
                .arg("--")
                .arg("umount")
                .arg("-l")
                .arg(&p)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for p in crate::mountinfo::mounts_below(self.dir.path()).unwrap_or_default() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// The directory of the `/var/log/containers` links.
    pub fn log_links(&self) -> PathBuf {
        self.dir.path().join("containers")
    }

    /// What the kubelet logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn launch(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kubelet.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.mount_ns_pid))
            .arg("--")
            .arg(&self.bin)
            .arg("--config")
            .arg(self.config_path())
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .arg("--hostname-override")
            .arg(NODE)
            .arg("--container-runtime-endpoint")
            .arg(&self.endpoint)
            .arg("--cert-dir")
            .arg(self.dir.path().join("pki"))
            .arg("--container-log-links-dir")
            .arg(self.log_links())
            .arg("--v")
            .arg("2")
            .args(&self.extra_flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait()?
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "kubelet exited with {st}: {}",
                    self.log()
                )));
            }
            if self
                .get("/healthz")
                .is_ok_and(|(c, b)| c == 200 && b == "ok")
            {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "kubelet did not answer on port {}: {}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 the kubelet (pods keep running in the runtime).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 and start again with the same flags and directories.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill9();
        self.launch()
    }

    /// Writes a manifest into the static pod directory (atomically: temp file + rename, so
    /// the kubelet never reads half a file).
    pub fn write_manifest(&self, file: &str, content: &str) -> io::Result<()> {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        fs::write(&tmp, content)?;
        fs::rename(&tmp, self.manifests().join(file))
    }

    pub fn remove_manifest(&self, file: &str) -> io::Result<()> {
        fs::remove_file(self.manifests().join(file))
    }

    /// A plain HTTP/1.1 GET on `port`: (status code, body).
    pub fn get_on(port: u16, path: &str) -> io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        request_on(&mut s, "GET", path)
    }

    /// A TLS connection to the kubelet server, accepting its self-signed certificate.
    pub fn tls_connect(&self) -> io::Result<native_tls::TlsStream<TcpStream>> {
        tls_to(self.port)
    }

    /// The certificate chain the kubelet server presents (DER, leaf first as sent).
    pub fn peer_certificate(&self) -> io::Result<Vec<u8>> {
        let s = self.tls_connect()?;
        s.peer_certificate()
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("no peer certificate"))?
            .to_der()
            .map_err(io::Error::other)
    }

    /// A request over HTTPS to the kubelet server: (status code, body).
    pub fn request(&self, method: &str, path: &str) -> io::Result<(u16, String)> {
        let mut s = self.tls_connect()?;
        request_on(&mut s, method, path)
    }

    /// GET on the kubelet server (HTTPS).
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        self.request("GET", path)
    }
}

/// A kept-alive HTTPS connection to the kubelet server for a caller that polls: one TLS
/// handshake for many requests instead of one each (a handshake costs both sides far more CPU
/// than answering `/pods`). Reconnects once when the server has closed it.
pub struct Session {
    port: u16,
    conn: Option<io::BufReader<native_tls::TlsStream<TcpStream>>>,
}

impl Session {
    /// GET `path`: (status code, body).
    pub fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        if let Some(c) = self.conn.as_mut()
            && let Ok((code, body, open)) = keep_alive_get(c, path)
        {
            if !open {
                self.conn = None;
            }
            return Ok((code, body));
        }
        let mut c = io::BufReader::new(tls_to(self.port)?);
        let (code, body, open) = keep_alive_get(&mut c, path)?;
        self.conn = open.then_some(c);
        Ok((code, body))
    }

    /// `/pods` as JSON.
    pub fn pods(&mut self) -> io::Result<Value> {
        let (code, body) = self.get("/pods")?;
        if code != 200 {
            return Err(io::Error::other(format!("/pods: {code} {body}")));
        }
        serde_json::from_str(&body).map_err(io::Error::other)
    }
}

/// A TLS connection to the kubelet server on 127.0.0.1:`port`, accepting its self-signed
/// certificate.
fn tls_to(port: u16) -> io::Result<native_tls::TlsStream<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    native_tls::TlsConnector::builder()
        .danger_accept_invalid_certs(true)
        .danger_accept_invalid_hostnames(true)
        .build()
        .map_err(io::Error::other)?
        .connect("127.0.0.1", s)
        .map_err(io::Error::other)
}

/// One GET on a kept-alive connection: (status code, body, whether the server keeps it open).
/// The body is read by `Content-Length` or chunked encoding, never to EOF.
fn keep_alive_get<S: Read + Write>(
    c: &mut io::BufReader<S>,
    path: &str,
) -> io::Result<(u16, String, bool)> {
    use std::io::BufRead as _;
    let s = c.get_mut();
    // One write: one TLS record, one segment.
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut line = String::new();
    let next_line = |c: &mut io::BufReader<S>, line: &mut String| -> io::Result<()> {
        line.clear();
        if c.read_line(line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    };
    next_line(c, &mut line)?;
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut open) = (None, false, true);
    loop {
        next_line(c, &mut line)?;
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => open = value != "close",
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            next_line(c, &mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if n == 0 {
                // Trailers, up to the empty line.
                loop {
                    next_line(c, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = body.len();
            body.resize(at + n, 0);
            c.read_exact(&mut body[at..])?;
            next_line(c, &mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        c.read_exact(&mut body)?;
    } else {
        c.read_to_end(&mut body)?;
        open = false;
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned(), open))
}

/// One HTTP/1.1 request with `Connection: close` on `s`: (status code, body).
pub fn request_on<S: Read + Write>(
    s: &mut S,
    method: &str,
    path: &str,
) -> io::Result<(u16, String)> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: what came is the answer.
        Err(e) if !raw.is_empty() && e.kind() != io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no HTTP header in {text:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

impl Kubelet {
    /// A kept-alive connection to the kubelet server (see [`Session`]); it connects on its
    /// first request.
    pub fn session(&self) -> Session {
        Session {
            port: self.port,
            conn: None,
        }
    }

    /// `/pods` as JSON (on a connection of its own).
    pub fn pods(&self) -> io::Result<Value> {
        self.session().pods()
    }

    /// The pod whose manifest named it `name` (the kubelet adds `-<node>`).
    pub fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-{NODE}");
        self.pods().ok().and_then(|l| {
            l["items"]
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .find(|p| p["metadata"]["name"] == full.as_str())
                })
                .cloned()
        })
    }

    /// Polls `/pods` until the pod satisfies `pred` or `timeout` passes; Err carries the last
    /// pod seen and the kubelet's log.
    pub fn wait_pod(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let end = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < end {
            if let Some(p) = self.pod(name) {
                if pred(&p) {
                    return Ok(p);
                }
                last = Some(p);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "pod {name} did not reach the expected state in {timeout:?}; last seen:\n{}\n--- kubelet log ---\n{}",
            last.map(|p| serde_json::to_string_pretty(&p).unwrap_or_default())
                .unwrap_or_else(|| "(not listed)".into()),
            tail(&self.log(), 60)
        ))
    }

    /// Polls until the pod is no longer listed.
    pub fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.pods().is_ok() && self.pod(name).is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "pod {name} still listed after {timeout:?}\n{}",
            tail(&self.log(), 60)
        ))
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The status of container `name` in a pod JSON (app or init).
pub fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
}

/// The condition `type_` of a pod JSON: its status ("True"/"False").
pub fn condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

impl Kubelet {
    /// Kills what runs below the fixture's cgroup root and removes its tree (the runtime's
    /// pod cgroups and the QoS levels above them), deepest first, in every hierarchy.
    fn remove_cgroup_tree(&self) {
        let Some(root) = &self.owned_cgroup_root else {
            return;
        };
        for h in crate::cgroup::hierarchies().unwrap_or_default() {
            let mut tree = Vec::new();
            let mut stack = vec![h.own_dir.join(root)];
            while let Some(d) = stack.pop() {
                let Ok(rd) = fs::read_dir(&d) else { continue };
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                tree.push(d);
            }
            tree.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in tree {
                crate::cri::drain_cgroup(&d);
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.kill9();
        self.unmount_all();
        self.remove_cgroup_tree();
    }
}

/// Files below `dir`, recursively (for log checks).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A kubelet on a private keelsond, with a local registry holding the busybox test image: the
/// setup every kubelet e2e test shares. Fields drop in order: the kubelet first (so it
/// recreates nothing), then keelsond (removes every pod and what it left), then the registry.
pub struct Stack {
    pub kl: Kubelet,
    pub k: Keelsond,
    pub reg: crate::registry::Registry,
    /// The busybox image's reference in the registry.
    pub image: String,
}

/// How long the stack's waits last.
pub const WAIT: Duration = Duration::from_secs(90);

impl Stack {
    /// Registry, keelsond (`hint` names its dirs) and a kubelet on it; panics when one of
    /// them does not come up.
    pub fn start(hint: &str) -> Stack {
        Stack::start_with(hint, "")
    }

    /// [`Stack::start`] with more KubeletConfiguration lines (YAML).
    pub fn start_with(hint: &str, extra_config: &str) -> Stack {
        let (reg, image) = crate::cri::registry_with_busybox("1");
        let k = Keelsond::start(hint).expect("keelsond");
        let kl = Kubelet::start_with(&k, extra_config).expect("kubelet");
        Stack { kl, k, reg, image }
    }

    /// Waits until pod `pod` satisfies `pred`; panics with the logs' tails otherwise.
    pub fn wait(&self, pod: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.kl.wait_pod(pod, WAIT, pred).unwrap_or_else(|m| {
            panic!(
                "waiting for {what}: {m}\n--- keelsond ---\n{}",
                tail(&self.k.log(), 30)
            )
        })
    }

    /// Waits until `f` holds; panics with the kubelet's log tail otherwise.
    pub fn wait_until(&self, what: &str, f: impl Fn() -> bool) {
        let end = Instant::now() + WAIT;
        while !f() {
            assert!(
                Instant::now() < end,
                "{what}\n--- kubelet ---\n{}",
                tail(&self.kl.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The sandboxes keelsond has for pod UID `uid`.
    pub fn sandboxes_of(&self, uid: &str) -> Vec<pb::PodSandbox> {
        pod_sandboxes(&self.k, uid)
    }

    /// The containers keelsond has for pod UID `uid`.
    pub fn containers_of(&self, uid: &str) -> Vec<pb::Container> {
        pod_containers(&self.k, uid)
    }

    /// Runs `sh -c script` in container `container_id` (CRI ExecSync, 20 s timeout).
    pub fn exec(&self, container_id: &str, script: &str) -> pb::ExecSyncResponse {
        self.k
            .block_on(async {
                let mut c = self.k.runtime().await?;
                c.exec_sync(pb::ExecSyncRequest {
                    container_id: container_id.to_string(),
                    cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    timeout: 20,
                })
                .await
                .map(|r| r.into_inner())
            })
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
    }
}

/// The sandboxes runtime `k` has for pod UID `uid` (CRI ListPodSandbox by the UID label).
pub fn pod_sandboxes(k: &Keelsond, uid: &str) -> Vec<pb::PodSandbox> {
    k.block_on(async {
        let mut c = k.runtime().await?;
        c.list_pod_sandbox(pb::ListPodSandboxRequest {
            filter: Some(pb::PodSandboxFilter {
                label_selector: uid_label(uid),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().items)
    })
    .expect("ListPodSandbox")
}

/// The containers runtime `k` has for pod UID `uid` (CRI ListContainers by the UID label).
pub fn pod_containers(k: &Keelsond, uid: &str) -> Vec<pb::Container> {
    k.block_on(async {
        let mut c = k.runtime().await?;
        c.list_containers(pb::ListContainersRequest {
            filter: Some(pb::ContainerFilter {
                label_selector: uid_label(uid),
                ..Default::default()
            }),
        })
        .await
        .map(|r| r.into_inner().containers)
    })
    .expect("ListContainers")
}

fn uid_label(uid: &str) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())])
}

/// `status.phase` of a pod from /pods.
pub fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

/// `metadata.uid` of a pod from /pods.
pub fn uid(p: &Value) -> String {
    p["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

/// The runtime's id of container `name` of a pod from /pods (`containerID` without the
/// `<runtime>://` prefix); empty when it has none.
pub fn container_id(p: &Value, name: &str) -> String {
    container_status(p, name)
        .and_then(|c| c["containerID"].as_str())
        .and_then(|s| s.split_once("://"))
        .map(|(_, id)| id.to_string())
        .unwrap_or_default()
}
