//! Loading config.json from a bundle and checking it before anything is created.

use crate::cgroups::{DeviceRule, default_allowed_devices};
use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A checked configuration: the spec plus what was derived from it.
#[derive(Debug, Clone)]
pub struct Config {
    pub spec: Spec,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
}

/// Reads and parses `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<Config> {
    let meta = fs::metadata(bundle).map_err(|source| Error::Bundle {
        path: bundle.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::Bundle {
            path: bundle.to_path_buf(),
            source: std::io::Error::new(ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let bundle = fs::canonicalize(bundle).map_err(|source| Error::Bundle {
        path: bundle.to_path_buf(),
        source,
    })?;
    let path = bundle.join("config.json");
    let data =
        fs::read(&path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
    let spec: Spec = serde_json::from_slice(&data).map_err(|e| Error::Config(e.to_string()))?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Config("root must be set".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = fs::canonicalize(&rootfs)
        .map_err(|e| Error::Config(format!("root.path {}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(Error::Config(format!(
            "root.path {} is not a directory",
            rootfs.display()
        )));
    }
    let cfg = Config {
        spec,
        bundle,
        rootfs,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

impl Config {
    /// Namespaces requested (type, optional path to join).
    pub fn namespaces(&self) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    /// True when the namespace of this type is a new one (listed without a path).
    pub fn new_ns(&self, t: LinuxNamespaceType) -> bool {
        self.namespaces()
            .iter()
            .any(|(ty, p)| *ty == t && p.is_none())
    }

    pub fn has_ns(&self, t: LinuxNamespaceType) -> bool {
        self.namespaces().iter().any(|(ty, _)| *ty == t)
    }

    /// Device cgroup rules: the spec's, then runc's default allowed devices.
    pub fn device_rules(&self) -> Vec<DeviceRule> {
        let mut out = Vec::new();
        let linux = self.spec.linux().as_ref();
        for d in linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default()
        {
            let kind = match d.typ() {
                None | Some(LinuxDeviceType::A) => 'a',
                Some(LinuxDeviceType::B) => 'b',
                Some(_) => 'c',
            };
            // No type (or "a") means every device, whatever the numbers say.
            out.push(DeviceRule {
                allow: d.allow(),
                kind,
                major: d.major(),
                minor: d.minor(),
                access: d.access().clone().unwrap_or_else(|| "rwm".into()),
            });
        }
        if out.is_empty() {
            return out;
        }
        // As runc: `linux.devices` only make nodes; the device cgroup allows them only where
        // a rule says so (a CRI device with permissions "r" stays read-only).
        out.extend(default_allowed_devices());
        out
    }

    fn validate(&self) -> Result<()> {
        let spec = &self.spec;
        let bad = |m: String| Err(Error::Config(m));
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::Config("process must be set".into()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return bad("process.args must not be empty".into());
        }
        crate::process::check_exec_size(process)?;
        if !process.cwd().is_absolute() {
            return bad(format!(
                "process.cwd {:?} is not an absolute path",
                process.cwd()
            ));
        }
        for r in process.rlimits().iter().flatten() {
            if r.soft() > r.hard() {
                return bad(format!(
                    "rlimit {:?}: soft {} is above hard {}",
                    r.typ(),
                    r.soft(),
                    r.hard()
                ));
            }
        }
        if let Some(adj) = process.oom_score_adj() {
            if !(-1000..=1000).contains(&adj) {
                return bad(format!(
                    "process.oomScoreAdj {adj} is out of range -1000..=1000"
                ));
            }
        }
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::Config("linux must be set".into()))?;
        let selinux = crate::process::selinux_enabled();
        if process
            .selinux_label()
            .as_deref()
            .is_some_and(|l| !l.is_empty())
            && !selinux
        {
            return bad(
                "selinux label is specified in config, but selinux is disabled or not supported"
                    .into(),
            );
        }
        if let Some(label) = linux.mount_label().as_deref().filter(|l| !l.is_empty()) {
            if !selinux {
                return bad("selinux mount label is specified in config, but selinux is disabled or not supported".into());
            }
            return Err(Error::Unimplemented(format!(
                "linux.mountLabel {label:?} (SELinux mount contexts)"
            )));
        }
        if let Some(sc) = linux.seccomp() {
            crate::seccomp::check(sc)?;
        }
        let mut seen = HashSet::new();
        for (t, path) in self.namespaces() {
            if !seen.insert(ns_name(t)) {
                return bad(format!("namespace {} is listed twice", ns_name(t)));
            }
            if t == LinuxNamespaceType::Time {
                return Err(Error::Unimplemented("time namespace".into()));
            }
            if let Some(p) = path {
                if !p.is_absolute() {
                    return bad(format!(
                        "namespace {} path {p:?} is not absolute",
                        ns_name(t)
                    ));
                }
                if let Err(e) = fs::metadata(&p) {
                    return bad(format!(
                        "namespace {} path {}: {e}",
                        ns_name(t),
                        p.display()
                    ));
                }
            }
        }
        if !self.has_ns(LinuxNamespaceType::Mount) {
            return bad("linux.namespaces must include a mount namespace".into());
        }
        let userns = self.new_ns(LinuxNamespaceType::User);
        let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
        if userns && !has_maps {
            return bad("user namespace enabled, but no uid/gid mappings found".into());
        }
        if !userns && has_maps {
            return bad("uid/gid mappings are set, but no new user namespace is configured".into());
        }
        if (spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
            || spec.domainname().as_ref().is_some_and(|h| !h.is_empty()))
            && !self.new_ns(LinuxNamespaceType::Uts)
        {
            return bad("unable to set hostname without a private UTS namespace".into());
        }
        for (key, _) in linux.sysctl().iter().flatten() {
            self.check_sysctl(key)?;
        }
        if let Some(p) = linux.rootfs_propagation() {
            if !p.is_empty() && crate::mount_opts::propagation(p).is_none() {
                return bad(format!(
                    "linux.rootfsPropagation {p:?} is not a propagation mode"
                ));
            }
        }
        for m in spec.mounts().iter().flatten() {
            if !m.destination().is_absolute() {
                return bad(format!(
                    "mount destination {:?} is not an absolute path",
                    m.destination()
                ));
            }
            crate::mount_opts::parse(m.options().as_deref().unwrap_or_default())?;
        }
        for p in linux
            .masked_paths()
            .iter()
            .flatten()
            .chain(linux.readonly_paths().iter().flatten())
        {
            if !p.starts_with('/') {
                return bad(format!("masked/readonly path {p:?} is not absolute"));
            }
        }
        for d in linux.devices().iter().flatten() {
            if !d.path().is_absolute() || !d.path().starts_with("/dev") {
                return bad(format!(
                    "linux.devices path {:?} must be absolute and below /dev",
                    d.path()
                ));
            }
            if d.typ() == LinuxDeviceType::A {
                return bad(format!(
                    "linux.devices {:?}: type must be c, b, u or p",
                    d.path()
                ));
            }
        }
        Ok(())
    }

    /// The sysctls runc allows, each only in the namespace that isolates it.
    fn check_sysctl(&self, key: &str) -> Result<()> {
        let ipc = [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ];
        let needs = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
            LinuxNamespaceType::Ipc
        } else if key.starts_with("net.") {
            LinuxNamespaceType::Network
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            LinuxNamespaceType::Uts
        } else {
            return Err(Error::Config(format!(
                "sysctl {key:?} is not in a separate kernel namespace"
            )));
        };
        if key.contains("..") || key.contains('/') {
            return Err(Error::Config(format!(
                "sysctl {key:?} is not a sysctl name"
            )));
        }
        if !self.has_ns(needs) {
            return Err(Error::Config(format!(
                "sysctl {key:?} is not allowed in the host's {} namespace",
                ns_name(needs)
            )));
        }
        Ok(())
    }
}
