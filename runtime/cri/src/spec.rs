//! The OCI runtime spec of a CRI container: the image's config as defaults, the kubelet's
//! `ContainerConfig` on top, and the sandbox's namespaces and files joined in, as containerd's
//! CRI plugin does it.

use crate::sandbox::Infra;
use keelson_proto::runtime::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}: not implemented by keelsond")]
    Unimplemented(String),
}

type Result<T> = std::result::Result<T, SpecError>;

/// The parts of an image's config a container starts from.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImageRunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

/// Reads `config` of an image config blob.
pub fn image_run_config(blob: &[u8]) -> Result<ImageRunConfig> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(default)]
        config: Option<ImageRunConfig>,
    }
    let o: Outer = serde_json::from_slice(blob)
        .map_err(|e| SpecError::Invalid(format!("image config: {e}")))?;
    Ok(o.config.unwrap_or_default())
}

/// Capabilities a container gets unless the pod says otherwise (containerd's default set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Every capability this kernel interface knows (`CAP_*` names), from the caps crate.
/// "All" capabilities as containerd means them (`cap.Current()`): the ones keelsond itself
/// holds, so a privileged container on a host whose root lacks some (a reduced bounding set)
/// still starts.
fn all_caps() -> Vec<String> {
    let current = caps::read(None, caps::CapSet::Effective).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading keelsond's capabilities; assuming all");
        caps::all()
    });
    let mut v: Vec<String> = current.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// Everything the spec is made from.
pub struct Inputs<'a> {
    pub id: &'a str,
    pub config: &'a pb::ContainerConfig,
    pub sandbox: &'a pb::PodSandboxConfig,
    pub sandbox_id: &'a str,
    pub infra: &'a Infra,
    pub image: &'a ImageRunConfig,
    pub image_name: &'a str,
    /// The container's root filesystem, mounted (users and groups are read from it).
    pub rootfs: &'a Path,
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability list after the CRI's add/drop (either may say "ALL").
pub fn capabilities(add: &[String], drop: &[String], privileged: bool) -> Vec<String> {
    if privileged {
        return all_caps();
    }
    let has_all = |l: &[String]| l.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<String> = if has_all(add) {
        all_caps()
    } else {
        let mut v: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        for c in add {
            let c = cap_name(c);
            if !v.contains(&c) {
                v.push(c);
            }
        }
        v
    };
    if has_all(drop) {
        // Drop ALL, then add back only what was asked for explicitly.
        caps = add
            .iter()
            .filter(|c| !c.eq_ignore_ascii_case("ALL"))
            .map(|c| cap_name(c))
            .collect();
    } else {
        let dropped: Vec<String> = drop.iter().map(|c| cap_name(c)).collect();
        caps.retain(|c| !dropped.contains(c));
    }
    caps
}

/// The process arguments: command replaces the entrypoint, args replace the cmd.
pub fn process_args(c: &pb::ContainerConfig, image: &ImageRunConfig) -> Result<Vec<String>> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv = if !c.command.is_empty() {
        let mut v = c.command.clone();
        v.extend(c.args.iter().cloned());
        v
    } else if !c.args.is_empty() {
        let mut v = entry;
        v.extend(c.args.iter().cloned());
        v
    } else {
        let mut v = entry;
        v.extend(cmd);
        v
    };
    if argv.is_empty() {
        return Err(SpecError::Invalid(
            "no command specified: neither the container config nor the image has one".into(),
        ));
    }
    Ok(argv)
}

/// The environment: the image's, then the CRI's (a later key replaces an earlier one).
pub fn environment(c: &pb::ContainerConfig, image: &ImageRunConfig, hostname: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if !vals.contains_key(k) {
            order.push(k.to_string());
        }
        vals.insert(k.to_string(), v.to_string());
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    for e in image.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for kv in &c.envs {
        set(&kv.key, &kv.value);
    }
    order
        .into_iter()
        .map(|k| format!("{k}={}", vals.get(&k).map(String::as_str).unwrap_or("")))
        .collect()
}

/// Finds a user in the rootfs's /etc/passwd: (uid, primary gid).
fn passwd_lookup(rootfs: &Path, name: &str) -> Option<(u32, u32)> {
    let text = read_in_rootfs(rootfs, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn passwd_by_uid(rootfs: &Path, uid: u32) -> Option<(String, u32)> {
    let text = read_in_rootfs(rootfs, "etc/passwd")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| Some((f[0].to_string(), f[3].parse().ok()?)))?
    })
}

