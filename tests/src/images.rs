//! Test images: tar layers written byte by byte (so hostile entries — `..`, absolute links,
//! hard links out — can be made), OCI image layouts holding them, archives of those layouts,
//! and helpers to push them to a [`crate::registry::Registry`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::bundle::busybox_path;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn media_type(self, docker: bool) -> &'static str {
        match (self, docker) {
            (Compression::None, false) => "application/vnd.oci.image.layer.v1.tar",
            (Compression::Gzip, false) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Compression::Zstd, _) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Compression::None, true) => "application/vnd.docker.image.rootfs.diff.tar",
            (Compression::Gzip, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }

    fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data)?;
                e.finish()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3),
        }
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar stream built entry by entry, with raw (unchecked) names.
#[derive(Debug, Default, Clone)]
pub struct LayerBuilder {
    buf: Vec<u8>,
}

/// One tar entry's fields.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub path: &'a [u8],
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: &'a [u8],
    pub link: Option<&'a [u8]>,
    pub dev: Option<(u32, u32)>,
}

impl<'a> Entry<'a> {
    pub fn new(path: &'a [u8], kind: tar::EntryType) -> Self {
        Entry {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            data: b"",
            link: None,
            dev: None,
        }
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a raw entry. Names up to 100 bytes (plus a 155-byte ustar prefix is not used:
    /// test paths are short); they are not checked, which is the point.
    pub fn entry(mut self, e: Entry<'_>) -> Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            let n = e.path.len().min(100);
            old.name[..n].copy_from_slice(&e.path[..n]);
            if let Some(l) = e.link {
                let n = l.len().min(100);
                old.linkname[..n].copy_from_slice(&l[..n]);
            }
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        if let Some((major, minor)) = e.dev {
            let _ = h.set_device_major(major);
            let _ = h.set_device_minor(minor);
        }
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.entry(Entry {
            mode: 0o755,
            ..Entry::new(path.as_bytes(), tar::EntryType::Directory)
        })
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(Entry {
            data,
            ..Entry::new(path.as_bytes(), tar::EntryType::Regular)
        })
    }

    pub fn file_with(self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        self.entry(Entry {
            data,
            mode,
            uid,
            gid,
            ..Entry::new(path.as_bytes(), tar::EntryType::Regular)
        })
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry {
            mode: 0o777,
            link: Some(target.as_bytes()),
            ..Entry::new(path.as_bytes(), tar::EntryType::Symlink)
        })
    }

    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry {
            link: Some(target.as_bytes()),
            ..Entry::new(path.as_bytes(), tar::EntryType::Link)
        })
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(Entry {
            mode: 0o666,
            dev: Some((major, minor)),
            ..Entry::new(path.as_bytes(), tar::EntryType::Char)
        })
    }

    pub fn fifo(self, path: &str) -> Self {
        self.entry(Entry::new(path.as_bytes(), tar::EntryType::Fifo))
    }

    /// A whiteout of `dir/name`.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    /// Marks `dir` opaque.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    /// A file with a PAX `SCHILY.xattr.<name>` record.
    pub fn file_with_xattr(self, path: &str, data: &[u8], name: &str, value: &str) -> Self {
        let rec = pax_record(&format!("SCHILY.xattr.{name}"), value);
        self.entry(Entry {
            data: rec.as_bytes(),
            ..Entry::new(b"PaxHeaders/x", tar::EntryType::XHeader)
        })
        .file(path, data)
    }

    /// The static busybox as `/bin/busybox`, a few applet links, `/etc/passwd`, `/etc/group`.
    pub fn busybox_base() -> io::Result<Self> {
        let busybox = fs::read(busybox_path())?;
        let mut b = LayerBuilder::new()
            .dir("bin")
            .dir("etc")
            .dir("tmp")
            .file_with("bin/busybox", &busybox, 0o755, 0, 0);
        for applet in ["sh", "ls", "cat", "echo", "id", "true", "stat"] {
            b = b.symlink(&format!("bin/{applet}"), "busybox");
        }
        Ok(b.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nkt:x:1000:1000::/home/kt:/bin/sh\n",
        )
        .file("etc/group", b"root:x:0:\nkt:x:1000:\n"))
    }

    /// The finished tar stream (with its two zero blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    loop {
        let candidate = format!("{len}{body}");
        if candidate.len() == len {
            return candidate;
        }
        len = candidate.len();
    }
}

/// An image to write into a layout.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<(Vec<u8>, Compression)>,
    pub user: Option<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// Docker schema 2 media types instead of OCI.
    pub docker: bool,
    /// Labels in the config, to make otherwise equal images differ.
    pub label: Option<String>,
    /// diff_ids to write instead of the real ones (for tests of bad configs).
    pub fake_diff_ids: Option<Vec<String>>,
}

impl ImageSpec {
    pub fn new(layers: Vec<(Vec<u8>, Compression)>) -> Self {
        Self {
            layers,
            user: None,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            docker: false,
            label: None,
            fake_diff_ids: None,
        }
    }
}

/// A manifest or index descriptor, as JSON.
pub type Descriptor = Value;

/// An OCI image layout directory (removed on Drop).
#[derive(Debug)]
pub struct Layout {
    dir: tempfile::TempDir,
    index: Vec<Value>,
}

