//! Pod directories and volumes, as upstream's volume manager and `makeMounts` lay them out:
//!
//! ```text
//! <root-dir>/pods/<uid>/
//!   volumes/kubernetes.io~empty-dir/<name>      emptyDir (a directory, or a tmpfs for medium Memory)
//!   volumes/kubernetes.io~downward-api/<name>   downwardAPI (a tmpfs, files written atomically)
//!   volumes/kubernetes.io~projected/<name>      projected (downwardAPI sources only)
//!   volume-subpaths/<volume>/<container>/<i>    bind mounts of subPath targets
//!   plugins/kubernetes.io~empty-dir/<name>/ready
//!   etc-hosts                                   the managed /etc/hosts (see hosts.rs)
//! ```
//!
//! [`setup`] runs before the sandbox on every sync (idempotent); a failure keeps the pod from
//! starting and is reported with upstream's FailedMount text. [`container_mounts`] turns a
//! container's volumeMounts into CRI mounts (subPath/subPathExpr checked and bind-mounted,
//! readOnly, propagation, /etc/hosts). [`cleanup_pod`] unmounts everything below the pod's
//! directory and removes it; [`housekeeping`] does that for directories of pods that no longer
//! exist (also after a restart).

use crate::Shared;
use crate::config::Config;
use crate::podconfig::{ConfigError, expand, meta, spec};
use crate::quantity;
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, Pod, PodSpec, Volume, VolumeMount,
};
use keelson_proto::runtime::v1 as pb;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const PROJECTED: &str = "kubernetes.io~projected";

/// The prefix of every volume setup failure (upstream's FailedMount event text).
pub const FAILED_MOUNT: &str = "MountVolume.SetUp failed for volume";

pub fn pods_dir(root: &Path) -> PathBuf {
    root.join("pods")
}

pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    pods_dir(root).join(uid)
}

/// The volumes of a pod that have usage figures (upstream's volumes with a metrics provider:
/// emptyDir, downwardAPI, projected; hostPath has none), in spec order: (name, directory,
/// whether it counts as the pod's local ephemeral storage — a disk emptyDir).
pub fn measured_volumes(root: &Path, pod: &Pod) -> Vec<(String, PathBuf, bool)> {
    let (_, _, uid) = meta(pod);
    spec(pod)
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            let (plugin, ephemeral) = if let Some(ed) = &v.empty_dir {
                (EMPTY_DIR, ed.medium.as_deref().unwrap_or("").is_empty())
            } else if v.downward_api.is_some() {
                (DOWNWARD_API, false)
            } else if v.projected.is_some() {
                (PROJECTED, false)
            } else {
                return None;
            };
            Some((
                v.name.clone(),
                volume_dir(root, uid, plugin, &v.name),
                ephemeral,
            ))
        })
        .collect()
}

fn volume_dir(root: &Path, uid: &str, plugin: &str, name: &str) -> PathBuf {
    pod_dir(root, uid).join("volumes").join(plugin).join(name)
}

/// The pod's managed hosts file.
pub fn hosts_file(root: &Path, uid: &str) -> PathBuf {
    pod_dir(root, uid).join("etc-hosts")
}

// ---------------------------------------------------------------------------------------------
// The mount table.

struct MountEntry {
    point: PathBuf,
    fs_type: String,
    shared: bool,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || sep < 6 || sep + 1 >= f.len() {
            continue;
        }
        out.push(MountEntry {
            point: PathBuf::from(unescape(f[4])),
            fs_type: f[sep + 1].to_string(),
            shared: f[6..sep].iter().any(|o| o.starts_with("shared:")),
        });
    }
    out
}

fn mount_table() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The topmost mount at exactly `path` (canonical), if any.
fn mount_at<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.point == path)
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = match fs::canonicalize(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut v: Vec<PathBuf> = mount_table()?
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p.starts_with(&dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    Ok(v)
}

/// Unmounts everything at or below `dir` (deepest first); an error when a mount is left.
fn unmount_below(dir: &Path) -> Result<(), String> {
    for _ in 0..8 {
        let left = mounts_below(dir).map_err(|e| format!("reading the mount table: {e}"))?;
        if left.is_empty() {
            return Ok(());
        }
        for p in left {
            tracing::debug!(path = %p.display(), "unmounting");
            if let Err(e) = nix::mount::umount2(&p, MntFlags::empty()) {
                tracing::debug!(path = %p.display(), error = %e, "unmount failed; detaching");
                let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
            }
        }
    }
    let left = mounts_below(dir).map_err(|e| format!("reading the mount table: {e}"))?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "mounts left below {}: {}",
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up: the pods directory, the root dir's mount propagation, node allocatable.

/// What the node can give pods (upstream's node allocatable: capacity minus the hard eviction
/// thresholds; no kube/system reservations yet).
#[derive(Clone, Copy, Debug)]
pub struct Allocatable {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

static ALLOCATABLE: OnceLock<Allocatable> = OnceLock::new();

fn threshold(value: Option<&String>, default: &str, capacity: i64) -> i64 {
    let v = value.map(String::as_str).unwrap_or(default);
    if let Some(p) = v.strip_suffix('%') {
        let pct: f64 = p.trim().parse().unwrap_or(0.0);
        (capacity as f64 * pct / 100.0) as i64
    } else {
        quantity::bytes(v).unwrap_or(0)
    }
}

/// Node allocatable as upstream: capacity minus systemReserved and kubeReserved (`reserved`)
/// minus the hard eviction thresholds.
fn compute_allocatable(
    root: &Path,
    eviction: &BTreeMap<String, String>,
    reserved: &BTreeMap<String, i64>,
) -> Allocatable {
    let res = |name: &str| reserved.get(name).copied().unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1);
    let mem_total = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let disk = nix::sys::statvfs::statvfs(root)
        .map(|s| s.blocks() as i64 * s.fragment_size() as i64)
        .unwrap_or(0);
    Allocatable {
        cpu_milli: (cpus * 1000 - res("cpu")).max(0),
        memory: (mem_total
            - res("memory")
            - threshold(eviction.get("memory.available"), "100Mi", mem_total))
        .max(0),
        ephemeral_storage: (disk
            - res("ephemeral-storage")
            - threshold(eviction.get("nodefs.available"), "10%", disk))
        .max(0),
    }
}

pub fn allocatable() -> Allocatable {
    *ALLOCATABLE.get_or_init(|| {
        compute_allocatable(
            Path::new("/var/lib/kubelet"),
            &BTreeMap::new(),
            &BTreeMap::new(),
        )
    })
}

/// Upstream's `MakeRShared` of the root dir: mount propagation (HostToContainer,
/// Bidirectional) of pod volumes needs the root dir on a shared mount; when the mount holding
/// it is not shared, the root dir is bind-mounted onto itself and made rshared.
fn make_rshared(root: &Path) -> Result<(), String> {
    let root = fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let table = mount_table().map_err(|e| format!("reading the mount table: {e}"))?;
    let holder = table
        .iter()
        .filter(|m| root.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count());
    if holder.is_some_and(|m| m.shared) {
        return Ok(());
    }
    if holder.is_none_or(|m| m.point != root) {
        tracing::info!(dir = %root.display(), "the root dir is not on a shared mount: bind-mounting it onto itself");
        nix::mount::mount(
            Some(&root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("bind-mounting {} onto itself: {e}", root.display()))?;
    }
    nix::mount::mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("making {} rshared: {e}", root.display()))
}

/// Creates `<root-dir>/pods`, makes the root dir rshared and records node allocatable.
pub fn init(cfg: &Config) -> Result<(), String> {
    let pods = pods_dir(&cfg.root_dir);
    fs::create_dir_all(&pods).map_err(|e| format!("creating {}: {e}", pods.display()))?;
    // A directory tree per pod below it.
    crate::fsattr::hint_top_dir(&pods);
    make_rshared(&cfg.root_dir).map_err(|e| format!("error configuring root directory: {e}"))?;
    let a = compute_allocatable(&cfg.root_dir, &cfg.eviction_hard, &cfg.reserved);
    let _ = ALLOCATABLE.set(a);
    tracing::debug!(?a, "node allocatable");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Resource values (downward API: env resourceFieldRef and volume items).

fn res_of<'a>(c: &'a Container, which: &str, name: &str) -> Option<&'a str> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    m.get(name).map(|q| q.0.as_str())
}

/// Upstream's `ExtractContainerResourceValue` after `MergeContainerResourceLimits`: a limit
/// that is not set is node allocatable (cpu, memory, ephemeral-storage), a request that is not
/// set is the limit (API defaulting) or 0; the value is divided by `divisor` (default 1) and
/// rounded up.
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let unsupported = || format!("unsupported container resource : {resource}");
    let (which, name) = resource.split_once('.').ok_or_else(unsupported)?;
    if which != "limits" && which != "requests" {
        return Err(unsupported());
    }
    let is_cpu = name == "cpu";
    if !(is_cpu
        || name == "memory"
        || name == "ephemeral-storage"
        || name.starts_with("hugepages-"))
    {
        return Err(unsupported());
    }
    let parse = |q: &str| -> Result<f64, String> {
        if is_cpu {
            quantity::milli_cpu(q).map(|m| m as f64)
        } else {
            quantity::bytes(q).map(|b| b as f64)
        }
    };
    let limit = res_of(c, "limits", name).map(parse).transpose()?;
    let value = if which == "limits" {
        limit
    } else {
        res_of(c, "requests", name)
            .map(parse)
            .transpose()?
            .or(limit)
            .or(Some(0.0))
    };
    let a = allocatable();
    let value = match value {
        Some(v) => v,
        None => match name {
            "cpu" => a.cpu_milli as f64,
            "memory" => a.memory as f64,
            "ephemeral-storage" => a.ephemeral_storage as f64,
            _ => 0.0,
        },
    };
    let div = match divisor.map(parse).transpose()? {
        Some(d) if d > 0.0 => d,
        _ => {
            if is_cpu {
                1000.0
            } else {
                1.0
            }
        }
    };
    Ok(((value / div).ceil() as i64).to_string())
}