fn group_lookup(rootfs: &Path, name: &str) -> Option<u32> {
    let text = read_in_rootfs(rootfs, "etc/group")?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Supplementary groups that list `user` as a member in the rootfs's /etc/group.
fn member_groups(rootfs: &Path, user: &str) -> Vec<u32> {
    let Some(text) = read_in_rootfs(rootfs, "etc/group") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user)).then(|| f[2].parse().ok())?
        })
        .collect()
}

/// Reads a file of the image's rootfs without following a symlink out of it.
fn read_in_rootfs(rootfs: &Path, rel: &str) -> Option<String> {
    let p = rootfs.join(rel);
    let meta = fs::symlink_metadata(&p).ok()?;
    if !meta.is_file() || meta.len() > 4 << 20 {
        return None;
    }
    fs::read_to_string(p).ok()
}

/// The user the process runs as: (uid, gid, additional gids).
pub fn user(
    sc: Option<&pb::LinuxContainerSecurityContext>,
    image: &ImageRunConfig,
    rootfs: &Path,
) -> Result<(u32, u32, Vec<u32>)> {
    let mut uid: Option<u32> = None;
    let mut gid: Option<u32> = None;
    let mut name: Option<String> = None;
    if let Some(sc) = sc {
        if let Some(u) = &sc.run_as_user {
            uid = Some(
                u32::try_from(u.value)
                    .map_err(|_| SpecError::Invalid(format!("run_as_user {}", u.value)))?,
            );
        } else if !sc.run_as_username.is_empty() {
            name = Some(sc.run_as_username.clone());
        }
        if let Some(g) = &sc.run_as_group {
            gid = Some(
                u32::try_from(g.value)
                    .map_err(|_| SpecError::Invalid(format!("run_as_group {}", g.value)))?,
            );
        }
    }
    if uid.is_none() && name.is_none() {
        if let Some(spec) = image.user.as_deref().filter(|s| !s.is_empty()) {
            let (u, g) = spec.split_once(':').unwrap_or((spec, ""));
            match u.parse::<u32>() {
                Ok(n) => uid = Some(n),
                Err(_) => name = Some(u.to_string()),
            }
            if gid.is_none() && !g.is_empty() {
                gid = Some(match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => group_lookup(rootfs, g).ok_or_else(|| {
                        SpecError::Invalid(format!("group {g:?} of the image user not found"))
                    })?,
                });
            }
        }
    }
    let (uid, primary, uname) = match (uid, name) {
        (Some(u), _) => {
            let found = passwd_by_uid(rootfs, u);
            (
                u,
                found.as_ref().map(|f| f.1).unwrap_or(0),
                found.map(|f| f.0),
            )
        }
        (None, Some(n)) => {
            let (u, g) = passwd_lookup(rootfs, &n).ok_or_else(|| {
                SpecError::Invalid(format!("user {n:?} not found in the image's /etc/passwd"))
            })?;
            (u, g, Some(n))
        }
        (None, None) => (0, 0, Some("root".to_string())),
    };
    let gid = gid.unwrap_or(primary);
    // Policy Merge (the default) adds the groups the image's /etc/group gives the user; Strict
    // keeps to the ones the caller names.
    let strict = sc.is_some_and(|sc| {
        sc.supplemental_groups_policy == pb::SupplementalGroupsPolicy::Strict as i32
    });
    let mut groups: Vec<u32> = uname
        .as_deref()
        .filter(|_| !strict)
        .map(|n| member_groups(rootfs, n))
        .unwrap_or_default();
    if let Some(sc) = sc {
        for g in &sc.supplemental_groups {
            let g = u32::try_from(*g)
                .map_err(|_| SpecError::Invalid(format!("supplemental group {g}")))?;
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok((uid, gid, groups))
}

fn ns_mode(
    n: Option<&pb::NamespaceOption>,
    f: fn(&pb::NamespaceOption) -> i32,
) -> pb::NamespaceMode {
    n.map(f)
        .and_then(|v| pb::NamespaceMode::try_from(v).ok())
        .unwrap_or(pb::NamespaceMode::Pod)
}

/// Builds the container's config.json.
pub fn build(i: &Inputs<'_>) -> Result<Value> {
    let c = i.config;
    let linux = c.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let sandbox_privileged = i
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged && !sandbox_privileged {
        return Err(SpecError::Invalid(
            "a privileged container needs a privileged sandbox".into(),
        ));
    }
    let args = process_args(c, i.image)?;
    let hostname = i.sandbox.hostname.as_str();
    let env = environment(c, i.image, hostname);
    let (uid, gid, groups) = user(sc, i.image, i.rootfs)?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        i.image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "working_dir {cwd:?} is not absolute"
        )));
    }
    let (add, drop, ambient) = sc
        .and_then(|s| s.capabilities.as_ref())
        .map(|cap| {
            (
                cap.add_capabilities.clone(),
                cap.drop_capabilities.clone(),
                cap.add_ambient_capabilities.clone(),
            )
        })
        .unwrap_or_default();
    let caps = capabilities(&add, &drop, privileged);
    let ambient: Vec<String> = ambient.iter().map(|c| cap_name(c)).collect();
    let resources = linux.and_then(|l| l.resources.as_ref());
    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": uid, "gid": gid, "additionalGids": groups},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ambient, "ambient": ambient,
        },
        "noNewPrivileges": sc.is_some_and(|s| s.no_new_privs),
    });
    if let Some(r) = resources.filter(|r| r.oom_score_adj != 0) {
        process["oomScoreAdj"] = json!(r.oom_score_adj);
    }

    // Mounts: the defaults, the sandbox's files, then the kubelet's.
    let user_paths: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
    let sys_opts = if privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if privileged { "rw" } else { "ro" }]}),
    ];
    let shm = i.infra.dir.join("shm");
    if shm.is_dir() && !user_paths.contains(&"/dev/shm") {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]}));
    } else if !user_paths.contains(&"/dev/shm") {
        mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}));
    }
    let readonly_rootfs = sc.is_some_and(|s| s.readonly_rootfs);
    let file_opts = if readonly_rootfs {
        json!(["rbind", "rprivate", "ro"])
    } else {
        json!(["rbind", "rprivate", "rw"])
    };
    for (dest, src) in [
        ("/etc/hostname", &i.infra.hostname_file),
        ("/etc/resolv.conf", &i.infra.resolv_conf),
        ("/etc/hosts", &i.infra.hosts_file),
    ] {
        if !user_paths.contains(&dest) && src.exists() {
            mounts.push(
                json!({"destination": dest, "type": "bind", "source": src, "options": file_opts}),
            );
        }
    }
    let mut root_propagation: Option<&str> = None;
    for m in &c.mounts {
        mounts.push(cri_mount(m, &mut root_propagation)?);
    }

    // Namespaces.
    let nsopts = sc.and_then(|s| s.namespace_options.as_ref());
    let mut namespaces = vec![json!({"type": "mount"})];
    let sandbox_ns: BTreeMap<&str, std::path::PathBuf> =
        i.infra.namespace_paths().into_iter().collect();
    let join = |t: &str, out: &mut Vec<Value>| {
        if let Some(p) = sandbox_ns.get(t) {
            out.push(json!({"type": t, "path": p}));
        }
    };
    if ns_mode(nsopts, |n| n.network) != pb::NamespaceMode::Node {
        join("network", &mut namespaces);
        join("uts", &mut namespaces);
    }
    if ns_mode(nsopts, |n| n.ipc) != pb::NamespaceMode::Node {
        join("ipc", &mut namespaces);
    }
    match ns_mode(nsopts, |n| n.pid) {
        pb::NamespaceMode::Node => {}
        pb::NamespaceMode::Pod => {
            if sandbox_ns.contains_key("pid") {
                join("pid", &mut namespaces);
            } else {
                namespaces.push(json!({"type": "pid"}));
            }
        }
        pb::NamespaceMode::Container => namespaces.push(json!({"type": "pid"})),
        pb::NamespaceMode::Target => {
            return Err(SpecError::Unimplemented(
                "namespace_options.pid TARGET (ephemeral containers)".into(),
            ));
        }
    }

    // Devices. A privileged container gets the host's device nodes and may use any device
    // (containerd's WithHostDevices + WithAllDevicesAllowed); the CRI's devices come on top.
    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    let mut cri_devices = Vec::new();
    for d in &c.devices {
        let (dev, rule) = device(d)?;
        cri_devices.push(dev);
        device_rules.push(rule);
    }
    if privileged {
        let taken: Vec<&Value> = cri_devices.iter().map(|d| &d["path"]).collect();
        devices.extend(
            host_devices(Path::new("/dev"))
                .into_iter()
                .filter(|d| !taken.contains(&&d["path"])),
        );
        device_rules.push(json!({"allow": true, "access": "rwm"}));
    }
    devices.extend(cri_devices);

    let mut res = json!({"devices": device_rules});
    if let Some(r) = resources {
        check_resources(r)?;
        let mut cpu = serde_json::Map::new();
        if r.cpu_shares != 0 {
            cpu.insert("shares".into(), json!(r.cpu_shares));
        }
        if r.cpu_quota != 0 {
            cpu.insert("quota".into(), json!(r.cpu_quota));
        }
        if r.cpu_period != 0 {
            cpu.insert("period".into(), json!(r.cpu_period));
        }
        if !r.cpuset_cpus.is_empty() {
            cpu.insert("cpus".into(), json!(r.cpuset_cpus));
        }
        if !r.cpuset_mems.is_empty() {
            cpu.insert("mems".into(), json!(r.cpuset_mems));
        }
        if !cpu.is_empty() {
            res["cpu"] = Value::Object(cpu);
        }
        let mut mem = serde_json::Map::new();
        if r.memory_limit_in_bytes > 0 {
            mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
        }
        if r.memory_swap_limit_in_bytes > 0 {
            mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
        }
        if !mem.is_empty() {
            res["memory"] = Value::Object(mem);
        }
        if !r.hugepage_limits.is_empty() {
            res["hugepageLimits"] = r
                .hugepage_limits
                .iter()
                .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                .collect();
        }
        if !r.unified.is_empty() {
            res["unified"] = json!(r.unified);
        }
    }

    let parent = i
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    let cgroups_path = if parent.is_empty() {
        i.id.to_string()
    } else {
        format!("{}/{}", parent.trim_end_matches('/'), i.id)
    };

    let mut linux_json = json!({
        "namespaces": namespaces,
        "resources": res,
        "cgroupsPath": cgroups_path,
        "devices": devices,
    });
    if !privileged {
        let masked: Vec<String> = match sc.filter(|s| !s.masked_paths.is_empty()) {
            Some(s) => s.masked_paths.clone(),
            None => DEFAULT_MASKED.iter().map(|s| s.to_string()).collect(),
        };
        let ro: Vec<String> = match sc.filter(|s| !s.readonly_paths.is_empty()) {
            Some(s) => s.readonly_paths.clone(),
            None => DEFAULT_READONLY.iter().map(|s| s.to_string()).collect(),
        };
        linux_json["maskedPaths"] = json!(masked);
        linux_json["readonlyPaths"] = json!(ro);
    }
    if let Some(p) = root_propagation {
        linux_json["rootfsPropagation"] = json!(p);
    }
    if let Some(seccomp) = seccomp(sc, privileged)? {
        linux_json["seccomp"] = seccomp;
    }
    if let Some(s) = sc.and_then(|s| s.apparmor.as_ref()) {
        if s.profile_type == pb::security_profile::ProfileType::Localhost as i32 {
            return Err(SpecError::Unimplemented(
                "AppArmor profiles (this host has no AppArmor)".into(),
            ));
        }
    }

    let mut annotations = serde_json::Map::new();
    for (k, v) in &c.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        json!("container"),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), json!(i.sandbox_id));
    if let Some(m) = &c.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), json!(m.name));
    }
    annotations.insert("io.kubernetes.cri.image-name".into(), json!(i.image_name));

    Ok(json!({
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": readonly_rootfs},
        "hostname": "",
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux_json,
    }))
}

