//! Offline import: an OCI image layout directory, an oci-archive (a tar of one) or a
//! docker-archive (`docker save` / `podman save` format, `manifest.json` + layer tars).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::content::MAX_METADATA_BLOB;
use crate::digest::Digest;
use crate::error::{Error, Result, io_err, malformed};
use crate::model::{self, Descriptor, Document};
use crate::reference::ImageRef;
use crate::store::{Image, ImageStore};
use crate::unpack::Compression;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
struct DockerArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Where an import reads blobs from.
enum Source {
    /// An OCI layout directory: blobs are copied (verified) on demand.
    Dir(PathBuf),
    /// A tar already ingested: every blob is in the content store.
    Ingested,
}

impl ImageStore {
    /// Imports every image of a layout directory or archive. `name` names an image the
    /// archive leaves unnamed (or gives only a tag for).
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>> {
        let _lock = self.shared_lock()?;
        let res = self.import_locked(path, name);
        drop(_lock);
        if res.is_err() {
            self.cleanup_after_failure();
        }
        res
    }

    fn import_locked(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>> {
        let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
        if meta.is_dir() {
            let index = read_small(&path.join("index.json"))?;
            return self.import_oci(&Source::Dir(path.to_path_buf()), &index, name);
        }
        // A tar: ingest blobs as they stream by, keep the small JSON files in memory.
        let f = File::open(path).map_err(io_err("open", path))?;
        let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(256 << 10, f));
        let mut small: HashMap<String, Vec<u8>> = HashMap::new();
        let mut files: HashMap<String, (Digest, u64)> = HashMap::new();
        let bad = |e: std::io::Error| malformed(path.display().to_string(), format!("tar: {e}"));
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let p = entry
                .path()
                .map_err(bad)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let size = entry.header().size().map_err(bad)?;
            if let Some(rest) = p.strip_prefix("blobs/")
                && let Some((alg, hex)) = rest.split_once('/')
            {
                let d = Digest::parse(&format!("{alg}:{hex}"))?;
                self.content.put_reader(&d, Some(size), &mut entry)?;
                files.insert(p, (d, size));
            } else if size <= MAX_METADATA_BLOB
                && (p.ends_with(".json") || p == "oci-layout" || p == "repositories")
            {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(bad)?;
                small.insert(p, data);
            } else {
                let (d, n) = self.content.put_unknown(&mut entry)?;
                files.insert(p, (d, n));
            }
        }
        if let Some(index) = small.get("index.json") {
            return self.import_oci(&Source::Ingested, index, name);
        }
        if let Some(manifest) = small.get("manifest.json") {
            return self.import_docker(manifest, &small, &files, name);
        }
        Err(malformed(
            path.display().to_string(),
            "neither an OCI layout (index.json) nor a docker archive (manifest.json)",
        ))
    }

    fn fetch(&self, src: &Source, d: &Descriptor) -> Result<()> {
        match src {
            Source::Ingested => {
                if self.content.has(&d.digest) {
                    Ok(())
                } else {
                    Err(Error::BlobNotFound(d.digest.to_string()))
                }
            }
            Source::Dir(dir) => {
                let p = dir
                    .join("blobs")
                    .join(d.digest.algorithm())
                    .join(d.digest.hex());
                let mut f = File::open(&p).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::BlobNotFound(d.digest.to_string())
                    } else {
                        io_err("open", &p)(e)
                    }
                })?;
                self.content.put_reader(&d.digest, Some(d.size), &mut f)
            }
        }
    }

    fn import_oci(&self, src: &Source, index: &[u8], name: Option<&str>) -> Result<Vec<Image>> {
        let idx = match model::parse_document("index.json", index, Some(model::OCI_INDEX))? {
            Document::Index(i) => i,
            Document::Manifest(_) => return Err(malformed("index.json", "not an image index")),
        };
        if idx.manifests.is_empty() {
            return Err(malformed("index.json", "no manifests"));
        }
        let mut out = Vec::new();
        for top in &idx.manifests {
            let ann = top.annotations.clone().unwrap_or_default();
            let image_name = match (ann.get(CONTAINERD_NAME), ann.get(REF_NAME), name) {
                (Some(n), _, _) => n.clone(),
                (None, Some(r), _) if r.contains('/') => r.clone(),
                (None, _, Some(n)) => n.to_string(),
                (None, Some(tag), None) => {
                    return Err(malformed(
                        "index.json",
                        format!("image only has the tag {tag:?}: give a name"),
                    ));
                }
                (None, None, None) => {
                    return Err(malformed("index.json", "image has no name: give one"));
                }
            };
            let r = ImageRef::parse(&image_name)?;
            self.fetch(src, top)?;
            let data = self.content.read(&top.digest)?;
            let manifest =
                match model::parse_document(&top.digest.to_string(), &data, Some(&top.media_type))?
                {
                    Document::Manifest(_) => top.digest.clone(),
                    Document::Index(inner) => {
                        let want = &self.config.platform;
                        let d = model::select_platform(&inner, want).ok_or_else(|| {
                            Error::NoMatchingPlatform {
                                reference: image_name.clone(),
                                platform: want.to_string(),
                            }
                        })?;
                        self.fetch(src, d)?;
                        d.digest.clone()
                    }
                };
            let mdata = self.content.read(&manifest)?;
            let m = match model::parse_document(&manifest.to_string(), &mdata, None)? {
                Document::Manifest(m) => m,
                Document::Index(_) => return Err(malformed(manifest.to_string(), "nested index")),
            };
            self.fetch(src, &m.config)?;
            for l in &m.layers {
                self.fetch(src, l)?;
            }
            out.push(self.finish_import(&r, &top.digest, &manifest)?);
        }
        Ok(out)
    }

    fn import_docker(
        &self,
        manifest_json: &[u8],
        small: &HashMap<String, Vec<u8>>,
        files: &HashMap<String, (Digest, u64)>,
        name: Option<&str>,
    ) -> Result<Vec<Image>> {
        let entries: Vec<DockerArchiveEntry> =
            serde_json::from_slice(manifest_json).map_err(|e| malformed("manifest.json", e))?;
        let mut out = Vec::new();
        for e in entries {
            let config = match small.get(&e.config) {
                Some(c) => c.clone(),
                None => {
                    let (d, _) = files.get(&e.config).ok_or_else(|| {
                        malformed("manifest.json", format!("missing config {}", e.config))
                    })?;
                    self.content.read(d)?
                }
            };
            let config_digest = Digest::sha256_of(&config);
            self.content.put(&config_digest, &config)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let (d, size) = files
                    .get(l)
                    .ok_or_else(|| malformed("manifest.json", format!("missing layer {l}")))?;
                let mut head = [0u8; 4];
                let n = self
                    .content
                    .open_blob(d)?
                    .read(&mut head)
                    .map_err(io_err("read", self.content.path(d)))?;
                let mt = match Compression::sniff(&head[..n]) {
                    Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                    Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
                };
                layers.push(
                    serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": size}),
                );
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": model::DOCKER_MANIFEST,
                "config": {"mediaType": model::DOCKER_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
                "layers": layers,
            });
            let mdata = serde_json::to_vec(&manifest).map_err(|e| malformed("manifest", e))?;
            let md = Digest::sha256_of(&mdata);
            self.content.put(&md, &mdata)?;
            let names: Vec<String> = match (&e.repo_tags, name) {
                (Some(t), _) if !t.is_empty() => t.clone(),
                (_, Some(n)) => vec![n.to_string()],
                _ => {
                    return Err(malformed(
                        "manifest.json",
                        "image has no RepoTags: give a name",
                    ));
                }
            };
            let mut last = None;
            for n in names {
                let r = ImageRef::parse(&n)?;
                last = Some(self.finish_import(&r, &md, &md)?);
            }
            if let Some(img) = last {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// Unpacks the layers of an imported image and records its names.
    fn finish_import(&self, r: &ImageRef, target: &Digest, manifest: &Digest) -> Result<Image> {
        let (m, cfg, chains) = self.load_manifest(manifest)?;
        for (i, ((l, diff), chain)) in m
            .layers
            .iter()
            .zip(cfg.rootfs.diff_ids.iter())
            .zip(chains.iter())
            .enumerate()
        {
            self.unpack_layer(l, diff, chain, Some(&chains[..i]))?;
        }
        let mut names = Vec::new();
        if let Some(t) = r.tagged_name() {
            names.push(t);
        }
        names.push(r.digest_name(target));
        self.record_image(&names, target, manifest)
    }
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let f = File::open(p).map_err(io_err("open", p))?;
    let mut data = Vec::new();
    f.take(MAX_METADATA_BLOB + 1)
        .read_to_end(&mut data)
        .map_err(io_err("read", p))?;
    if data.len() as u64 > MAX_METADATA_BLOB {
        return Err(malformed(p.display().to_string(), "larger than 8 MiB"));
    }
    Ok(data)
}
