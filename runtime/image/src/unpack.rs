//! Layer unpack: a tar stream (uncompressed, gzip or zstd) into one snapshot directory, in the
//! overlayfs format (whiteouts become 0/0 character devices, opaque directories get
//! `trusted.overlay.opaque=y`).
//!
//! Containment: the directory is private while a layer is unpacked, so the only thing that can
//! plant a symlink in it is the layer itself. Every entry path is checked lexically (no `..`,
//! leading `/` stripped). Parent directories are resolved in the rootfs the layer applies to
//! (this layer over its committed parents, with overlay's whiteout and opaque rules), like
//! containerd's `fs.RootPath`: a symlink met on the way (planted by this layer or a lower one)
//! is followed *inside* that rootfs — absolute targets from its root, `..` stopping at it — so
//! `lib/x` under a lower `lib -> usr/lib` lands in `usr/lib/x` of this layer and nothing ever
//! resolves outside. Directories created on the way copy the owner, mode and mtime of the
//! lower directory they stand for. Files are created with `O_EXCL|O_NOFOLLOW` after removing
//! what was there, metadata is set without following links, and every path written is
//! `lstat`ed to be a real directory in this layer. A hard link target is resolved the same way;
//! one in a lower layer is copied up into this layer first (overlay cannot link across layers)
//! and then linked. Symlinks themselves are stored verbatim.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::digest::{Digest, Hasher, HashingReader};
use crate::error::{Error, Result, io_err};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer media type; `None` for types that are not layers.
    pub fn from_media_type(mt: &str) -> Option<Self> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// From the first bytes of a blob (docker-archive layers carry no media type).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Limits and switches for one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Refuse a layer whose uncompressed tar stream passes this many bytes.
    pub max_uncompressed: u64,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            max_uncompressed: 16 << 30,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct UnpackStats {
    /// The sha256 of the uncompressed tar stream (the layer's diff ID).
    pub diff_id: Option<Digest>,
    pub uncompressed_bytes: u64,
    pub entries: u64,
    pub skipped_devices: u64,
}

/// Counts decompressed bytes and stops the stream past the limit.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(io::Error::other(
                "layer exceeds the uncompressed size limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Unpacks one layer into `dest` (an empty directory) and returns its diff ID.
///
/// On error `dest` holds a partial tree: the caller removes it (snapshots are unpacked into a
/// temporary directory and renamed only on success).
///
/// `lowers` are the committed directories of the layers below, top first (`Some(&[])` for a
/// base layer). With `None` they are not known yet: a layer that needs them fails with
/// [`Error::NeedsParents`] and is unpacked again once they are there.
pub fn unpack_layer(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    layer: &str,
    opts: &UnpackOptions,
    lowers: Option<&[PathBuf]>,
) -> Result<UnpackStats> {
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(
                zstd::stream::read::Decoder::new(blob).map_err(|e| Error::BadLayer {
                    layer: layer.to_string(),
                    reason: format!("zstd: {e}"),
                })?,
            )
        }
    };
    let exceeded = Rc::new(Cell::new(false));
    let limited = Limited {
        inner: decoded,
        left: opts.max_uncompressed,
        exceeded: exceeded.clone(),
    };
    let hashing = HashingReader::new(limited, Hasher::sha256());
    let mut archive = tar::Archive::new(hashing);
    let mut u = Unpacker {
        dest: dest.to_path_buf(),
        layer: layer.to_string(),
        lowers: lowers.map(<[PathBuf]>::to_vec),
        dirs: Vec::new(),
        stats: UnpackStats::default(),
    };
    let bad = |e: io::Error| {
        if exceeded.get() {
            Error::LayerTooLarge {
                layer: layer.to_string(),
                limit: opts.max_uncompressed,
            }
        } else {
            Error::BadLayer {
                layer: layer.to_string(),
                reason: format!("reading tar stream: {e}"),
            }
        }
    };
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        u.entry(entry).map_err(|e| {
            if exceeded.get() {
                Error::LayerTooLarge {
                    layer: layer.to_string(),
                    limit: opts.max_uncompressed,
                }
            } else {
                e
            }
        })?;
        if exceeded.get() {
            return Err(Error::LayerTooLarge {
                layer: layer.to_string(),
                limit: opts.max_uncompressed,
            });
        }
    }
    // The diff ID covers the whole stream, including the end-of-archive padding.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(bad)?;
    let (diff_id, n) = rest.finish();
    u.finish_dirs()?;
    u.stats.diff_id = Some(diff_id);
    u.stats.uncompressed_bytes = n;
    Ok(u.stats)
}

