//! keelsond's records of sandboxes and containers, one JSON file each under the persistent
//! root, written atomically (temporary file + rename), so a restart rebuilds the daemon's view
//! from disk. The CRI configs are kept as their protobuf encoding: what the kubelet sent is
//! what a status call returns, field for field.
//!
//! ```text
//! <root>/sandboxes/<id>.json
//! <root>/containers/<id>.json
//! ```

use crate::sandbox::Infra;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("record {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Bytes kept as base64 in the JSON records.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    /// The `PodSandboxConfig` as the kubelet sent it (protobuf).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The labels of `config`, decoded when the record is put or loaded, so that List*
    /// filters every record on them without decoding its config; not stored.
    #[serde(skip)]
    pub labels: Arc<HashMap<String, String>>,
    /// The metadata of `config` (name, namespace, uid, attempt), decoded with the labels, so
    /// that RunPodSandbox finds a reserved name without decoding every record; not stored.
    #[serde(skip)]
    pub metadata: Option<Arc<keelson_proto::runtime::v1::PodSandboxMetadata>>,
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: SandboxState,
    pub infra: Infra,
    /// Pod IPs from the CNI result, primary first.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The CNI network attached (so DEL goes to the same one), if any.
    #[serde(default)]
    pub network: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The `ContainerConfig` as the kubelet sent it (protobuf).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The labels of `config`, decoded when the record is put or loaded, so that List*
    /// filters every record on them without decoding its config; not stored.
    #[serde(skip)]
    pub labels: Arc<HashMap<String, String>>,
    /// The image as asked for, and the resolved image ID (config digest).
    pub image: String,
    pub image_id: String,
    /// The digested reference (`repo@sha256:...`) or, failing that, the image ID.
    pub image_ref: String,
    pub created_at: i64,
    #[serde(default)]
    pub started_at: i64,
    pub log_path: String,
    pub bundle: PathBuf,
    pub exit_file: PathBuf,
    /// The signal StopContainer sends first (from the image's StopSignal), as a number.
    pub stop_signal: i32,
    /// The identity the process runs with (uid, gid, supplementary groups), as created;
    /// absent in records written before it was kept.
    #[serde(default)]
    pub user: Option<ProcessUser>,
}

/// The user of a container's process (ContainerStatus.user).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The two record directories.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store> {
        for d in ["sandboxes", "containers"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|source| StoreError::Io {
                context: format!("creating {}", p.display()),
                source,
            })?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.root.join(kind).join(format!("{id}.json"))
    }

    fn write<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<()> {
        let path = self.path(kind, id);
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let io = |source| StoreError::Io {
            context: format!("writing {}", tmp.display()),
            source,
        };
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(|source| StoreError::Io {
            context: format!("renaming {}", path.display()),
            source,
        })
    }

    fn remove(&self, kind: &str, id: &str) -> Result<()> {
        let path = self.path(kind, id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                context: format!("removing {}", path.display()),
                source,
            }),
        }
    }

    fn load_all<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> Result<Vec<T>> {
        let dir = self.root.join(kind);
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::Io {
            context: format!("reading {}", dir.display()),
            source,
        })?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                // A temporary file of an interrupted write: the previous record (if any) stands.
                let _ = fs::remove_file(&p);
                continue;
            }
            let data = fs::read(&p).map_err(|source| StoreError::Io {
                context: format!("reading {}", p.display()),
                source,
            })?;
            match serde_json::from_slice(&data) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "skipping an unreadable record");
                }
            }
        }
        Ok(out)
    }

    pub fn save_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        self.write("sandboxes", &r.id, r)
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.remove("sandboxes", id)
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.load_all("sandboxes")
    }

    pub fn save_container(&self, r: &ContainerRecord) -> Result<()> {
        self.write("containers", &r.id, r)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.remove("containers", id)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.load_all("containers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_temp_files_are_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let r = SandboxRecord {
            id: "abc".into(),
            config: vec![0, 1, 2, 255],
            labels: Default::default(),
            metadata: None,
            runtime_handler: String::new(),
            created_at: 7,
            state: SandboxState::Ready,
            infra: Infra::default(),
            ips: vec!["10.0.0.2".into()],
            network: Some("kt".into()),
        };
        s.save_sandbox(&r).expect("save");
        fs::write(dir.path().join("sandboxes/zzz.json.tmp"), b"{half").expect("tmp");
        fs::write(dir.path().join("sandboxes/bad.json"), b"{half").expect("bad");
        let s = Store::open(dir.path()).expect("reopen");
        let all = s.sandboxes().expect("load");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].config, vec![0, 1, 2, 255]);
        assert_eq!(all[0].ips, vec!["10.0.0.2".to_string()]);
        assert!(!dir.path().join("sandboxes/zzz.json.tmp").exists());
        s.remove_sandbox("abc").expect("rm");
        s.remove_sandbox("abc").expect("rm twice");
        assert!(s.sandboxes().expect("load").is_empty());
    }
}