// ---------------------------------------------------------------------------------------------
// Validation (upstream's ValidatePodSpec parts about volumes and volumeMounts).

/// The name of a volume's source ("emptyDir", "hostPath", ...); None when it has none.
fn volume_types(v: &Volume) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter(|(k, v)| k != "name" && !v.is_null())
            .map(|(k, _)| k)
            .collect(),
        _ => Vec::new(),
    }
}

fn has_backsteps(p: &str) -> bool {
    p.split('/').any(|s| s == "..")
}

const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

const VOLUME_FIELD_PATHS: [&str; 5] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// Upstream's `validateLocalNonReservedPath` for a downward API item path.
fn validate_item_path(field: &str, p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err(format!("{field}: Required value"));
    }
    if p.starts_with('/') {
        return Err(format!(
            "{field}: Invalid value: {p:?}: must be a relative path"
        ));
    }
    if has_backsteps(p) {
        return Err(format!(
            "{field}: Invalid value: {p:?}: must not contain '..'"
        ));
    }
    if p.starts_with("..") {
        return Err(format!(
            "{field}: Invalid value: {p:?}: must not start with '..'"
        ));
    }
    Ok(())
}

fn validate_items(
    field: &str,
    items: &[DownwardAPIVolumeFile],
    containers: &HashSet<&str>,
) -> Result<(), String> {
    let mut paths = HashSet::new();
    for (j, it) in items.iter().enumerate() {
        let f = format!("{field}.items[{j}]");
        validate_item_path(&format!("{f}.path"), &it.path)?;
        if !paths.insert(it.path.as_str()) {
            return Err(format!("{f}.path: Duplicate value: {:?}", it.path));
        }
        if let Some(m) = it.mode
            && !(0..=0o777).contains(&m)
        {
            return Err(format!(
                "{f}.mode: Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"
            ));
        }
        match (&it.field_ref, &it.resource_field_ref) {
            (Some(fr), None) => {
                let p = fr.field_path.as_str();
                let base = p.split_once('[').map(|(b, _)| b).unwrap_or(p);
                let subscript_ok = p.contains('[')
                    && (base == "metadata.labels" || base == "metadata.annotations");
                if !subscript_ok && !VOLUME_FIELD_PATHS.contains(&p) {
                    return Err(format!(
                        "{f}.fieldRef.fieldPath: Unsupported value: {p:?}: supported values: \"metadata.annotations\", \"metadata.labels\", \"metadata.name\", \"metadata.namespace\", \"metadata.uid\""
                    ));
                }
            }
            (None, Some(rf)) => {
                let cn = rf.container_name.as_deref().unwrap_or("");
                if cn.is_empty() {
                    return Err(format!(
                        "{f}.resourceFieldRef.containerName: Required value"
                    ));
                }
                if !containers.contains(cn) {
                    return Err(format!(
                        "{f}.resourceFieldRef.containerName: Invalid value: {cn:?}: must be the name of a container in the pod"
                    ));
                }
                if let Some(d) = &rf.divisor {
                    quantity::parse(&d.0)
                        .map_err(|e| format!("{f}.resourceFieldRef.divisor: {e}"))?;
                }
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{f}: Invalid value: \"\": fieldRef and resourceFieldRef can not be specified simultaneously"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "{f}: Required value: one of fieldRef and resourceFieldRef is required"
                ));
            }
        }
    }
    Ok(())
}

