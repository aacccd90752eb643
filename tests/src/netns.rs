//! Named network namespaces (`ip netns add`), and namespace identities.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use crate::unique;

/// A network namespace pinned at `/run/netns/<name>`; Drop runs `ip netns del`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> io::Result<std::process::Output> {
    Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("run ip {}: {e}", args.join(" "))))
}

impl Netns {
    /// `ip netns add kt-<hint>-<pid>-<n>` (the hint is cut to 8 characters).
    pub fn new(hint: &str) -> io::Result<Netns> {
        let hint = unique::sanitize(hint, 8);
        for _ in 0..20 {
            let name = format!("kt-{hint}-{}-{}", std::process::id(), unique::next());
            if PathBuf::from("/run/netns").join(&name).exists() {
                continue;
            }
            let out = ip(&["netns", "add", &name])?;
            if out.status.success() {
                return Ok(Netns { name });
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.contains("exists") {
                return Err(io::Error::other(format!(
                    "ip netns add {name}: {}",
                    stderr.trim()
                )));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free netns name",
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path to put into `linux.namespaces[].path`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's inode number (what `readlink /proc/self/ns/net` shows as `net:[N]`).
    pub fn inode(&self) -> io::Result<u64> {
        Ok(fs::metadata(self.path())?.ino())
    }

    /// Runs a command inside the namespace (`ip netns exec <name> ...`).
    pub fn exec(&self, args: &[&str]) -> io::Result<std::process::Output> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match ip(&["netns", "del", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "keelson-tests: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("keelson-tests: {e}"),
        }
    }
}

/// The namespace kinds under `/proc/<pid>/ns/` that a container config can name, as
/// (OCI type, proc file name).
pub const NAMESPACE_KINDS: [(&str, &str); 7] = [
    ("pid", "pid"),
    ("network", "net"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("mount", "mnt"),
    ("cgroup", "cgroup"),
    ("user", "user"),
];

/// `readlink /proc/self/ns/<file>`, e.g. `net:[4026531840]`.
pub fn self_ns_link(file: &str) -> io::Result<String> {
    let link = fs::read_link(format!("/proc/self/ns/{file}"))?;
    Ok(link.to_string_lossy().into_owned())
}

/// The inode inside a link text like `net:[4026531840]`.
pub fn ns_link_inode(link: &str) -> Option<u64> {
    link.trim()
        .rsplit_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_inode_parses() {
        assert_eq!(ns_link_inode("net:[4026531840]\n"), Some(4026531840));
        assert_eq!(ns_link_inode("net:4026531840"), None);
    }

    #[test]
    fn netns_lifecycle() {
        let ns = Netns::new("unit").expect("netns");
        let path = ns.path();
        assert!(path.exists());
        let inode = ns.inode().expect("inode");
        assert_ne!(
            Some(inode),
            ns_link_inode(&self_ns_link("net").expect("own net ns"))
        );
        let out = ns.exec(&["readlink", "/proc/self/ns/net"]).expect("exec");
        assert_eq!(
            ns_link_inode(&String::from_utf8_lossy(&out.stdout)),
            Some(inode)
        );
        drop(ns);
        assert!(!path.exists());
    }
}
