//! The result cache, in libcni's on-disk format so that libcni-based tools (and a containerd
//! or CRI-O run on the same node) read the same files:
//! `<cacheDir>/results/<networkName>-<containerID>-<ifName>`, a JSON object
//! `{"kind": "cniCacheV1", "containerId", "config" (base64 of the conflist bytes), "ifName",
//! "networkName", "netns", "cniArgs", "capabilityArgs", "result"}`; the directory is 0700, the
//! file 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The `kind` of a cache entry libcni writes and reads.
pub const CACHE_KIND: &str = "cniCacheV1";

/// One cached attachment: what ADD was called with and what it returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAttachment {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The conflist bytes the ADD ran (base64 in the file, like Go's `[]byte`).
    #[serde(with = "base64_bytes", default)]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(
        rename = "cniArgs",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `<cache_dir>/results/<network>-<container_id>-<ifname>`.
pub fn cache_path(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    cache_dir
        .join("results")
        .join(format!("{network}-{container_id}-{ifname}"))
}

/// Writes an entry (to a temporary file renamed into place, so a reader never sees half of it).
/// Not fsynced, as libcni does not: the cache matters while the attachment lives, and a
/// power loss ends the attachments with the network namespaces.
pub fn write(path: &Path, entry: &CachedAttachment) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path has no parent"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = serde_json::to_vec(entry)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("cache path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Reads an entry: `Ok(None)` if there is none, `Err` if it is there but not a cniCacheV1 entry.
pub fn read(path: &Path) -> Result<Option<CachedAttachment>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let entry: CachedAttachment =
        serde_json::from_slice(&bytes).map_err(|e| format!("malformed: {e}"))?;
    if entry.kind != CACHE_KIND {
        return Err(format!("wrong kind {:?}", entry.kind));
    }
    Ok(Some(entry))
}

/// Removes an entry; a missing one is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every valid entry in `<cache_dir>/results`, sorted by file name, optionally only those of
/// `container_id` (libcni's `GetCachedAttachments`). Unreadable or foreign files are skipped.
pub fn list(cache_dir: &Path, container_id: Option<&str>) -> Vec<CachedAttachment> {
    let dir = cache_dir.join("results");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    names
        .iter()
        .filter_map(|p| read(p).ok().flatten())
        .filter(|e| !e.ifname.is_empty() && !e.network_name.is_empty())
        .filter(|e| container_id.is_none_or(|id| e.container_id == id))
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn round_trips_in_libcni_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = cache_path(dir.path(), "net", "abc", "eth0");
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([]));
        let entry = CachedAttachment {
            kind: CACHE_KIND.into(),
            container_id: "abc".into(),
            config: br#"{"name":"net"}"#.to_vec(),
            ifname: "eth0".into(),
            network_name: "net".into(),
            netns: "/run/netns/x".into(),
            cni_args: vec![["IgnoreUnknown".into(), "1".into()]],
            capability_args: caps,
            result: Some(serde_json::json!({"cniVersion": "1.0.0"})),
        };
        write(&path, &entry).unwrap();
        let raw: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["containerId"], "abc");
        assert_eq!(raw["config"], "eyJuYW1lIjoibmV0In0=");
        assert_eq!(raw["ifName"], "eth0");
        assert_eq!(raw["networkName"], "net");
        assert_eq!(raw["cniArgs"][0][0], "IgnoreUnknown");
        assert_eq!(read(&path).unwrap(), Some(entry.clone()));
        assert_eq!(list(dir.path(), Some("abc")), vec![entry]);
        assert!(list(dir.path(), Some("other")).is_empty());

        // A libcni file with nulls and no optional fields still reads.
        fs::write(
            &path,
            r#"{"kind":"cniCacheV1","containerId":"abc","config":null,"ifName":"eth0","networkName":"net","cniArgs":null}"#,
        )
        .unwrap();
        assert!(read(&path).unwrap().is_some());
        fs::write(
            &path,
            r#"{"kind":"other","containerId":"abc","ifName":"eth0","networkName":"net"}"#,
        )
        .unwrap();
        assert!(read(&path).is_err());
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }
}