fn validate_mounts(
    field: &str,
    c: &Container,
    volumes: &HashMap<&str, &Volume>,
) -> Result<(), String> {
    let privileged = c
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    let mut paths = HashSet::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let f = format!("{field}.volumeMounts[{j}]");
        if m.name.is_empty() {
            return Err(format!("{f}.name: Required value"));
        }
        if !volumes.contains_key(m.name.as_str()) {
            return Err(format!("{f}.name: Not found: {:?}", m.name));
        }
        if m.mount_path.is_empty() {
            return Err(format!("{f}.mountPath: Required value"));
        }
        if !paths.insert(m.mount_path.as_str()) {
            return Err(format!(
                "{f}.mountPath: Invalid value: {:?}: must be unique",
                m.mount_path
            ));
        }
        let sub = m.sub_path.as_deref().unwrap_or("");
        let expr = m.sub_path_expr.as_deref().unwrap_or("");
        if !sub.is_empty() && !expr.is_empty() {
            return Err(format!(
                "{f}.subPathExpr: Invalid value: {expr:?}: subPathExpr and subPath are mutually exclusive"
            ));
        }
        for (name, p) in [("subPath", sub), ("subPathExpr", expr)] {
            if p.starts_with('/') {
                return Err(format!(
                    "{f}.{name}: Invalid value: {p:?}: must be a relative path"
                ));
            }
            if has_backsteps(p) {
                return Err(format!(
                    "{f}.{name}: Invalid value: {p:?}: must not contain '..'"
                ));
            }
        }
        match m.mount_propagation.as_deref() {
            None | Some("None" | "HostToContainer") => {}
            Some("Bidirectional") if privileged => {}
            Some("Bidirectional") => {
                return Err(format!(
                    "{f}.mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "{f}.mountPropagation: Unsupported value: {other:?}: supported values: \"Bidirectional\", \"HostToContainer\", \"None\""
                ));
            }
        }
        match m.recursive_read_only.as_deref() {
            None | Some("Disabled") => {}
            Some("IfPossible" | "Enabled") => {
                if !m.read_only.unwrap_or(false) {
                    return Err(format!(
                        "{f}.recursiveReadOnly: Forbidden: may only be specified when readOnly is true"
                    ));
                }
                if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
                    return Err(format!(
                        "{f}.recursiveReadOnly: Forbidden: may only be specified when mountPropagation is None or not specified"
                    ));
                }
            }
            Some(other) => {
                return Err(format!(
                    "{f}.recursiveReadOnly: Unsupported value: {other:?}: supported values: \"Disabled\", \"Enabled\", \"IfPossible\""
                ));
            }
        }
    }
    Ok(())
}

/// The volume and volumeMount checks of upstream's pod validation.
pub fn validate(s: &PodSpec) -> Result<(), String> {
    let containers: HashSet<&str> = s
        .init_containers
        .iter()
        .flatten()
        .chain(s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let mut by_name: HashMap<&str, &Volume> = HashMap::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        let f = format!("spec.volumes[{i}]");
        if !crate::validate::is_dns_label(&v.name) {
            return Err(format!("{f}.name: Invalid value: {:?}", v.name));
        }
        if by_name.insert(v.name.as_str(), v).is_some() {
            return Err(format!("{f}.name: Duplicate value: {:?}", v.name));
        }
        let types = volume_types(v);
        if types.is_empty() {
            return Err(format!("{f}: Required value: must specify a volume type"));
        }
        if types.len() > 1 {
            return Err(format!(
                "{f}: Forbidden: may not specify more than 1 volume type"
            ));
        }
        if let Some(hp) = &v.host_path {
            if hp.path.is_empty() {
                return Err(format!("{f}.hostPath.path: Required value"));
            }
            if has_backsteps(&hp.path) {
                return Err(format!(
                    "{f}.hostPath.path: Invalid value: {:?}: must not contain '..'",
                    hp.path
                ));
            }
            let t = hp.type_.as_deref().unwrap_or("");
            if !HOST_PATH_TYPES.contains(&t) {
                return Err(format!(
                    "{f}.hostPath.type: Unsupported value: {t:?}: supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\""
                ));
            }
        }
        if let Some(ed) = &v.empty_dir
            && let Some(q) = &ed.size_limit
        {
            quantity::parse(&q.0).map_err(|e| format!("{f}.emptyDir.sizeLimit: {e}"))?;
        }
        let mode_ok = |m: Option<i32>, field: &str| -> Result<(), String> {
            match m {
                Some(m) if !(0..=0o777).contains(&m) => Err(format!(
                    "{field}: Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"
                )),
                _ => Ok(()),
            }
        };
        if let Some(d) = &v.downward_api {
            mode_ok(d.default_mode, &format!("{f}.downwardAPI.defaultMode"))?;
            validate_items(
                &format!("{f}.downwardAPI"),
                d.items.as_deref().unwrap_or_default(),
                &containers,
            )?;
        }
        if let Some(p) = &v.projected {
            mode_ok(p.default_mode, &format!("{f}.projected.defaultMode"))?;
            for (j, src) in p.sources.iter().flatten().enumerate() {
                if let Some(d) = &src.downward_api {
                    validate_items(
                        &format!("{f}.projected.sources[{j}].downwardAPI"),
                        d.items.as_deref().unwrap_or_default(),
                        &containers,
                    )?;
                }
            }
        }
    }
    let all = s
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(s.containers.iter().map(|c| ("containers", c)));
    let mut idx: HashMap<&str, usize> = HashMap::new();
    for (field, c) in all {
        let n = idx.entry(field).or_default();
        validate_mounts(&format!("spec.{field}[{n}]"), c, &by_name)?;
        *n += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Setup.

/// Volume types that need API objects (configMap, secret...) or a driver the standalone
/// kubelet does not have.
fn unsupported(kind: &str) -> String {
    match kind {
        "configMap" | "secret" | "persistentVolumeClaim" | "ephemeral" | "csi" => format!(
            "volume type \"{kind}\" is not supported without an apiserver (this kubelet runs static pods only)"
        ),
        _ => format!("volume type \"{kind}\" is not supported by this kubelet yet"),
    }
}

/// The emptyDir permissions (upstream's `defaultPerm`).
const EMPTY_DIR_PERM: u32 = 0o777;

fn setup_dir(dir: &Path, perm: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    if meta.mode() & 0o7777 != perm {
        fs::set_permissions(dir, fs::Permissions::from_mode(perm))?;
    }
    Ok(())
}

/// The memory a pod's containers may use in total, when every container has a limit (upstream's
/// pod cgroup limit: the sum over app containers, at least the largest init container's).
fn pod_memory_limit(s: &PodSpec) -> Option<i64> {
    let lim = |c: &Container| res_of(c, "limits", "memory").and_then(|q| quantity::bytes(q).ok());
    let mut sum = 0i64;
    for c in &s.containers {
        sum += lim(c)?;
    }
    for c in s.init_containers.iter().flatten() {
        sum = sum.max(lim(c)?);
    }
    Some(sum)
}

/// Upstream's `calculateEmptyDirMemorySize`: node allocatable memory, or the pod's memory limit
/// when smaller, or the volume's sizeLimit when smaller still.
fn tmpfs_size(pod: &Pod, size_limit: Option<&str>) -> i64 {
    let mut size = allocatable().memory;
    if let Some(l) = pod_memory_limit(spec(pod))
        && l > 0
        && l <= size
    {
        size = l;
    }
    if let Some(l) = size_limit.and_then(|q| quantity::bytes(q).ok())
        && l > 0
        && l <= size
    {
        size = l;
    }
    size
}

fn set_ready(root: &Path, uid: &str, name: &str) -> io::Result<()> {
    let dir = pod_dir(root, uid)
        .join("plugins")
        .join(EMPTY_DIR)
        .join(name);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("ready"), "")
}

/// A directory backed by a tmpfs of `size` bytes (mounted once; idempotent).
fn setup_tmpfs(dir: &Path, size: i64) -> io::Result<()> {
    setup_dir(dir, EMPTY_DIR_PERM)?;
    let canon = fs::canonicalize(dir)?;
    if mount_at(&mount_table()?, &canon).is_some_and(|m| m.fs_type == "tmpfs") {
        return Ok(());
    }
    let opts = if size > 0 {
        format!("size={size}")
    } else {
        String::new()
    };
    tracing::info!(dir = %canon.display(), size, "mounting tmpfs");
    nix::mount::mount(
        Some("tmpfs"),
        &canon,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(opts.as_str()).filter(|o| !o.is_empty()),
    )
    .map_err(io::Error::from)
}

/// An OS error as Go prints it ("no such file or directory"), for upstream-like messages.
fn go_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let d = nix::errno::Errno::from_raw(code).desc();
            let mut c = d.chars();
            match c.next() {
                Some(f) => f.to_lowercase().chain(c).collect(),
                None => e.to_string(),
            }
        }
        None => e.to_string(),
    }
}

