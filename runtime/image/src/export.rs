//! Export: one image (the platform manifest it was pulled for, its config and layers) as an
//! OCI image layout directory, or an oci-archive when the path ends in `.tar`.

use std::fs::{self, File};
use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result, io_err, malformed};
use crate::fsutil;
use crate::model;
use crate::reference::ImageRef;
use crate::store::ImageStore;

impl ImageStore {
    /// Writes `name` to `dest` (a new or empty directory, or a new `.tar` file).
    pub fn export(&self, name: &str, dest: &Path) -> Result<()> {
        let _lock = self.shared_lock()?;
        let img = self.get(name)?;
        let as_tar = dest.extension().is_some_and(|e| e == "tar");
        if as_tar {
            if dest.exists() {
                return Err(malformed(dest.display().to_string(), "already exists"));
            }
            let parent = dest.parent().unwrap_or(Path::new("."));
            let tmp = tempdir_in(parent)?;
            let res = self
                .write_layout(&img, name, &tmp)
                .and_then(|()| write_tar(&tmp, dest));
            let _ = fs::remove_dir_all(&tmp);
            if res.is_err() {
                let _ = fs::remove_file(dest);
            }
            return res;
        }
        if dest.exists()
            && fs::read_dir(dest)
                .map_err(io_err("read dir", dest))?
                .next()
                .is_some()
        {
            return Err(malformed(
                dest.display().to_string(),
                "not an empty directory",
            ));
        }
        self.write_layout(&img, name, dest)
    }

    fn write_layout(&self, img: &crate::store::Image, name: &str, dest: &Path) -> Result<()> {
        let (m, _, _) = self.load_manifest(&img.manifest)?;
        let blobs = dest.join("blobs");
        let mut digests = vec![img.manifest.clone(), m.config.digest.clone()];
        digests.extend(m.layers.iter().map(|l| l.digest.clone()));
        for d in &digests {
            let dir = blobs.join(d.algorithm());
            fsutil::mkdir_p(&dir)?;
            let to = dir.join(d.hex());
            let from = self.content.path(d);
            if !from.is_file() {
                return Err(Error::BlobNotFound(d.to_string()));
            }
            // A copy, never a hard link: writes to the export must not reach the store.
            fs::copy(&from, &to).map_err(io_err("copy", &to))?;
        }
        let mdata = self.content.read(&img.manifest)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&mdata)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| model::OCI_MANIFEST.to_string());
        // The name as the user gave it, resolved to one of the image's names.
        let full = ImageRef::parse(name)
            .ok()
            .and_then(|r| r.tagged_name())
            .filter(|n| img.repo_tags.contains(n))
            .or_else(|| img.repo_tags.first().cloned())
            .or_else(|| img.repo_digests.first().cloned())
            .unwrap_or_default();
        let mut annotations = serde_json::Map::new();
        if !full.is_empty() {
            annotations.insert("io.containerd.image.name".into(), json!(full));
            if let Ok(r) = ImageRef::parse(&full)
                && let Some(t) = r.tag
            {
                annotations.insert("org.opencontainers.image.ref.name".into(), json!(t));
            }
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": model::OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": img.manifest.to_string(),
                "size": mdata.len(),
                "annotations": annotations,
            }],
        });
        let index = serde_json::to_vec(&index).map_err(|e| malformed("index.json", e))?;
        fsutil::write_atomic(&dest.join("index.json"), &index)?;
        fsutil::write_atomic(
            &dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(())
    }
}

fn tempdir_in(parent: &Path) -> Result<std::path::PathBuf> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let p = parent.join(format!(
        ".keelson-export-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    fs::create_dir(&p).map_err(io_err("mkdir", &p))?;
    Ok(p)
}

fn write_tar(dir: &Path, dest: &Path) -> Result<()> {
    let f = File::create(dest).map_err(io_err("create", dest))?;
    let mut b = tar::Builder::new(f);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).map_err(io_err("tar", dest))?;
    let f = b.into_inner().map_err(io_err("tar", dest))?;
    f.sync_all().map_err(io_err("fsync", dest))
}