impl Layout {
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("kt-layout-").tempdir()?;
        fs::create_dir_all(dir.path().join("blobs/sha256"))?;
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let l = Layout {
            dir,
            index: Vec::new(),
        };
        l.write_index()?;
        Ok(l)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Stores a blob; returns its digest.
    pub fn add_blob(&self, data: &[u8]) -> io::Result<String> {
        let d = sha256(data);
        fs::write(
            self.dir
                .path()
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
            data,
        )?;
        Ok(d)
    }

    /// The path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Writes config, layers and manifest; returns the manifest's descriptor.
    pub fn add_image(&self, spec: &ImageSpec) -> io::Result<Descriptor> {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in &spec.layers {
            diff_ids.push(sha256(tar));
            let blob = c.compress(tar)?;
            let d = self.add_blob(&blob)?;
            layers.push(
                json!({"mediaType": c.media_type(spec.docker), "digest": d, "size": blob.len()}),
            );
        }
        let mut run = json!({"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]});
        if let Some(u) = &spec.user {
            run["User"] = json!(u);
        }
        if let Some(l) = &spec.label {
            run["Labels"] = json!({"test": l});
        }
        let mut config = json!({
            "architecture": spec.architecture,
            "os": spec.os,
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": spec.fake_diff_ids.clone().unwrap_or(diff_ids)},
        });
        if let Some(v) = &spec.variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
        let cd = self.add_blob(&config)?;
        let (mt, cmt) = if spec.docker {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": cd, "size": config.len()},
            "layers": layers,
        });
        let m = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let md = self.add_blob(&m)?;
        let mut platform = json!({"architecture": spec.architecture, "os": spec.os});
        if let Some(v) = &spec.variant {
            platform["variant"] = json!(v);
        }
        Ok(json!({"mediaType": mt, "digest": md, "size": m.len(), "platform": platform}))
    }

    /// Writes an image index over manifests; returns its descriptor.
    pub fn add_index(&self, manifests: &[Descriptor]) -> io::Result<Descriptor> {
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let data = serde_json::to_vec(&idx).map_err(io::Error::other)?;
        let d = self.add_blob(&data)?;
        Ok(
            json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": data.len()}),
        )
    }

    /// Names a manifest or index in `index.json` (`org.opencontainers.image.ref.name`).
    pub fn tag(&mut self, desc: &Descriptor, tag: &str) -> io::Result<()> {
        let mut d = desc.clone();
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
            o.insert(
                "annotations".into(),
                json!({"org.opencontainers.image.ref.name": tag}),
            );
        }
        self.index.push(d);
        self.write_index()
    }

    fn write_index(&self) -> io::Result<()> {
        let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(&idx).map_err(io::Error::other)?,
        )
    }

    /// Writes an image, tags it, and returns the manifest descriptor.
    pub fn add_tagged(&mut self, spec: &ImageSpec, tag: &str) -> io::Result<Descriptor> {
        let d = self.add_image(spec)?;
        self.tag(&d, tag)?;
        Ok(d)
    }

    /// `tar -cf <file> -C <layout> .`: an oci-archive.
    pub fn write_archive(&self, file: &Path) -> io::Result<()> {
        let out = Command::new("tar")
            .arg("-cf")
            .arg(file)
            .arg("-C")
            .arg(self.dir.path())
            .arg(".")
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).to_string(),
            ));
        }
        Ok(())
    }

    /// `skopeo copy oci:<layout>:<tag> docker-archive:<file>:<name>`.
    pub fn write_docker_archive(&self, tag: &str, file: &Path, name: &str) -> io::Result<()> {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:{tag}", self.dir.path().display()))
            .arg(format!("docker-archive:{}:{name}", file.display()))
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy to docker-archive: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }
}

/// A busybox image with two more layers: the second adds `/data/{a,b}`, `/keep/x` and
/// `/opq/{old1,old2}`; the third removes `/data/a` (whiteout), makes `/opq` opaque with only
/// `/opq/new`, and adds `/data/c` with an xattr.
pub fn busybox_three_layers(compression: Compression) -> io::Result<Vec<(Vec<u8>, Compression)>> {
    let base = LayerBuilder::busybox_base()?.finish();
    let second = LayerBuilder::new()
        .dir("data")
        .file("data/a", b"a\n")
        .file_with("data/b", b"b\n", 0o640, 1000, 1000)
        .dir("keep")
        .file("keep/x", b"x\n")
        .hardlink("keep/x-link", "keep/x")
        .dir("opq")
        .file("opq/old1", b"1\n")
        .file("opq/old2", b"2\n")
        .finish();
    let third = LayerBuilder::new()
        .whiteout("data/a")
        .dir("opq")
        .opaque("opq")
        .file("opq/new", b"new\n")
        .file_with_xattr("data/c", b"c\n", "user.keelson", "test")
        .fifo("data/fifo")
        .finish();
    Ok(vec![
        (base, compression),
        (second, compression),
        (third, compression),
    ])
}

/// The `keelson-image` CLI the tests drive: `$KEELSON_IMAGE_BIN`; else `debug/keelson-image`
/// in the `CARGO_TARGET_DIR` these tests were built with; else `<workspace>/target/debug/`.
pub fn keelson_image_binary() -> io::Result<PathBuf> {
    crate::runtime::built_binary("KEELSON_IMAGE_BIN", "keelson-image", "keelson-image")
}

/// A mount point that is lazily unmounted and removed on Drop.
#[derive(Debug)]
pub struct MountDir {
    dir: tempfile::TempDir,
}

impl MountDir {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("kt-mnt-").tempdir()?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        // Unmount everything stacked here before the TempDir removes the directory.
        while nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}