fn check_host_path(path: &str, t: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = Path::new(path);
    let exists = fs::metadata(p).is_ok();
    let (want, what) = match t {
        "" => return Ok(()),
        "DirectoryOrCreate" => {
            if !exists {
                return fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(p)
                    .map_err(|e| format!("mkdir {path}: {}", go_error(&e)));
            }
            ("Directory", "directory")
        }
        "Directory" => ("Directory", "directory"),
        "FileOrCreate" => {
            if !exists {
                return fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o644)
                    .open(p)
                    .map(drop)
                    .map_err(|e| format!("open {path}: {}", go_error(&e)));
            }
            ("File", "file")
        }
        "File" => ("File", "file"),
        "Socket" => ("Socket", "socket file"),
        "CharDevice" => ("CharDevice", "character device"),
        "BlockDevice" => ("BlockDevice", "block device"),
        other => return Err(format!("{other} is an invalid volume type")),
    };
    let meta = fs::metadata(p).map_err(|_| format!("hostPath {path} doesn't exist"))?;
    let ft = meta.file_type();
    let actual = if ft.is_dir() {
        "Directory"
    } else if ft.is_file() {
        "File"
    } else if ft.is_socket() {
        "Socket"
    } else if ft.is_char_device() {
        "CharDevice"
    } else if ft.is_block_device() {
        "BlockDevice"
    } else {
        return Err(format!(
            "hostPath type check failed, {path} is not a {what}, unable to determine its type: only recognise file, directory, socket, block device and character device"
        ));
    };
    if actual != want {
        return Err(format!(
            "hostPath type check failed: {path} is not a {what}, it's a {actual}"
        ));
    }
    Ok(())
}

/// Go's `strconv.Quote` (what upstream's `FormatMap` uses for label and annotation values).
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Upstream's `FormatMap`: `key="value"` lines, sorted by key, no trailing newline.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Upstream's `ExtractFieldPathAsString` (what a downward API volume item can read).
fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let (ns, name, uid) = meta(pod);
    if let Some((base, rest)) = path.split_once("['")
        && let Some(key) = rest.strip_suffix("']")
    {
        return match base {
            "metadata.labels" => Ok(pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default()),
            "metadata.annotations" => Ok(pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default()),
            _ => Err(format!("fieldPath {base:?} does not support subscript")),
        };
    }
    match path {
        "metadata.annotations" => Ok(format_map(pod.metadata.annotations.as_ref())),
        "metadata.labels" => Ok(format_map(pod.metadata.labels.as_ref())),
        "metadata.name" => Ok(name.into()),
        "metadata.namespace" => Ok(ns.into()),
        "metadata.uid" => Ok(uid.into()),
        other => Err(format!("unsupported fieldPath: {other}")),
    }
}

type Payload = BTreeMap<String, (Vec<u8>, u32)>;

fn collect_items(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), String> {
    let s = spec(pod);
    let mut errs = Vec::new();
    for it in items {
        let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
        let value = if let Some(fr) = &it.field_ref {
            field_value(pod, &fr.field_path)
        } else if let Some(rf) = &it.resource_field_ref {
            let cn = rf.container_name.as_deref().unwrap_or("");
            match s
                .containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .find(|c| c.name == cn)
            {
                Some(c) => {
                    resource_value(c, &rf.resource, rf.divisor.as_ref().map(|d| d.0.as_str()))
                }
                None => Err(format!("container {cn:?} not found in the pod")),
            }
        } else {
            Err(format!(
                "item {:?}: no fieldRef or resourceFieldRef",
                it.path
            ))
        };
        match value {
            Ok(v) => {
                out.insert(it.path.clone(), (v.into_bytes(), mode));
            }
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join(", "))
    }
}

/// Upstream's AtomicWriter path rules.
fn valid_payload_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !has_backsteps(p)
        && !p.starts_with("..")
        && p.len() <= 4096
        && p.split('/').all(|s| s.len() <= 255)
}

fn files_of(dir: &Path) -> io::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.insert(rel.to_string_lossy().into_owned(), p.clone());
            }
        }
    }
    Ok(out)
}

fn same_payload(ts_dir: &Path, payload: &Payload) -> bool {
    let Ok(files) = files_of(ts_dir) else {
        return false;
    };
    files.len() == payload.len()
        && payload.iter().all(|(k, (data, mode))| {
            files.get(k).is_some_and(|p| {
                fs::read(p).is_ok_and(|d| d == *data)
                    && fs::metadata(p).is_ok_and(|m| m.mode() & 0o7777 == *mode)
            })
        })
}