/// Refuses resource values no kernel accepts, naming the field.
pub fn check_resources(r: &pb::LinuxContainerResources) -> Result<()> {
    let bad = |field: &str, v: i64| {
        Err(SpecError::Invalid(format!(
            "resources.{field} {v} is out of range"
        )))
    };
    if r.cpu_shares < 0 || r.cpu_shares > 262_144 {
        return bad("cpu_shares", r.cpu_shares);
    }
    if r.cpu_period < 0 {
        return bad("cpu_period", r.cpu_period);
    }
    if r.cpu_quota < -1 {
        return bad("cpu_quota", r.cpu_quota);
    }
    if r.memory_limit_in_bytes < 0 {
        return bad("memory_limit_in_bytes", r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes < -1 {
        return bad("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes);
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return bad("oom_score_adj", r.oom_score_adj);
    }
    Ok(())
}

fn cri_mount(m: &pb::Mount, root_propagation: &mut Option<&'static str>) -> Result<Value> {
    if m.container_path.is_empty() || !m.container_path.starts_with('/') {
        return Err(SpecError::Invalid(format!(
            "mount container_path {:?} must be an absolute path",
            m.container_path
        )));
    }
    if m.host_path.is_empty() {
        if m.image.is_some() {
            return Err(SpecError::Unimplemented("image volume mounts".into()));
        }
        return Err(SpecError::Invalid(format!(
            "mount {}: host_path is empty",
            m.container_path
        )));
    }
    let propagation = pb::MountPropagation::try_from(m.propagation)
        .unwrap_or(pb::MountPropagation::PropagationPrivate);
    // containerd's checks of a recursive read-only mount, before anything is created.
    if m.recursive_read_only {
        if propagation != pb::MountPropagation::PropagationPrivate {
            return Err(SpecError::Invalid(format!(
                "recursive read-only mount needs private propagation, got {:?} (hostPath={:?})",
                propagation.as_str_name(),
                m.host_path
            )));
        }
        if !m.readonly {
            return Err(SpecError::Invalid(format!(
                "recursive read-only mount conflicts with RW mount (hostPath={:?})",
                m.host_path
            )));
        }
        if !keelson_container::idmap::recursive_readonly_supported() {
            return Err(SpecError::Unimplemented(
                "recursive read-only mount is not supported (mount_setattr needs Linux 5.12)"
                    .into(),
            ));
        }
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(SpecError::Unimplemented("idmapped CRI mounts".into()));
    }
    // A host path that does not exist becomes a directory; a symlink is resolved (the kernel
    // would follow it anyway; the resolved path is what status reports and what is checked).
    let host = Path::new(&m.host_path);
    if fs::symlink_metadata(host).is_err() {
        fs::create_dir_all(host).map_err(|e| {
            SpecError::Invalid(format!("mount host_path {}: creating it: {e}", m.host_path))
        })?;
    }
    let src = fs::canonicalize(host)
        .map_err(|e| SpecError::Invalid(format!("mount host_path {}: {e}", m.host_path)))?;
    let mut opts = vec!["rbind"];
    match propagation {
        pb::MountPropagation::PropagationPrivate => opts.push("rprivate"),
        pb::MountPropagation::PropagationHostToContainer => {
            opts.push("rslave");
            if root_propagation.is_none() {
                *root_propagation = Some("rslave");
            }
        }
        pb::MountPropagation::PropagationBidirectional => {
            opts.push("rshared");
            *root_propagation = Some("rshared");
        }
    }
    opts.push(if m.readonly { "ro" } else { "rw" });
    if m.recursive_read_only {
        opts.push("rro");
    }
    Ok(json!({"destination": m.container_path, "type": "bind", "source": src, "options": opts}))
}

/// The device nodes below `dir` as OCI `linux.devices` (containerd's `HostDevices`): the
/// directories of other mounts (pts, shm, mqueue, fd) and the console are left out, symlinks
/// are not followed.
fn host_devices(dir: &Path) -> Vec<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        let name = e.file_name();
        let ft = meta.file_type();
        if ft.is_dir() {
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                out.extend(host_devices(&e.path()));
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let kind = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else {
            continue;
        };
        let rdev = meta.rdev();
        out.push(json!({"path": e.path(), "type": kind,
                        "major": libc::major(rdev), "minor": libc::minor(rdev),
                        "fileMode": meta.mode() & 0o777, "uid": meta.uid(), "gid": meta.gid()}));
    }
    out
}

fn device(d: &pb::Device) -> Result<(Value, Value)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::metadata(&d.host_path)
        .map_err(|e| SpecError::Invalid(format!("device {}: {e}", d.host_path)))?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(SpecError::Invalid(format!(
            "device {} is not a device node",
            d.host_path
        )));
    };
    let rdev = meta.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let perms = if d.permissions.is_empty() {
        "rwm".to_string()
    } else {
        d.permissions.clone()
    };
    if !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(SpecError::Invalid(format!(
            "device {} permissions {perms:?}: only r, w and m",
            d.host_path
        )));
    }
    let path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        d.container_path.clone()
    };
    Ok((
        json!({"path": path, "type": kind, "major": major, "minor": minor,
               "fileMode": meta.mode() & 0o777, "uid": 0, "gid": 0}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": perms}),
    ))
}

