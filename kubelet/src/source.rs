//! The static pod source: one Pod per file (YAML or JSON) in `staticPodPath`, relisted every
//! `fileCheckFrequency`, with the defaults upstream's file source applies.
//!
//! Each scan yields the whole desired set; the pod manager diffs it against what runs. A file
//! that does not hold a valid Pod is logged with its name and skipped; it changes nothing for
//! the other files.

use k8s_openapi::api::core::v1::{Pod, PodStatus, Toleration};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";
/// Upstream caps a manifest file at this size (the same limit as the apiserver's request body).
const MAX_MANIFEST: u64 = 10 * 1024 * 1024;

/// A pod from a source with the file it came from.
#[derive(Clone, Debug)]
pub struct SourcedPod {
    pub pod: Pod,
    pub file: PathBuf,
}

/// What one scan of the manifest directory found.
#[derive(Default)]
pub struct Scan {
    /// By pod UID.
    pub pods: BTreeMap<String, SourcedPod>,
    /// File → reason, for files that were skipped.
    pub errors: BTreeMap<PathBuf, String>,
}

/// Reads every manifest in `dir`. Missing directory: no pods (upstream logs and keeps going).
pub fn scan(dir: &Path, node_name: &str) -> Scan {
    let mut out = Scan::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            out.errors.insert(dir.to_path_buf(), e.to_string());
            return out;
        }
    };
    files.sort();
    let mut names: HashMap<(String, String), PathBuf> = HashMap::new();
    for f in files {
        // Upstream ignores dot-files (editors' swap files and the like) and directories.
        if f.file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'))
            || !f.is_file()
        {
            continue;
        }
        match read_manifest(&f, node_name) {
            Ok(pod) => {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                if let Some(first) = names.get(&key) {
                    out.errors.insert(
                        f.clone(),
                        format!(
                            "pod {}/{} is already defined in {}",
                            key.0,
                            key.1,
                            first.display()
                        ),
                    );
                    continue;
                }
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(other) = out.pods.get(&uid) {
                    out.errors.insert(
                        f.clone(),
                        format!("uid {uid} is already used by {}", other.file.display()),
                    );
                    continue;
                }
                names.insert(key, f.clone());
                out.pods.insert(uid, SourcedPod { pod, file: f });
            }
            Err(e) => {
                out.errors.insert(f, e);
            }
        }
    }
    out
}

/// One manifest file → a defaulted, validated Pod.
pub fn read_manifest(file: &Path, node_name: &str) -> Result<Pod, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if meta.len() > MAX_MANIFEST {
        return Err(format!(
            "the file is {} bytes, more than the {MAX_MANIFEST} a manifest may have",
            meta.len()
        ));
    }
    let data = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let pod = decode(&data)?;
    let mut pod = pod;
    apply_defaults(&mut pod, file, node_name)?;
    crate::validate::pod(&pod)?;
    Ok(pod)
}

/// YAML (a superset of JSON) → Pod, checking kind and apiVersion.
pub fn decode(data: &str) -> Result<Pod, String> {
    let v: serde_json::Value = serde_norway::from_str(data).map_err(|e| e.to_string())?;
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api = v.get("apiVersion").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "Pod" || api != "v1" {
        return Err(format!(
            "expected kind \"Pod\" and apiVersion \"v1\", got kind {kind:?} apiVersion {api:?}"
        ));
    }
    crate::validate::known_fields(&v)?;
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Upstream's `applyDefaults` for file sources: UID from a hash of the pod, the node and the
/// file; name suffixed with the node name; namespace default; the config annotations; a
/// toleration of NoExecute taints; phase Pending.
pub fn apply_defaults(pod: &mut Pod, file: &Path, node_name: &str) -> Result<(), String> {
    if pod.metadata.uid.as_deref().is_none_or(str::is_empty) {
        let canonical = serde_json::to_vec(&pod).map_err(|e| e.to_string())?;
        let mut h = Sha256::new();
        h.update(&canonical);
        h.update(format!("host:{node_name}").as_bytes());
        h.update(format!("file:{}", file.display()).as_bytes());
        // Upstream's UID is an md5 (32 hex digits); keep that length.
        pod.metadata.uid = Some(hex::encode(&h.finalize()[..16]));
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        pod.metadata.namespace = Some("default".into());
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node_name.to_string());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert(CONFIG_HASH.into(), uid);
    ann.insert(CONFIG_SOURCE.into(), "file".into());
    let tol = spec.tolerations.get_or_insert_with(Vec::new);
    if !tol.iter().any(|t| {
        t.operator.as_deref() == Some("Exists") && t.effect.as_deref() == Some("NoExecute")
    }) {
        tol.push(Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        });
    }
    crate::defaults::pod_spec(spec);
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n";

    #[test]
    fn defaults_like_upstream() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, POD).expect("write");
        let p = read_manifest(&f, "node1").expect("pod");
        assert_eq!(p.metadata.name.as_deref(), Some("web-node1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let uid = p.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        let ann = p.metadata.annotations.clone().expect("ann");
        assert_eq!(ann.get(CONFIG_HASH), Some(&uid));
        assert_eq!(ann.get(CONFIG_SOURCE).map(String::as_str), Some("file"));
        let spec = p.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        // Same content, same node, same file: same UID; any change: another.
        assert_eq!(
            read_manifest(&f, "node1").expect("again").metadata.uid,
            Some(uid.clone())
        );
        std::fs::write(&f, POD.replace("busybox:1", "busybox:2")).expect("write");
        assert_ne!(
            read_manifest(&f, "node1").expect("b").metadata.uid,
            Some(uid)
        );
    }

    #[test]
    fn scan_skips_bad_files_and_duplicates() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.yaml"), POD).expect("w");
        std::fs::write(dir.path().join("b.yaml"), POD.replace("busybox:1", "x:1")).expect("w");
        std::fs::write(
            dir.path().join("c.yaml"),
            "kind: Pod\napiVersion: v1\nmetadata: [",
        )
        .expect("w");
        std::fs::write(dir.path().join(".swp"), "junk").expect("w");
        std::fs::write(
            dir.path().join("d.json"),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#,
        )
        .expect("w");
        let s = scan(dir.path(), "n");
        let mut names: Vec<_> = s
            .pods
            .values()
            .map(|p| p.pod.metadata.name.clone().unwrap_or_default())
            .collect();
        names.sort();
        assert_eq!(names, ["j-n", "web-n"]);
        assert_eq!(s.errors.len(), 2, "{:?}", s.errors);
        assert!(s.errors[&dir.path().join("b.yaml")].contains("already defined"));
    }
}
