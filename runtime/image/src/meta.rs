//! The metadata store: image names → what they point at.
//!
//! One JSON file per name (`images/<sha256 of the name>.json`), written atomically (temp file,
//! fsync, rename, directory fsync). Chosen over an embedded database because every change is a
//! single-name upsert or delete, which a rename makes atomic on its own: a process killed at any
//! point leaves each name either absent or complete, and a record is written only after every
//! blob and snapshot it names is committed, so no reader ever sees half an image.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result, io_err, malformed};
use crate::fsutil;

/// What one image name points at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// `registry/repo:tag` or `registry/repo@digest`.
    pub name: String,
    /// What the name resolved to: the index or the manifest.
    pub target: Digest,
    /// The platform's manifest.
    pub manifest: Digest,
    /// The config digest: the image ID.
    pub config: Digest,
    /// Compressed layer digests, bottom first.
    pub layers: Vec<Digest>,
    /// Chain IDs of the layers, bottom first (the committed snapshots).
    pub chain_ids: Vec<Digest>,
    /// Bytes of manifest, config and compressed layers.
    pub size: u64,
    #[serde(default)]
    pub uid: Option<i64>,
    #[serde(default)]
    pub username: String,
}

/// Image records on disk.
#[derive(Debug, Clone)]
pub struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("images");
        fsutil::mkdir_p(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", Digest::sha256_of(name.as_bytes()).hex()))
    }

    pub fn put(&self, rec: &ImageRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(rec).map_err(|e| malformed("image record", e))?;
        fsutil::write_atomic(&self.path(&rec.name), &data)
    }

    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>> {
        let p = self.path(name);
        match fs::read(&p) {
            Ok(data) => {
                let rec: ImageRecord = serde_json::from_slice(&data)
                    .map_err(|e| malformed(p.display().to_string(), e))?;
                Ok(Some(rec))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", p)(e)),
        }
    }

    pub fn delete(&self, name: &str) -> Result<bool> {
        let p = self.path(name);
        match fs::remove_file(&p) {
            Ok(()) => {
                fsutil::sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", p)(e)),
        }
    }

    /// Every record; unreadable files (which atomic writes never produce) are reported.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("read dir", &self.dir))? {
            let e = e.map_err(io_err("read dir", &self.dir))?;
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json")
                || e.file_name().to_string_lossy().starts_with(".tmp-")
            {
                continue;
            }
            let data = fs::read(&p).map_err(io_err("read", &p))?;
            match serde_json::from_slice::<ImageRecord>(&data) {
                Ok(r) => out.push(r),
                Err(err) => {
                    return Err(Error::Malformed {
                        what: p.display().to_string(),
                        reason: err.to_string(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes temp files of interrupted writes (call with the store's exclusive lock held).
    pub fn clean_tmp(&self) -> Result<()> {
        for e in fs::read_dir(&self.dir).map_err(io_err("read dir", &self.dir))? {
            let e = e.map_err(io_err("read dir", &self.dir))?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}