fn seccomp(
    sc: Option<&pb::LinuxContainerSecurityContext>,
    privileged: bool,
) -> Result<Option<Value>> {
    if privileged {
        return Ok(None);
    }
    let Some(profile) = sc.and_then(|s| s.seccomp.as_ref()) else {
        // No profile given: unconfined, as the kubelet means it when it sends none.
        return Ok(None);
    };
    use pb::security_profile::ProfileType;
    match ProfileType::try_from(profile.profile_type).unwrap_or(ProfileType::Unconfined) {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => {
            let p = keelson_container::seccomp::default_profile();
            serde_json::to_value(p)
                .map(Some)
                .map_err(|e| SpecError::Invalid(format!("default seccomp profile: {e}")))
        }
        ProfileType::Localhost => {
            let path = &profile.localhost_ref;
            if !path.starts_with('/') {
                return Err(SpecError::Invalid(format!(
                    "seccomp localhost profile {path:?} must be an absolute path"
                )));
            }
            let data = fs::read(path)
                .map_err(|e| SpecError::Invalid(format!("seccomp profile {path}: {e}")))?;
            let v: Value = serde_json::from_slice(&data)
                .map_err(|e| SpecError::Invalid(format!("seccomp profile {path}: {e}")))?;
            Ok(Some(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn capability_arithmetic() {
        let caps = capabilities(&s(&["NET_ADMIN"]), &s(&["KILL"]), false);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert!(caps.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(
            capabilities(&s(&["CHOWN"]), &s(&["ALL"]), false),
            s(&["CAP_CHOWN"])
        );
        assert!(capabilities(&[], &s(&["ALL"]), false).is_empty());
        assert_eq!(
            capabilities(&s(&["ALL"]), &[], false).len(),
            all_caps().len()
        );
        assert_eq!(capabilities(&[], &[], true).len(), all_caps().len());
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd() {
        let img = ImageRunConfig {
            entrypoint: Some(s(&["/entry"])),
            cmd: Some(s(&["default"])),
            ..Default::default()
        };
        let mut c = pb::ContainerConfig::default();
        assert_eq!(process_args(&c, &img).ok(), Some(s(&["/entry", "default"])));
        c.args = s(&["x"]);
        assert_eq!(process_args(&c, &img).ok(), Some(s(&["/entry", "x"])));
        c.command = s(&["/bin/sh"]);
        assert_eq!(process_args(&c, &img).ok(), Some(s(&["/bin/sh", "x"])));
        assert!(process_args(&pb::ContainerConfig::default(), &ImageRunConfig::default()).is_err());
    }

    #[test]
    fn environment_later_keys_win() {
        let img = ImageRunConfig {
            env: Some(s(&["PATH=/img", "A=1"])),
            ..Default::default()
        };
        let c = pb::ContainerConfig {
            envs: vec![pb::KeyValue {
                key: "A".into(),
                value: "2".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            environment(&c, &img, "h"),
            s(&["PATH=/img", "HOSTNAME=h", "A=2"])
        );
    }

    #[test]
    fn users_come_from_the_image_passwd() {
        let dir = tempfile::tempdir().expect("tmp");
        fs::create_dir_all(dir.path().join("etc")).expect("etc");
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n",
        )
        .expect("passwd");
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nweb:x:44:\nextra:x:55:web\n",
        )
        .expect("group");
        let img = ImageRunConfig {
            user: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(user(None, &img, dir.path()).ok(), Some((33, 44, vec![55])));
        let sc = pb::LinuxContainerSecurityContext {
            run_as_user: Some(pb::Int64Value { value: 1000 }),
            run_as_group: Some(pb::Int64Value { value: 2000 }),
            supplemental_groups: vec![7],
            ..Default::default()
        };
        assert_eq!(
            user(Some(&sc), &img, dir.path()).ok(),
            Some((1000, 2000, vec![7]))
        );
        let sc = pb::LinuxContainerSecurityContext {
            run_as_username: "nobody-here".into(),
            ..Default::default()
        };
        assert!(user(Some(&sc), &img, dir.path()).is_err());
        // Merge adds /etc/group's groups of the user to the caller's; Strict keeps the caller's.
        let mut sc = pb::LinuxContainerSecurityContext {
            run_as_username: "web".into(),
            supplemental_groups: vec![7],
            ..Default::default()
        };
        assert_eq!(
            user(Some(&sc), &img, dir.path()).ok(),
            Some((33, 44, vec![55, 7]))
        );
        sc.supplemental_groups_policy = pb::SupplementalGroupsPolicy::Strict as i32;
        assert_eq!(
            user(Some(&sc), &img, dir.path()).ok(),
            Some((33, 44, vec![7]))
        );
    }
}