/// What the rootfs shows at a path.
enum Node {
    Missing,
    /// Found in this layer (`None`) or in lower layer `Some(i)`, with its metadata.
    Found(Option<usize>, fs::Metadata),
}

/// What one layer says about a path.
enum LayerHit {
    Found(fs::Metadata),
    /// A whiteout, or an ancestor that is not a directory: nothing below shows through.
    Hidden,
    /// Not in this layer; `opaque` when an ancestor is an opaque directory (lower layers are
    /// hidden there).
    Absent {
        opaque: bool,
    },
}

/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

struct Unpacker {
    dest: PathBuf,
    layer: String,
    lowers: Option<Vec<PathBuf>>,
    dirs: Vec<DirMeta>,
    stats: UnpackStats,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Turns an entry name into a relative path with normal components only.
/// `..` anywhere is refused; a leading `/` and `.` components are dropped.
pub fn clean_entry_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains a `..` component"),
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err("unexpected path prefix"),
        }
    }
    Ok(out)
}

impl Unpacker {
    /// The directory of lower layer `i` (as `lookup` found it).
    fn lower_dir(&self, i: usize, entry: &Path) -> Result<&Path> {
        self.lowers
            .as_deref()
            .and_then(|l| l.get(i))
            .map(PathBuf::as_path)
            .ok_or_else(|| self.hostile(entry, format!("lower layer {i} is not known")))
    }