/// Upstream's AtomicWriter: the payload goes into a new `..<timestamp>.<n>` directory, the
/// `..data` symlink is switched to it with a rename, the visible names are symlinks into
/// `..data`, and the old directory goes. Readers see the old or the new set, never a mix.
pub fn atomic_write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for p in payload.keys() {
        if !valid_payload_path(p) {
            return Err(io::Error::other(format!("invalid path {p:?}")));
        }
    }
    let data = dir.join("..data");
    let old = fs::read_link(&data).ok();
    if let Some(old) = &old
        && same_payload(&dir.join(old), payload)
    {
        return Ok(false);
    }
    let stamp = crate::now_ts().strftime("..%Y_%m_%d_%H_%M_%S.").to_string();
    let mut n = (crate::now_ns() as u64 % 1_000_000_000) as u32;
    let ts_name = loop {
        let name = format!("{stamp}{n}");
        match fs::create_dir(dir.join(&name)) {
            Ok(()) => break name,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n = n.wrapping_add(1),
            Err(e) => return Err(e),
        }
    };
    let ts = dir.join(&ts_name);
    fs::set_permissions(&ts, fs::Permissions::from_mode(0o755))?;
    for (p, (content, mode)) in payload {
        let f = ts.join(p);
        if let Some(parent) = f.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        fs::write(&f, content)?;
        fs::set_permissions(&f, fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts_name, &tmp)?;
    fs::rename(&tmp, &data)?;
    let visible: BTreeSet<&str> = payload.keys().filter_map(|p| p.split('/').next()).collect();
    for v in &visible {
        let p = dir.join(v);
        if fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(v), &p)?;
        }
    }
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..")
            && !visible.contains(name.as_str())
            && e.file_type().is_ok_and(|t| t.is_symlink())
        {
            fs::remove_file(e.path())?;
        }
    }
    if let Some(old) = old
        && old.to_string_lossy().starts_with("..")
        && old != Path::new(&ts_name)
    {
        fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

/// The pod's `securityContext.fsGroup`.
fn fs_group(pod: &Pod) -> Option<u32> {
    let g = spec(pod).security_context.as_ref()?.fs_group?;
    u32::try_from(g).ok()
}

/// Upstream's `SetVolumeOwnership` for the volumes the kubelet manages: every entry below `dir`
/// (not following symlinks) gets the group `gid`; files get `rw` (read-only volumes: `r`) for
/// owner and group added to their mode, directories also `x` and the setgid bit, so what the
/// containers create there inherits the group. Symlinks only change group.
fn set_volume_ownership(dir: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    let mask = if read_only { 0o440 } else { 0o660 };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p)?;
        std::os::unix::fs::lchown(&p, None, Some(gid))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            continue;
        }
        let mut mode = meta.mode() & 0o7777 | mask;
        if ft.is_dir() {
            mode |= 0o2110;
            for e in fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        if mode != meta.mode() & 0o7777 {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Whether an emptyDir set up earlier is still in place (upstream's ready check): its ready
/// file exists and its directory does, mounted when the medium is memory.
fn empty_dir_ready(root: &Path, uid: &str, name: &str, dir: &Path, memory: bool) -> bool {
    let ready = pod_dir(root, uid)
        .join("plugins")
        .join(EMPTY_DIR)
        .join(name)
        .join("ready");
    if !ready.exists() || !dir.is_dir() {
        return false;
    }
    !memory
        || fs::canonicalize(dir).is_ok_and(|canon| {
            mount_table().is_ok_and(|t| mount_at(&t, &canon).is_some_and(|m| m.fs_type == "tmpfs"))
        })
}

fn setup_volume(cfg: &Config, pod: &Pod, v: &Volume) -> Result<(), String> {
    let root = &cfg.root_dir;
    let (_, _, uid) = meta(pod);
    let io_err = |e: io::Error| e.to_string();
    if let Some(ed) = &v.empty_dir {
        let dir = volume_dir(root, uid, EMPTY_DIR, &v.name);
        let medium = ed.medium.as_deref().unwrap_or("");
        if matches!(medium, "" | "Memory")
            && empty_dir_ready(root, uid, &v.name, &dir, medium == "Memory")
        {
            return Ok(());
        }
        match medium {
            "" => setup_dir(&dir, EMPTY_DIR_PERM).map_err(io_err)?,
            "Memory" => {
                let size = tmpfs_size(pod, ed.size_limit.as_ref().map(|q| q.0.as_str()));
                setup_tmpfs(&dir, size).map_err(io_err)?
            }
            m if m.starts_with("HugePages") => {
                return Err(format!(
                    "emptyDir medium {m:?} (hugetlbfs) is not supported by this kubelet yet"
                ));
            }
            m => return Err(format!("unknown storage medium {m:?}")),
        }
        if let Some(gid) = fs_group(pod) {
            set_volume_ownership(&dir, gid, false)
                .map_err(|e| format!("setting the volume's group to fsGroup {gid}: {e}"))?;
        }
        return set_ready(root, uid, &v.name).map_err(io_err);
    }
    if let Some(hp) = &v.host_path {
        if has_backsteps(&hp.path) {
            return Err(format!(
                "invalid HostPath `{}`: must not contain '..'",
                hp.path
            ));
        }
        return check_host_path(&hp.path, hp.type_.as_deref().unwrap_or(""));
    }
    let (plugin, default_mode, items): (&str, Option<i32>, Vec<DownwardAPIVolumeFile>) =
        if let Some(d) = &v.downward_api {
            (
                DOWNWARD_API,
                d.default_mode,
                d.items.clone().unwrap_or_default(),
            )
        } else if let Some(p) = &v.projected {
            let mut items = Vec::new();
            for src in p.sources.iter().flatten() {
                let other = serde_json::to_value(src)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .into_iter()
                    .flatten()
                    .find(|(k, v)| k != "downwardAPI" && !v.is_null())
                    .map(|(k, _)| k);
                if let Some(kind) = other {
                    return Err(format!(
                        "projected source \"{kind}\" is not supported without an apiserver (this kubelet runs static pods only)"
                    ));
                }
                if let Some(d) = &src.downward_api {
                    items.extend(d.items.clone().unwrap_or_default());
                }
            }
            (PROJECTED, p.default_mode, items)
        } else {
            let kind = volume_types(v).into_iter().next().unwrap_or_default();
            return Err(unsupported(&kind));
        };
    let mut payload = Payload::new();
    collect_items(
        pod,
        &items,
        default_mode.map(|m| m as u32).unwrap_or(0o644),
        &mut payload,
    )?;
    // Like upstream, the files live on a memory-backed emptyDir ("wrapped_<name>").
    let dir = volume_dir(root, uid, plugin, &v.name);
    setup_tmpfs(&dir, tmpfs_size(pod, None)).map_err(io_err)?;
    set_ready(root, uid, &format!("wrapped_{}", v.name)).map_err(io_err)?;
    let written = atomic_write(&dir, &payload)
        .map_err(|e| format!("writing the files of the volume: {e}"))?;
    if written && let Some(gid) = fs_group(pod) {
        set_volume_ownership(&dir, gid, true)
            .map_err(|e| format!("setting the volume's group to fsGroup {gid}: {e}"))?;
    }
    Ok(())
}

/// Creates the pod's directories and sets up every volume of its spec (idempotent; run on
/// every sync). Err is what upstream's FailedMount events say, one per failed volume.
pub fn setup(cfg: &Config, pod: &Pod) -> Result<(), String> {
    let (_, _, uid) = meta(pod);
    let pd = pod_dir(&cfg.root_dir, uid);
    for d in [pd.clone(), pd.join("volumes"), pd.join("plugins")] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&d)
            .map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let mut errs = Vec::new();
    for v in spec(pod).volumes.iter().flatten() {
        if let Err(e) = setup_volume(cfg, pod, v) {
            errs.push(format!("{FAILED_MOUNT} {:?} : {e}", v.name));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Container mounts.

/// Where a volume is on the node and whether it is always mounted read-only.
fn volume_path(root: &Path, uid: &str, v: &Volume) -> Option<(PathBuf, bool)> {
    if v.empty_dir.is_some() {
        Some((volume_dir(root, uid, EMPTY_DIR, &v.name), false))
    } else if let Some(hp) = &v.host_path {
        Some((PathBuf::from(&hp.path), false))
    } else if v.downward_api.is_some() {
        Some((volume_dir(root, uid, DOWNWARD_API, &v.name), true))
    } else if v.projected.is_some() {
        Some((volume_dir(root, uid, PROJECTED, &v.name), true))
    } else {
        None
    }
}

fn errno_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

/// Upstream's `SafeMakeDir`: creates `sub` below `base` one component at a time, never
/// following a symlink.
fn safe_make_dir(sub: &str, base: &Path, perm: u32) -> io::Result<()> {
    let base = fs::canonicalize(base)?;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd: OwnedFd = openat(AT_FDCWD, &base, flags, Mode::empty()).map_err(errno_io)?;
    for comp in Path::new(sub).components() {
        let name = match comp {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            _ => {
                return Err(io::Error::other(format!(
                    "invalid path component in {sub:?}"
                )));
            }
        };
        match openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => fd = next,
            Err(nix::errno::Errno::ENOENT) => {
                mkdirat(&fd, name, Mode::from_bits_truncate(perm)).map_err(errno_io)?;
                let next = openat(&fd, name, flags, Mode::empty()).map_err(errno_io)?;
                let path = format!("/proc/self/fd/{}", next.as_raw_fd());
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))?;
                fd = next;
            }
            Err(e) => {
                return Err(io::Error::other(format!(
                    "{}: {e} (a symlink or not a directory)",
                    name.to_string_lossy()
                )));
            }
        }
    }
    Ok(())
}

/// Upstream's `PrepareSafeSubpath`: resolves `path` (below `volume`), refuses anything outside
/// the volume, opens it component by component without following symlinks, and bind-mounts the
/// opened file to `<pod>/volume-subpaths/<volume>/<container>/<index>`, which the runtime gets
/// instead of `path` (so a symlink swapped in later cannot redirect the mount).
fn prepare_subpath(target: &Path, path: &Path, volume: &Path) -> io::Result<PathBuf> {
    let vol = fs::canonicalize(volume)?;
    let p = fs::canonicalize(path)?;
    let rel = p.strip_prefix(&vol).map_err(|_| {
        io::Error::other(format!(
            "path {} is outside of the volume {}",
            p.display(),
            vol.display()
        ))
    })?;
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd: OwnedFd = openat(AT_FDCWD, &vol, flags, Mode::empty()).map_err(errno_io)?;
    for comp in rel.components() {
        let Component::Normal(name) = comp else {
            return Err(io::Error::other("unexpected path component"));
        };
        fd = openat(&fd, name, flags, Mode::empty()).map_err(errno_io)?;
        let st = fstat(&fd).map_err(errno_io)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            return Err(io::Error::other(format!(
                "{} is a symlink",
                name.to_string_lossy()
            )));
        }
    }
    let st = fstat(&fd).map_err(errno_io)?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if let Some(parent) = target.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)?;
    }
    if let Ok(canon) = fs::canonicalize(target)
        && mount_at(&mount_table()?, &canon).is_some()
    {
        let m = fs::metadata(&canon)?;
        if m.dev() == st.st_dev as u64 && m.ino() == st.st_ino as u64 {
            return Ok(target.to_path_buf());
        }
        nix::mount::umount2(&canon, MntFlags::MNT_DETACH).map_err(errno_io)?;
    }
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() == is_dir && !m.file_type().is_symlink() => {}
        Ok(m) => {
            if m.is_dir() {
                fs::remove_dir(target)?;
            } else {
                fs::remove_file(target)?;
            }
        }
        Err(_) => {}
    }
    if fs::symlink_metadata(target).is_err() {
        if is_dir {
            fs::DirBuilder::new().mode(0o750).create(target)?;
        } else {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(target)?;
        }
    }
    let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::mount(
        Some(src.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(errno_io)?;
    Ok(target.to_path_buf())
}

fn propagation(m: &VolumeMount) -> Result<pb::MountPropagation, ConfigError> {
    match m.mount_propagation.as_deref() {
        None | Some("None") => Ok(pb::MountPropagation::PropagationPrivate),
        Some("HostToContainer") => Ok(pb::MountPropagation::PropagationHostToContainer),
        Some("Bidirectional") => Ok(pb::MountPropagation::PropagationBidirectional),
        Some(other) => Err(ConfigError(format!(
            "invalid MountPropagation mode: {other:?}"
        ))),
    }
}

/// Upstream's `ExpandContainerVolumeMounts`: `$(VAR)` from the container's environment; a
/// missing or empty variable is an error.
fn expand_sub_path(expr: &str, envs: &[pb::KeyValue]) -> Result<String, ConfigError> {
    let missing = RefCell::new(BTreeSet::new());
    let lookup = |n: &str| {
        let v = envs
            .iter()
            .rev()
            .find(|kv| kv.key == n)
            .map(|kv| kv.value.clone())
            .unwrap_or_default();
        if v.is_empty() {
            missing.borrow_mut().insert(n.to_string());
        }
        Some(v)
    };
    let out = expand(expr, &lookup);
    let missing = missing.into_inner();
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError(format!(
            "missing value for {}",
            missing.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// Upstream's `makeMounts`: the CRI mounts of container `c` (its volumeMounts, then the managed
/// /etc/hosts when the pod has an IP and the container does not mount /etc/hosts itself).
/// Errors are the container's CreateContainerConfigError message.
pub fn container_mounts(
    cfg: &Config,
    pod: &Pod,
    c: &Container,
    pod_ips: &[String],
    envs: &[pb::KeyValue],
) -> Result<Vec<pb::Mount>, ConfigError> {
    let (_, _, uid) = meta(pod);
    let root = &cfg.root_dir;
    let volumes: HashMap<&str, &Volume> = spec(pod)
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mut mount_hosts = !pod_ips.is_empty();
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        mount_hosts = mount_hosts && m.mount_path != "/etc/hosts";
        let not_found = || {
            ConfigError(format!(
                "cannot find volume {:?} to mount into container {:?}",
                m.name, c.name
            ))
        };
        let v = volumes.get(m.name.as_str()).ok_or_else(not_found)?;
        let (mut host, must_ro) = volume_path(root, uid, v).ok_or_else(not_found)?;
        let sub = match m.sub_path_expr.as_deref().filter(|e| !e.is_empty()) {
            Some(expr) => expand_sub_path(expr, envs)?,
            None => m.sub_path.clone().unwrap_or_default(),
        };
        if !sub.is_empty() {
            if sub.starts_with('/') {
                return Err(ConfigError(format!(
                    "error SubPath `{sub}` must not be an absolute path"
                )));
            }
            if has_backsteps(&sub) {
                return Err(ConfigError(format!(
                    "unable to provision SubPath `{sub}`: must not contain '..'"
                )));
            }
            let volume = host.clone();
            let path = volume.join(&sub);
            if fs::metadata(&path).is_err() {
                let perm = fs::metadata(&volume)
                    .map(|m| m.mode() & 0o7777)
                    .unwrap_or(0o755);
                if let Err(e) = safe_make_dir(&sub, &volume, perm) {
                    tracing::warn!(container = %c.name, volume_mount = %m.name, error = %e, "failed to create subPath directory");
                    return Err(ConfigError(format!(
                        "failed to create subPath directory for volumeMount {:?} of container {:?}",
                        m.name, c.name
                    )));
                }
            }
            let target = pod_dir(root, uid)
                .join("volume-subpaths")
                .join(&v.name)
                .join(&c.name)
                .join(i.to_string());
            host = prepare_subpath(&target, &path, &volume).map_err(|e| {
                tracing::warn!(container = %c.name, volume_mount = %m.name, error = %e, "failed to prepare subPath");
                ConfigError(format!(
                    "failed to prepare subPath for volumeMount {:?} of container {:?}",
                    m.name, c.name
                ))
            })?;
        }
        if m.recursive_read_only.as_deref() == Some("Enabled") {
            return Err(ConfigError(format!(
                "failed to resolve recursive read-only mode: volume {:?} requested recursive read-only mode, but it is not supported by the runtime",
                m.name
            )));
        }
        out.push(pb::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.display().to_string(),
            readonly: m.read_only.unwrap_or(false) || must_ro,
            propagation: propagation(m)? as i32,
            ..Default::default()
        });
    }
    if mount_hosts {
        let file = hosts_file(root, uid);
        crate::hosts::ensure(cfg, pod, pod_ips, &file)
            .map_err(|e| ConfigError(format!("writing {}: {e}", file.display())))?;
        out.push(pb::Mount {
            container_path: "/etc/hosts".into(),
            host_path: file.display().to_string(),
            readonly: false,
            ..Default::default()
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Teardown.

/// A terminated pod's volumes (upstream unmounts them once nothing runs): every mount below
/// the pod's directory goes, then `volumes/`, `volume-subpaths/` and the ready markers.
pub fn teardown_volumes(root: &Path, uid: &str) -> Result<(), String> {
    let pd = pod_dir(root, uid);
    unmount_below(&pd)?;
    for d in ["volumes", "volume-subpaths", "plugins"] {
        let p = pd.join(d);
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", p.display())),
        }
    }
    Ok(())
}

/// Removes a pod's directory: every mount below it is undone first, and nothing is removed
/// while a mount is left (a removal must never reach into a mounted file system).
pub fn cleanup_pod(root: &Path, uid: &str) -> Result<(), String> {
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(format!("refusing to clean up pod directory {uid:?}"));
    }
    let pd = pod_dir(root, uid);
    match fs::symlink_metadata(&pd) {
        Err(_) => return Ok(()),
        Ok(m) if !m.is_dir() => {
            // Not something the kubelet made (a symlink, a file): never followed.
            return fs::remove_file(&pd).map_err(|e| format!("removing {}: {e}", pd.display()));
        }
        Ok(_) => {}
    }
    unmount_below(&pd)?;
    fs::remove_dir_all(&pd).map_err(|e| format!("removing {}: {e}", pd.display()))?;
    tracing::info!(dir = %pd.display(), "pod directory removed");
    Ok(())
}

/// Upstream's `cleanupOrphanedPodDirs`: directories of pods that no source wants (`known`:
/// the pod manager's pods and workers) and the runtime does not run are unmounted and removed.
pub async fn housekeeping(sh: &Arc<Shared>, known: HashSet<String>) {
    let root = sh.cfg.root_dir.clone();
    let candidates: Vec<String> = match fs::read_dir(pods_dir(&root)) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|u| !known.contains(u))
            .collect(),
        Err(_) => return,
    };
    if candidates.is_empty() {
        return;
    }
    let running = match sh.cri.clone().relist().await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e.message(), "housekeeping: relist failed");
            return;
        }
    };
    for uid in candidates {
        if running.contains_key(&uid) {
            continue;
        }
        let r = root.clone();
        let u = uid.clone();
        match tokio::task::spawn_blocking(move || cleanup_pod(&r, &u)).await {
            Ok(Ok(())) => tracing::info!(uid = %uid, "orphaned pod directory cleaned up"),
            Ok(Err(e)) => {
                tracing::warn!(uid = %uid, error = %e, "cleaning up an orphaned pod directory")
            }
            Err(e) => {
                tracing::warn!(uid = %uid, error = %e, "cleaning up an orphaned pod directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_subtracts_reservations_and_eviction() {
        let root = Path::new("/");
        let none = compute_allocatable(root, &BTreeMap::new(), &BTreeMap::new());
        let reserved: BTreeMap<String, i64> =
            [("cpu".to_string(), 300), ("memory".to_string(), 50 << 20)]
                .into_iter()
                .collect();
        let r = compute_allocatable(root, &BTreeMap::new(), &reserved);
        assert_eq!(r.cpu_milli, none.cpu_milli - 300);
        assert_eq!(r.memory, none.memory - (50 << 20));
        assert_eq!(r.ephemeral_storage, none.ephemeral_storage);
    }

    #[test]
    fn mountinfo_lines() {
        let t = parse_mountinfo(
            "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
             40 27 0:50 / /a\\040b rw - tmpfs tmpfs rw,size=8192k\n\
             garbage\n",
        );
        assert_eq!(t.len(), 2);
        assert!(t[0].shared);
        assert_eq!(t[1].point, Path::new("/a b"));
        assert_eq!(t[1].fs_type, "tmpfs");
        assert!(!t[1].shared);
    }

    #[test]
    fn quoting_and_maps() {
        assert_eq!(go_quote("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\x01é\"");
        let m = BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".into(), "x y".into()),
        ]);
        assert_eq!(format_map(Some(&m)), "a=\"x y\"\nb=\"2\"");
        assert_eq!(format_map(None), "");
    }

    fn container(y: &str) -> Container {
        serde_norway::from_str(y).expect("container")
    }

    #[test]
    fn resource_values_with_divisors() {
        let c = container(
            "name: c\nresources: {limits: {cpu: 250m, memory: 64Mi}, requests: {cpu: 100m}}\n",
        );
        assert_eq!(resource_value(&c, "limits.cpu", None).as_deref(), Ok("1"));
        assert_eq!(
            resource_value(&c, "limits.cpu", Some("1m")).as_deref(),
            Ok("250")
        );
        assert_eq!(
            resource_value(&c, "requests.cpu", Some("1m")).as_deref(),
            Ok("100")
        );
        assert_eq!(
            resource_value(&c, "limits.memory", Some("1Mi")).as_deref(),
            Ok("64")
        );
        assert_eq!(
            resource_value(&c, "requests.memory", Some("1Mi")).as_deref(),
            Ok("64")
        );
        assert!(resource_value(&c, "limits.gpu", None).is_err());
        // No limit: node allocatable.
        let bare = container("name: c\n");
        let cpus = resource_value(&bare, "limits.cpu", None).expect("cpu");
        assert_eq!(cpus, (allocatable().cpu_milli / 1000).to_string());
        assert_eq!(
            resource_value(&bare, "requests.cpu", None).as_deref(),
            Ok("0")
        );
    }

    #[test]
    fn host_path_types() {
        let d = tempfile::tempdir().expect("tmp");
        let dir = d.path().join("dir");
        let file = d.path().join("file");
        fs::create_dir(&dir).expect("dir");
        fs::write(&file, "x").expect("file");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("link");
        let s = |p: &Path| p.display().to_string();
        assert_eq!(check_host_path(&s(&dir), "Directory"), Ok(()));
        assert_eq!(check_host_path(&s(&link), "Directory"), Ok(()));
        assert_eq!(check_host_path(&s(&file), "File"), Ok(()));
        assert_eq!(check_host_path("/dev/null", "CharDevice"), Ok(()));
        assert_eq!(check_host_path(&s(&d.path().join("nope")), ""), Ok(()));
        assert_eq!(
            check_host_path(&s(&file), "Directory"),
            Err(format!(
                "hostPath type check failed: {} is not a directory, it's a File",
                s(&file)
            ))
        );
        assert_eq!(
            check_host_path(&s(&d.path().join("nope")), "File"),
            Err(format!(
                "hostPath {} doesn't exist",
                s(&d.path().join("nope"))
            ))
        );
        assert!(
            check_host_path("/dev/null", "BlockDevice")
                .is_err_and(|e| e.ends_with("is not a block device, it's a CharDevice"))
        );
        let created = d.path().join("new/sub");
        assert_eq!(check_host_path(&s(&created), "DirectoryOrCreate"), Ok(()));
        assert_eq!(fs::metadata(&created).expect("made").mode() & 0o777, 0o755);
        let newfile = d.path().join("new/f");
        assert_eq!(check_host_path(&s(&newfile), "FileOrCreate"), Ok(()));
        assert!(fs::metadata(&newfile).expect("made").is_file());
        // FileOrCreate does not create parents (upstream's O_CREATE open).
        assert_eq!(
            check_host_path(&s(&d.path().join("no/f")), "FileOrCreate"),
            Err(format!(
                "open {}: no such file or directory",
                s(&d.path().join("no/f"))
            ))
        );
    }

    #[test]
    fn atomic_writer_layout_and_updates() {
        let d = tempfile::tempdir().expect("tmp");
        let mut p = Payload::new();
        p.insert("name".into(), (b"pod-a".to_vec(), 0o644));
        p.insert("sub/labels".into(), (b"a=\"b\"".to_vec(), 0o600));
        atomic_write(d.path(), &p).expect("write");
        let data = fs::read_link(d.path().join("..data")).expect("..data");
        assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");
        assert_eq!(
            fs::read_link(d.path().join("name")).expect("link"),
            Path::new("..data/name")
        );
        assert_eq!(
            fs::read_to_string(d.path().join("sub/labels")).expect("r"),
            "a=\"b\""
        );
        let mode = fs::metadata(d.path().join("sub/labels")).expect("m").mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Unchanged payload: nothing rewritten.
        atomic_write(d.path(), &p).expect("again");
        assert_eq!(
            fs::read_link(d.path().join("..data")).expect("..data"),
            data
        );
        // Changed: a new directory, the old one and a dropped name gone.
        p.remove("sub/labels");
        p.insert("name".into(), (b"pod-b".to_vec(), 0o644));
        atomic_write(d.path(), &p).expect("update");
        let data2 = fs::read_link(d.path().join("..data")).expect("..data");
        assert_ne!(data2, data);
        assert!(!d.path().join(&data).exists());
        assert!(fs::symlink_metadata(d.path().join("sub")).is_err());
        assert_eq!(
            fs::read_to_string(d.path().join("name")).expect("r"),
            "pod-b"
        );
        let mut bad = Payload::new();
        bad.insert("../x".into(), (Vec::new(), 0o644));
        assert!(atomic_write(d.path(), &bad).is_err());
    }

    #[test]
    fn sub_path_expansion() {
        let envs = vec![
            pb::KeyValue {
                key: "POD".into(),
                value: "p1".into(),
            },
            pb::KeyValue {
                key: "EMPTY".into(),
                value: String::new(),
            },
        ];
        assert_eq!(
            expand_sub_path("logs/$(POD)", &envs).expect("ok"),
            "logs/p1"
        );
        let e = expand_sub_path("$(NOPE)/$(EMPTY)", &envs).expect_err("missing");
        assert_eq!(e.0, "missing value for EMPTY, NOPE");
    }

    #[test]
    fn safe_make_dir_refuses_symlinks() {
        let d = tempfile::tempdir().expect("tmp");
        let vol = d.path().join("vol");
        fs::create_dir(&vol).expect("vol");
        safe_make_dir("a/b", &vol, 0o777).expect("mkdir");
        assert_eq!(
            fs::metadata(vol.join("a/b")).expect("b").mode() & 0o777,
            0o777
        );
        std::os::unix::fs::symlink(d.path(), vol.join("out")).expect("link");
        assert!(safe_make_dir("out/x", &vol, 0o755).is_err());
        assert!(!d.path().join("x").exists());
    }

    #[test]
    fn cleanup_removes_the_pod_dir_and_never_follows_a_symlink() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        let vol = volume_dir(&root, "u1", EMPTY_DIR, "v");
        fs::create_dir_all(vol.join("deep")).expect("vol");
        fs::write(vol.join("deep/f"), "x").expect("f");
        cleanup_pod(&root, "u1").expect("cleanup");
        assert!(!pod_dir(&root, "u1").exists());
        assert!(pods_dir(&root).is_dir());
        let outside = d.path().join("outside");
        fs::create_dir(&outside).expect("outside");
        fs::write(outside.join("keep"), "k").expect("keep");
        std::os::unix::fs::symlink(&outside, pod_dir(&root, "u2")).expect("link");
        cleanup_pod(&root, "u2").expect("cleanup link");
        assert!(fs::symlink_metadata(pod_dir(&root, "u2")).is_err());
        assert!(outside.join("keep").is_file());
        assert!(cleanup_pod(&root, "../x").is_err());
    }

    fn pod(y: &str) -> Pod {
        crate::source::decode(y).expect("pod")
    }

    #[test]
    fn validation() {
        let base = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n";
        let ok = pod(&format!(
            "{base}  volumes:\n  - {{name: v, emptyDir: {{}}}}\n  - {{name: d, downwardAPI: {{items: [{{path: l, fieldRef: {{fieldPath: \"metadata.labels['x']\"}}}}]}}}}\n  containers: [{{name: c, image: i, volumeMounts: [{{name: v, mountPath: /v, subPathExpr: '$(X)'}}]}}]\n"
        ));
        assert_eq!(validate(spec(&ok)), Ok(()));
        for (bad, want) in [
            (
                "  volumes: [{name: v, emptyDir: {}}]\n  containers: [{name: c, image: i, volumeMounts: [{name: w, mountPath: /v}]}]\n",
                "spec.containers[0].volumeMounts[0].name: Not found: \"w\"",
            ),
            (
                "  volumes: [{name: v, emptyDir: {}}]\n  containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /v, mountPropagation: Bidirectional}]}]\n",
                "Bidirectional mount propagation is available only to privileged containers",
            ),
            (
                "  volumes: [{name: v, emptyDir: {}}]\n  containers: [{name: c, image: i, volumeMounts: [{name: v, mountPath: /v, subPath: ../x}]}]\n",
                "subPath: Invalid value: \"../x\": must not contain '..'",
            ),
            (
                "  volumes: [{name: v, hostPath: {path: /x, type: Dir}}]\n  containers: [{name: c, image: i}]\n",
                "spec.volumes[0].hostPath.type: Unsupported value: \"Dir\"",
            ),
            (
                "  volumes: [{name: v, downwardAPI: {items: [{path: n, fieldRef: {fieldPath: spec.nodeName}}]}}]\n  containers: [{name: c, image: i}]\n",
                "fieldRef.fieldPath: Unsupported value: \"spec.nodeName\"",
            ),
            (
                "  volumes: [{name: v}]\n  containers: [{name: c, image: i}]\n",
                "must specify a volume type",
            ),
        ] {
            let p = pod(&format!("{base}{bad}"));
            let e = validate(spec(&p)).expect_err(bad);
            assert!(e.contains(want), "{e} vs {want}");
        }
    }
}
