//! A local OCI registry: Debian's `docker-registry` on 127.0.0.1, a free port, its own temp
//! storage and config, optionally behind htpasswd basic auth. Killed and removed on Drop.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The registry binary: `$KEELSON_TEST_REGISTRY` or Debian's.
pub fn registry_binary() -> PathBuf {
    std::env::var_os("KEELSON_TEST_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
    creds: Option<(String, String)>,
}

fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> io::Result<Self> {
        Self::start_inner(None)
    }

    /// A registry that wants basic auth (bcrypt htpasswd made with `htpasswd -B`).
    pub fn start_with_auth(user: &str, password: &str) -> io::Result<Self> {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(creds: Option<(String, String)>) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kt-registry-").tempdir()?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n\
storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
http:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = &creds {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .arg("-Bbc")
                .arg(&htpasswd)
                .args([user, password])
                .output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "htpasswd: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(registry_binary())
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut reg = Registry {
            child,
            dir,
            addr,
            creds,
        };
        reg.wait_ready(Duration::from_secs(15))?;
        Ok(reg)
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "docker-registry exited with {status}: {}",
                    self.log()
                )));
            }
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                if s.write_all(req.as_bytes()).is_ok() {
                    let mut resp = String::new();
                    let _ = s.read_to_string(&mut resp);
                    if resp.starts_with("HTTP/1.") {
                        return Ok(());
                    }
                }
            }
            if start.elapsed() > timeout {
                return Err(io::Error::other(format!(
                    "docker-registry not ready on {}: {}",
                    self.addr,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `user:password` if the registry wants auth.
    pub fn creds(&self) -> Option<(String, String)> {
        self.creds.clone()
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes (`sha256:<hex>`).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many blob GETs the registry has answered so far.
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// How many `method` requests for a path containing `fragment` the registry has answered.
    pub fn requests(&self, method: &str, fragment: &str) -> usize {
        let prefix = format!("\"{method} /v2/");
        self.log()
            .lines()
            .filter(|l| l.contains(&prefix) && l.contains(fragment))
            .count()
    }

    /// Pushes an OCI layout's image (`oci:<dir>:<tag>`) to `<repo>:<tag>` here with skopeo.
    /// `extra` adds skopeo flags (`--all`, `--format v2s2`).
    pub fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        extra: &[&str],
    ) -> io::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.args(extra);
        cmd.arg(format!("oci:{}:{tag}", layout.display()));
        cmd.arg(format!("docker://{}/{repo}:{tag}", self.addr));
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy to {}/{repo}:{tag}: {}",
                self.addr,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