    fn hostile(&self, entry: &Path, reason: impl Into<String>) -> Error {
        Error::HostileLayer {
            layer: self.layer.clone(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    /// The path in this layer where entry `rel` goes: its parent resolved in the rootfs (see
    /// the module doc) and created in this layer as real directories.
    fn place(&mut self, rel: &Path) -> Result<PathBuf> {
        let Some(name) = rel.file_name() else {
            return Ok(rel.to_path_buf());
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        // Fast path: every parent is already a real directory of this layer.
        let mut cur = self.dest.clone();
        let mut all_dirs = true;
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    all_dirs = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    all_dirs = false;
                    break;
                }
                Err(e) => return Err(io_err("lstat", &cur)(e)),
            }
        }
        if all_dirs {
            return Ok(rel.to_path_buf());
        }
        let resolved = self.resolve_dir(parent, rel)?;
        self.make_dirs(&resolved, rel)?;
        Ok(resolved.join(name))
    }

    /// Resolves a directory path in the rootfs, following symlinks inside it.
    fn resolve_dir(&self, path: &Path, entry: &Path) -> Result<PathBuf> {
        let mut resolved = PathBuf::new();
        let mut pending: Vec<std::ffi::OsString> = path
            .components()
            .rev()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                resolved.pop();
                continue;
            }
            if c.is_empty() || c == "." || c == "/" {
                continue;
            }
            let cand = resolved.join(&c);
            match self.lookup(&cand)? {
                Node::Missing => resolved = cand,
                Node::Found(_, m) if m.is_dir() => resolved = cand,
                Node::Found(layer, m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(self.hostile(entry, "too many levels of symbolic links"));
                    }
                    let root = match layer {
                        None => &self.dest,
                        Some(i) => self.lower_dir(i, entry)?,
                    };
                    let link = root.join(&cand);
                    let target = fs::read_link(&link).map_err(io_err("readlink", &link))?;
                    if target.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    pending.extend(
                        target
                            .components()
                            .rev()
                            .map(|c| c.as_os_str().to_os_string()),
                    );
                }
                Node::Found(..) => {
                    return Err(self.hostile(entry, "a parent component is not a directory"));
                }
            }
        }
        Ok(resolved)
    }

    /// What the rootfs (this layer over the lower ones) shows at `rel`, whose parents are
    /// resolved directories.
    fn lookup(&self, rel: &Path) -> Result<Node> {
        match layer_lookup(&self.dest, rel)? {
            LayerHit::Found(m) if is_whiteout(&m) => return Ok(Node::Missing),
            LayerHit::Found(m) => return Ok(Node::Found(None, m)),
            LayerHit::Hidden | LayerHit::Absent { opaque: true } => return Ok(Node::Missing),
            LayerHit::Absent { opaque: false } => {}
        }
        let Some(lowers) = &self.lowers else {
            return Err(Error::NeedsParents(self.layer.clone()));
        };
        for (i, l) in lowers.iter().enumerate() {
            match layer_lookup(l, rel)? {
                LayerHit::Found(m) if is_whiteout(&m) => return Ok(Node::Missing),
                LayerHit::Found(m) => return Ok(Node::Found(Some(i), m)),
                LayerHit::Hidden | LayerHit::Absent { opaque: true } => return Ok(Node::Missing),
                LayerHit::Absent { opaque: false } => {}
            }
        }
        Ok(Node::Missing)
    }

    /// Creates the resolved directory `rel` in this layer: missing components become real
    /// directories with the metadata of the lower directory they stand for (if any); a
    /// whiteout there becomes an opaque directory (what was below is deleted).
    fn make_dirs(&mut self, rel: &Path, entry: &Path) -> Result<()> {
        let mut cur_rel = PathBuf::new();
        for c in rel.components() {
            cur_rel.push(c);
            let cur = self.dest.join(&cur_rel);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(m) if is_whiteout(&m) => {
                    fs::remove_file(&cur).map_err(io_err("remove", &cur))?;
                    fs::create_dir(&cur).map_err(io_err("mkdir", &cur))?;
                    xattr::set(&cur, "trusted.overlay.opaque", b"y")
                        .map_err(io_err("set opaque xattr on", &cur))?;
                    continue;
                }
                Ok(_) => {
                    return Err(self.hostile(entry, "a parent component is not a directory"));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("lstat", &cur)(e)),
            }
            let below = self.lookup(&cur_rel)?;
            fs::create_dir(&cur).map_err(io_err("mkdir", &cur))?;
            if let Node::Found(Some(_), m) = below
                && m.is_dir()
            {
                self.dirs.push(DirMeta {
                    path: cur,
                    mode: m.mode() & 0o7777,
                    uid: u64::from(m.uid()),
                    gid: u64::from(m.gid()),
                    mtime: u64::try_from(m.mtime()).unwrap_or(0),
                });
            }
        }
        Ok(())
    }

    /// Copies a lower layer's file, symlink or special file at `rel` into this layer (where
    /// `rel`'s parents already are), so that it can be hard linked.
    fn copy_up(&mut self, lower: usize, rel: &Path, m: &fs::Metadata, entry: &Path) -> Result<()> {
        let src = self.lower_dir(lower, entry)?.join(rel);
        let dst = self.dest.join(rel);
        let ft = m.file_type();
        if ft.is_file() {
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)
                .map_err(io_err("open", &src))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&dst)
                .map_err(io_err("create", &dst))?;
            io::copy(&mut from, &mut to).map_err(io_err("copy up", &dst))?;
            to.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_err("chmod", &dst))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(io_err("readlink", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err("symlink", &dst))?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            let sflag = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_block_device() {
                SFlag::S_IFBLK
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                return Err(self.hostile(entry, "hard link target is a socket"));
            };
            nix::sys::stat::mknod(
                &dst,
                sflag,
                Mode::from_bits_truncate(m.mode() & 0o7777),
                m.rdev(),
            )
            .map_err(|e| io_err("mknod", &dst)(e.into()))?;
        }
        std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))
            .map_err(io_err("lchown", &dst))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_err("chmod", &dst))?;
        }
        if let Ok(names) = xattr::list(&src) {
            for n in names {
                let name = n.to_string_lossy();
                if name.starts_with("trusted.overlay.") {
                    continue;
                }
                if let Ok(Some(v)) = xattr::get(&src, &n) {
                    let _ = xattr::set(&dst, &n, &v);
                }
            }
        }
        set_mtime(&dst, u64::try_from(m.mtime()).unwrap_or(0))
    }

    /// Removes whatever is at `path` (never following a symlink), unless it is a directory
    /// and `keep_dir` is set. Returns whether a directory was kept.
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(path).map_err(io_err("remove", path))?;
            }
            Ok(_) => fs::remove_file(path).map_err(io_err("remove", path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("lstat", path)(e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let rel = clean_entry_path(&raw)
            .map_err(|r| self.hostile(Path::new(OsStr::from_bytes(&raw)), r))?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        if rel.as_os_str().is_empty() {
            // The layer's root directory ("./"): the snapshot dir itself.
            return Ok(());
        }
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let rel = self.place(&rel)?;
        let full = self.dest.join(&rel);

        if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            let parent = full
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or(self.dest.clone());
            if name == OPAQUE.as_bytes() {
                xattr::set(&parent, "trusted.overlay.opaque", b"y")
                    .map_err(io_err("set opaque xattr on", &parent))?;
                return Ok(());
            }
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
                return Err(self.hostile(&rel, "malformed whiteout"));
            }
            let wh = parent.join(OsStr::from_bytes(target));
            self.clear(&wh, false)?;
            nix::sys::stat::mknod(&wh, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| io_err("mknod whiteout", &wh)(e.into()))?;
            return Ok(());
        }

        let hdr = entry.header();
        let mode = hdr
            .mode()
            .map_err(|e| self.hostile(&rel, format!("mode: {e}")))?
            & 0o7777;
        let uid = hdr
            .uid()
            .map_err(|e| self.hostile(&rel, format!("uid: {e}")))?;
        let gid = hdr
            .gid()
            .map_err(|e| self.hostile(&rel, format!("gid: {e}")))?;
        let mtime = hdr.mtime().unwrap_or(0);
        let xattrs = self.xattrs(&mut entry);

        match kind {
            tar::EntryType::Directory => {
                if !self.clear(&full, true)? {
                    fs::create_dir(&full).map_err(io_err("mkdir", &full))?;
                }
                self.set_xattrs(&full, &xattrs)?;
                self.dirs.push(DirMeta {
                    path: full,
                    mode,
                    uid,
                    gid,
                    mtime,
                });
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&full, false)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&full)
                    .map_err(io_err("create", &full))?;
                io::copy(&mut entry, &mut f).map_err(io_err("write", &full))?;
                std::os::unix::fs::fchown(&f, Some(id32(uid)), Some(id32(gid)))
                    .map_err(io_err("chown", &full))?;
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &full))?;
                self.set_xattrs(&full, &xattrs)?;
                set_mtime(&full, mtime)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&rel, "symlink without a target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(self.hostile(&rel, "symlink with an empty target"));
                }
                self.clear(&full, false)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(io_err("symlink", &full))?;
                std::os::unix::fs::lchown(&full, Some(id32(uid)), Some(id32(gid)))
                    .map_err(io_err("lchown", &full))?;
                self.set_xattrs(&full, &xattrs)?;
                set_mtime(&full, mtime)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&rel, "hard link without a target"))?
                    .into_owned();
                let trel = clean_entry_path(&target).map_err(|r| {
                    self.hostile(
                        &rel,
                        format!(
                            "hard link target {:?}: {r}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                if trel.as_os_str().is_empty() {
                    return Err(self.hostile(&rel, "hard link to the layer root"));
                }
                let trel = self.place(&trel)?;
                let tfull = self.dest.join(&trel);
                match self.lookup(&trel)? {
                    Node::Found(_, m) if m.is_dir() => {
                        return Err(self.hostile(&rel, "hard link to a directory"));
                    }
                    Node::Found(None, _) => {}
                    Node::Found(Some(lower), m) => self.copy_up(lower, &trel, &m, &rel)?,
                    Node::Missing => {
                        return Err(self.hostile(
                            &rel,
                            format!(
                                "hard link target {} does not exist in this layer or below",
                                trel.display()
                            ),
                        ));
                    }
                }
                if tfull == full {
                    return Ok(());
                }
                self.clear(&full, false)?;
                // linkat without AT_SYMLINK_FOLLOW: links the entry itself, never a symlink's target.
                fs::hard_link(&tfull, &full).map_err(io_err("link", &full))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, self.dev(&entry, &rel)?),
                    tar::EntryType::Block => (SFlag::S_IFBLK, self.dev(&entry, &rel)?),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.clear(&full, false)?;
                match nix::sys::stat::mknod(&full, sflag, Mode::from_bits_truncate(mode), dev) {
                    Ok(()) => {
                        std::os::unix::fs::lchown(&full, Some(id32(uid)), Some(id32(gid)))
                            .map_err(io_err("lchown", &full))?;
                        fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                            .map_err(io_err("chmod", &full))?;
                        set_mtime(&full, mtime)?;
                    }
                    Err(nix::errno::Errno::EPERM) => {
                        tracing::warn!(layer = %self.layer, entry = %rel.display(), "device node skipped: mknod not permitted");
                        self.stats.skipped_devices += 1;
                    }
                    Err(e) => return Err(io_err("mknod", &full)(e.into())),
                }
            }
            other => {
                tracing::warn!(layer = %self.layer, entry = %rel.display(), kind = ?other, "tar entry type not supported; skipped");
            }
        }
        Ok(())
    }

    fn dev<R: Read>(&self, entry: &tar::Entry<'_, R>, rel: &Path) -> Result<libc::dev_t> {
        let h = entry.header();
        let major = h
            .device_major()
            .ok()
            .flatten()
            .ok_or_else(|| self.hostile(rel, "device without a major number"))?;
        let minor = h
            .device_minor()
            .ok()
            .flatten()
            .ok_or_else(|| self.hostile(rel, "device without a minor number"))?;
        Ok(libc::makedev(major, minor))
    }

    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    out.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        out
    }

    fn set_xattrs(&self, path: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        for (name, value) in xattrs {
            // Overlay's own attributes would let a layer fake whiteouts or redirects.
            if name.starts_with("trusted.overlay.") {
                continue;
            }
            if let Err(e) = xattr::set(path, name, value) {
                tracing::warn!(layer = %self.layer, path = %path.display(), xattr = %name, error = %e, "xattr not set");
            }
        }
        Ok(())
    }

    /// Directory metadata last, deepest first, so adding children does not move mtimes.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
        for d in dirs {
            std::os::unix::fs::lchown(&d.path, Some(id32(d.uid)), Some(id32(d.gid)))
                .map_err(io_err("lchown", &d.path))?;
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(io_err("chmod", &d.path))?;
            set_mtime(&d.path, d.mtime)?;
        }
        Ok(())
    }
}

