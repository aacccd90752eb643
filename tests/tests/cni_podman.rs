//! A real CNI caller: podman (Debian's, CNI network backend) runs containers on a network whose
//! conflist uses keelson's plugins, and one container reaches the other. podman itself runs
//! inside a test-made "host" netns (nsenter --net, so /sys stays the machine's), with its own
//! storage, run dir, network config dir and CNI plugin dir; Drop removes every container and
//! the netns takes the bridge with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keelson_tests::bounded;
use keelson_tests::cni::{self, Plugins, TestNet};

struct Podman {
    dir: tempfile::TempDir,
    net: TestNet,
}

impl Podman {
    fn new(plugins: &Plugins) -> Podman {
        let net = TestNet::new("podman").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("kt-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["rootfs/bin", "net.d", "cnibin", "root", "run", "ipam"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let busybox =
            std::env::var("KEELSON_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
        std::fs::copy(&busybox, d.join("rootfs/bin/busybox")).unwrap();
        for applet in ["sh", "ping", "sleep", "ip"] {
            std::os::unix::fs::symlink("busybox", d.join("rootfs/bin").join(applet)).unwrap();
        }
        for p in ["bridge", "host-local", "loopback", "portmap"] {
            std::fs::copy(plugins.bin(p), d.join("cnibin").join(p)).unwrap();
        }
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
                 network_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"none\"\n",
                d.join("cnibin").display(),
                d.join("net.d").display()
            ),
        )
        .unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [
                {"type": "bridge", "bridge": net.bridge, "isGateway": true, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": net.subnet()}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": d.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        });
        std::fs::write(d.join("net.d/kt.conflist"), conflist.to_string()).unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(d.join("rootfs"))
            .arg("-cf")
            .arg(d.join("rootfs.tar"))
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        let p = Podman { dir, net };
        let out = p.run(&[
            "import",
            &p.path("rootfs.tar"),
            "localhost/kt-busybox:latest",
        ]);
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.net.host.path().display()))
            .arg("podman")
            .args(["--root", &self.path("root"), "--runroot", &self.path("run")])
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--runtime", "/usr/sbin/runc"])
            .env("CONTAINERS_CONF", self.path("containers.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        bounded::output(
            self.command().args(args).stdin(Stdio::null()),
            keelson_tests::podman::LIMIT,
        )
        .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
    }

    /// `podman run` on the test network with limits this machine allows.
    fn run_container(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--pull",
            "never",
            "--network",
            &self.net.name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["rmi", "-af"]);
    }
}

fn plugin_dir() -> PathBuf {
    Plugins::keelson().expect("keelson CNI plugins").dir
}

#[test]
fn podman_containers_reach_each_other_over_our_plugins() {
    let plugins = Plugins {
        dir: plugin_dir(),
        label: "keelson",
    };
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is installed by scripts/deps.sh"
    );
    let p = Podman::new(&plugins);
    let out = p.run_container(&[
        "-d",
        "--name",
        "kt-a",
        "localhost/kt-busybox:latest",
        "sleep",
        "120",
    ]);
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = p.run(&[
        "inspect",
        "kt-a",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    ]);
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        ip.starts_with(&p.net.prefix),
        "address {ip:?} from {}",
        p.net.subnet()
    );
    assert_eq!(
        p.net.allocated_ips(),
        Vec::<String>::new(),
        "dataDir is podman's, not the TestNet's"
    );
    assert!(
        std::fs::read_dir(p.dir.path().join("ipam"))
            .unwrap()
            .count()
            > 0
    );

    let out = p.run_container(&[
        "--rm",
        "localhost/kt-busybox:latest",
        "ping",
        "-c1",
        "-W2",
        &ip,
    ]);
    assert!(
        out.status.success(),
        "container-to-container ping: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cni::ping(&p.net.host, &ip).unwrap(),
        "host netns reaches the container"
    );

    let out = p.run(&["rm", "-f", "-t", "0", "kt-a"]);
    assert!(out.status.success());
    // podman's DEL released the address and removed the veth.
    let want = vec![p.net.bridge.clone(), "lo".to_string()];
    let links = cni::settled_link_names(&p.net.host, &want);
    assert_eq!(links, want, "left behind: {links:?}");
    let left: Vec<_> = std::fs::read_dir(p.dir.path().join("ipam").join(&p.net.name))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
