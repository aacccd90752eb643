//! A private containerd for drop-in tests: its own root, state and socket in a temp dir, an
//! image imported from an OCI archive built from a busybox rootfs, and a unique namespace.
//! Drop stops the daemon and removes what it made (mounts below its root, its runc state).

use crate::{mountinfo, unique};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Containerd {
    dir: TempDir,
    child: Child,
    pub namespace: String,
    /// Whether /run/containerd existed before: if not, its empty dirs are removed on Drop.
    run_dir_existed: bool,
}

fn sha256_file(p: &Path) -> io::Result<String> {
    let out = Command::new("sha256sum").arg(p).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| io::Error::other("sha256sum printed nothing"))
}

/// Writes an OCI image archive (`oci-layout`, `index.json`, blobs; one uncompressed layer made
/// from `rootfs`) named `name`, as `ctr images import` and `podman load` read it.
pub fn oci_archive(rootfs: &Path, name: &str, out: &Path) -> io::Result<()> {
    let work = tempfile::Builder::new().prefix("keelson-oci-").tempdir()?;
    let blobs = work.path().join("layout/blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer = work.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(rootfs)
        .args(["-cf"])
        .arg(&layer)
        .arg(".")
        .status()?;
    if !st.success() {
        return Err(io::Error::other("tar of the rootfs failed"));
    }
    let put = |p: &Path| -> io::Result<(String, u64)> {
        let d = sha256_file(p)?;
        let size = fs::metadata(p)?.len();
        fs::copy(p, blobs.join(&d))?;
        Ok((d, size))
    };
    let (ld, ls) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{ld}")]}
    });
    let cfg_path = work.path().join("config.json");
    fs::write(&cfg_path, config.to_string())?;
    let (cd, cs) = put(&cfg_path)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cd}"), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{ld}"), "size": ls}]
    });
    let man_path = work.path().join("manifest.json");
    fs::write(&man_path, manifest.to_string())?;
    let (md, ms) = put(&man_path)?;
    let layout = work.path().join("layout");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{md}"), "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": name}
        }]
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::other("tar of the layout failed"))
    }
}

impl Containerd {
    pub fn start() -> io::Result<Containerd> {
        let run_dir_existed = Path::new("/run/containerd").exists();
        let dir = tempfile::Builder::new()
            .prefix("keelson-containerd-")
            .tempdir()?;
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            ttrpc = d.join("ttrpc.sock").display(),
        );
        fs::write(d.join("config.toml"), config)?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let me = Containerd {
            dir,
            child,
            namespace: unique::name("kt", "ctd"),
            run_dir_existed,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !me.socket().exists() {
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "containerd did not start: {}",
                    me.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr` against this daemon in this fixture's namespace, with a 60 s limit.
    pub fn ctr<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> io::Result<Output> {
        crate::bounded::output(
            Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .arg("-n")
                .arg(&self.namespace)
                .args(args)
                .stdin(Stdio::null()),
            Duration::from_secs(60),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Whatever tasks are left: kill them, then the daemon.
        if let Ok(out) = self.ctr(&["task", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
                let _ = self.ctr(&["task", "delete", "-f", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mounts) = mountinfo::mounts_below(self.dir.path()) {
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // The runc shim keeps the runtime's state under /run/containerd/runc/<namespace>.
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        if !self.run_dir_existed {
            // Only empty directories go: another daemon of a parallel test may still use them.
            for d in ["runc", "s", "fifo", ""] {
                let _ = fs::remove_dir(Path::new("/run/containerd").join(d));
            }
        }
    }
}