/// What layer directory `root` holds at `rel` (never following a symlink).
fn layer_lookup(root: &Path, rel: &Path) -> Result<LayerHit> {
    let mut cur = root.to_path_buf();
    let mut opaque = false;
    let n = rel.components().count();
    if n == 0 {
        return Ok(LayerHit::Found(
            fs::symlink_metadata(root).map_err(io_err("lstat", root))?,
        ));
    }
    for (i, c) in rel.components().enumerate() {
        cur.push(c);
        let m = match fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(LayerHit::Absent { opaque });
            }
            Err(e) => return Err(io_err("lstat", &cur)(e)),
        };
        if i + 1 == n {
            return Ok(LayerHit::Found(m));
        }
        if !m.is_dir() {
            return Ok(LayerHit::Hidden);
        }
        if matches!(xattr::get(&cur, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y") {
            opaque = true;
        }
    }
    Ok(LayerHit::Absent { opaque })
}

fn id32(id: u64) -> u32 {
    u32::try_from(id).unwrap_or(65534)
}

fn set_mtime(path: &Path, mtime: u64) -> Result<()> {
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("utimensat", path)(e.into()))
}

/// Whether `path` is an overlay whiteout (0/0 character device).
pub fn is_whiteout(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_entry_path(b"/a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_entry_path(b"./").unwrap(), PathBuf::new());
        assert!(clean_entry_path(b"a/../../b").is_err());
        assert!(clean_entry_path(b"..").is_err());
    }
}
