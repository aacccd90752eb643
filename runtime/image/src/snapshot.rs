//! Snapshots on overlayfs.
//!
//! - `committed/<chain-id hex>/`: one unpacked layer, read-only from then on, keyed by chain
//!   ID so two images that share a layer stack share the directory. Unpack happens in
//!   `tmp/<hex>` under `locks/<hex>.lock` and is renamed into place after a `syncfs`, so a crash
//!   never leaves a half layer under `committed/`.
//! - `active/<key>/`: a container's writable layer, `upper/` + `work/` and `snapshot.json`
//!   naming its parent chain; mounted as overlay over the committed layers.
//!
//! References are counted from what points at a snapshot (image records, active snapshots)
//! when garbage is collected, not by stored counters that a crash could leave wrong.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, FileLock};

/// How containers' snapshots are made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotterKind {
    /// overlayfs over the committed layers (containerd's `overlayfs`).
    #[default]
    Overlay,
    /// A full copy of the layers, merged, bind-mounted (containerd's `native`): for
    /// filesystems or kernels without overlayfs.
    Native,
}

impl std::str::FromStr for SnapshotterKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "overlay" | "overlayfs" => Ok(Self::Overlay),
            "native" => Ok(Self::Native),
            other => Err(Error::Snapshot {
                key: String::new(),
                reason: format!("unknown snapshotter {other:?} (overlayfs or native)"),
            }),
        }
    }
}

/// The snapshotter's directory.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
    kind: SnapshotterKind,
}

/// A container's writable snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActiveSnapshot {
    pub key: String,
    /// Chain IDs of the layers below, bottom first.
    pub parents: Vec<Digest>,
    /// Where it is mounted, if it is.
    #[serde(default)]
    pub mountpoint: Option<PathBuf>,
    /// How it was made (a store may change snapshotters; each snapshot keeps its own).
    #[serde(default)]
    pub kind: SnapshotterKind,
}

fn valid_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > 200
        || key.starts_with('.')
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Error::Snapshot {
            key: key.to_string(),
            reason: "a key is 1-200 characters of [A-Za-z0-9._-], not starting with '.'".into(),
        });
    }
    Ok(())
}

impl Snapshotter {
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, SnapshotterKind::default())
    }

    /// Opens (creating) the snapshotter; new containers' snapshots are made `kind`'s way.
    pub fn open_with(root: &Path, kind: SnapshotterKind) -> Result<Self> {
        for d in ["committed", "tmp", "locks", "active"] {
            fsutil::mkdir_p(&root.join(d))?;
        }
        // One tree per layer and per container: spread them over the block groups.
        for d in ["committed", "tmp", "active"] {
            fsutil::mark_top_dir_or_log(&root.join(d));
        }
        Ok(Self {
            root: root.to_path_buf(),
            kind,
        })
    }

    /// The directory of a committed layer.
    pub fn committed_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("committed").join(chain.hex())
    }

    pub fn has_committed(&self, chain: &Digest) -> bool {
        self.committed_path(chain).is_dir()
    }

    /// Commits a layer once: runs `unpack` into a fresh temp dir under the chain's lock and
    /// renames it into place. Returns false when it was already committed.
    pub fn commit_with(
        &self,
        chain: &Digest,
        unpack: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<bool> {
        if self.has_committed(chain) {
            return Ok(false);
        }
        let _lock = FileLock::exclusive(
            &self
                .root
                .join("locks")
                .join(format!("{}.lock", chain.hex())),
        )?;
        if self.has_committed(chain) {
            return Ok(false);
        }
        let tmp = self.root.join("tmp").join(chain.hex());
        remove_tree(&tmp)?;
        fs::create_dir(&tmp).map_err(io_err("mkdir", &tmp))?;
        if let Err(e) = unpack(&tmp) {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        let dir = fs::File::open(&tmp).map_err(io_err("open", &tmp))?;
        nix::unistd::syncfs(&dir).map_err(|e| io_err("syncfs", &tmp)(e.into()))?;
        let target = self.committed_path(chain);
        fs::rename(&tmp, &target).map_err(io_err("rename", &target))?;
        fsutil::sync_dir(&self.root.join("committed"))?;
        Ok(true)
    }

    /// Committed chain IDs on disk.
    pub fn list_committed(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("committed");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let e = e.map_err(io_err("read dir", &dir))?;
            if let Some(n) = e.file_name().to_str()
                && let Ok(d) = Digest::parse(&format!("sha256:{n}"))
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Removes a committed layer (the caller made sure nothing refers to it).
    pub fn remove_committed(&self, chain: &Digest) -> Result<()> {
        let _lock = FileLock::exclusive(
            &self
                .root
                .join("locks")
                .join(format!("{}.lock", chain.hex())),
        )?;
        let p = self.committed_path(chain);
        // Rename first so a crash never leaves a half-deleted layer under committed/.
        let trash = self.root.join("tmp").join(format!("rm-{}", chain.hex()));
        match fs::rename(&p, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("rename", &p)(e)),
        }
        remove_tree(&trash)?;
        let _ = fs::remove_file(
            self.root
                .join("locks")
                .join(format!("{}.lock", chain.hex())),
        );
        Ok(())
    }

    /// Removes leftovers of interrupted unpacks, retired snapshots, and the directories of
    /// `active/` without a record (interrupted prepares). Call with the store's exclusive lock
    /// held: a prepare holds the shared one.
    pub fn clean_tmp(&self) -> Result<()> {
        let dir = self.root.join("tmp");
        for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let e = e.map_err(io_err("read dir", &dir))?;
            remove_tree(&e.path())?;
        }
        let active = self.root.join("active");
        for e in fs::read_dir(&active).map_err(io_err("read dir", &active))? {
            let e = e.map_err(io_err("read dir", &active))?;
            let p = e.path();
            let retired = e.file_name().to_string_lossy().starts_with(".rm-");
            if retired || !p.join("snapshot.json").exists() {
                remove_tree(&p)?;
            }
        }
        Ok(())
    }

    fn active_dir(&self, key: &str) -> PathBuf {
        self.root.join("active").join(key)
    }

    /// Creates a writable snapshot over `parents` (chain IDs, bottom first).
    pub fn prepare(&self, key: &str, parents: &[Digest]) -> Result<ActiveSnapshot> {
        valid_key(key)?;
        for p in parents {
            if !self.has_committed(p) {
                return Err(Error::SnapshotNotFound(p.to_string()));
            }
        }
        // Built in place and published by its record: a directory of `active/` without
        // `snapshot.json` is no snapshot (an interrupted prepare, collected by `clean_tmp`).
        // No temporary tree renamed into place: a rename between directories takes the
        // filesystem-wide rename lock, which overlay mounts take too, and with many containers
        // starting they queued behind each other there. Nothing is fsynced: a new writable
        // layer is empty, and the container it is for does not outlive a power loss.
        let dir = self.active_dir(key);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::SnapshotExists(key.to_string()));
            }
            Err(e) => return Err(io_err("mkdir", &dir)(e)),
        }
        let snap = ActiveSnapshot {
            key: key.to_string(),
            parents: parents.to_vec(),
            mountpoint: None,
            kind: self.kind,
        };
        let res = self.fill_active(&dir, &snap);
        if res.is_err() {
            let _ = remove_tree(&dir);
        }
        res.map(|()| snap)
    }

    /// The directories of a new active snapshot, then its record.
    fn fill_active(&self, dir: &Path, snap: &ActiveSnapshot) -> Result<()> {
        match self.kind {
            SnapshotterKind::Overlay => {
                for d in ["upper", "work"] {
                    fs::create_dir(dir.join(d)).map_err(io_err("mkdir", &dir.join(d)))?;
                }
            }
            SnapshotterKind::Native => {
                let fs_dir = dir.join("fs");
                fs::create_dir(&fs_dir).map_err(io_err("mkdir", &fs_dir))?;
                for p in &snap.parents {
                    let mut links = std::collections::HashMap::new();
                    copy_layer(&self.committed_path(p), &fs_dir, &mut links)?;
                }
            }
        }
        let json =
            serde_json::to_vec_pretty(snap).map_err(|e| crate::error::malformed("snapshot", e))?;
        fsutil::replace(&dir.join("snapshot.json"), &json)
    }

    /// What an active snapshot's own layer takes on disk: `upper/` for overlay, the merged
    /// copy `fs/` for the native snapshotter (containerd's snapshotter `Usage`).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let snap = self.get_active(key)?;
        let dir = self.active_dir(key).join(match snap.kind {
            SnapshotterKind::Overlay => "upper",
            SnapshotterKind::Native => "fs",
        });
        disk_usage(&dir)
    }

    /// Reads an active snapshot.
    pub fn get_active(&self, key: &str) -> Result<ActiveSnapshot> {
        valid_key(key)?;
        let p = self.active_dir(key).join("snapshot.json");
        let data = fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::SnapshotNotFound(key.to_string())
            } else {
                io_err("read", &p)(e)
            }
        })?;
        serde_json::from_slice(&data)
            .map_err(|e| crate::error::malformed(p.display().to_string(), e))
    }

    /// All active snapshots.
    pub fn list_active(&self) -> Result<Vec<ActiveSnapshot>> {
        let dir = self.root.join("active");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let e = e.map_err(io_err("read dir", &dir))?;
            if let Some(k) = e.file_name().to_str()
                && let Ok(s) = self.get_active(k)
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The overlay mount options of an active snapshot (empty for a bind mount).
    pub fn mount_options(&self, snap: &ActiveSnapshot) -> String {
        if snap.kind == SnapshotterKind::Native {
            return String::new();
        }
        let dir = self.active_dir(&snap.key);
        let lower: Vec<String> = snap
            .parents
            .iter()
            .rev()
            .map(|c| self.committed_path(c).display().to_string())
            .collect();
        if lower.is_empty() {
            // overlay needs a lower dir: an empty one inside the snapshot.
            return String::new();
        }
        format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        )
    }

    /// Mounts an active snapshot at `target` and records where in its `snapshot.json`, so
    /// that [`Snapshotter::unmount`] and [`Snapshotter::remove`] find the mount by key.
    pub fn mount(&self, key: &str, target: &Path) -> Result<ActiveSnapshot> {
        let mut snap = self.mount_at(key, target)?;
        snap.mountpoint = Some(target.to_path_buf());
        let json =
            serde_json::to_vec_pretty(&snap).map_err(|e| crate::error::malformed("snapshot", e))?;
        // Replaced atomically but not fsynced: a mount does not outlive a power loss either.
        fsutil::replace(&self.active_dir(key).join("snapshot.json"), &json)?;
        Ok(snap)
    }

    /// Mounts an active snapshot at `target` (overlay; a bind of `upper/` when it has no
    /// parents) without recording it: the caller knows the target and unmounts it with
    /// [`Snapshotter::unmount_at`]. keelsond mounts every container's rootfs this way: the
    /// record's rewrite (a new file and a freed one per mount and per unmount) is what it
    /// would save.
    pub fn mount_at(&self, key: &str, target: &Path) -> Result<ActiveSnapshot> {
        let snap = self.get_active(key)?;
        let dir = self.active_dir(key);
        let opts = self.mount_options(&snap);
        let res = if snap.kind == SnapshotterKind::Native {
            nix::mount::mount(
                Some(&dir.join("fs")),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else if opts.is_empty() {
            nix::mount::mount(
                Some(&dir.join("upper")),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else if opts.len() < page_size() {
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
        } else {
            // mount(2) copies at most one page of options: pass each layer on its own with
            // the new mount API (`lowerdir+`, Linux 6.8+).
            let lowers: Vec<PathBuf> = snap
                .parents
                .iter()
                .rev()
                .map(|c| self.committed_path(c))
                .collect();
            mount_overlay_fsconfig(&lowers, &dir.join("upper"), &dir.join("work"), target)
                .map_err(|e| Error::Snapshot {
                    key: key.to_string(),
                    reason: format!(
                        "{} layers: the overlay options ({} bytes) pass one page and the \
                         new mount API failed (lowerdir+ needs Linux 6.8): {e}",
                        lowers.len(),
                        opts.len()
                    ),
                })?;
            Ok(())
        };
        res.map_err(|e| Error::Snapshot {
            key: key.to_string(),
            reason: format!("mount at {}: {e}", target.display()),
        })?;
        Ok(snap)
    }

    /// Unmounts an active snapshot if it is mounted where its record says.
    pub fn unmount(&self, key: &str) -> Result<()> {
        let mut snap = self.get_active(key)?;
        if let Some(m) = snap.mountpoint.take() {
            self.unmount_at(key, &m)?;
            let json = serde_json::to_vec_pretty(&snap)
                .map_err(|e| crate::error::malformed("snapshot", e))?;
            fsutil::replace(&self.active_dir(key).join("snapshot.json"), &json)?;
        }
        Ok(())
    }

    /// Unmounts what [`Snapshotter::mount_at`] mounted at `target`; fine if nothing is
    /// mounted there (any more) or `target` is gone.
    pub fn unmount_at(&self, key: &str, target: &Path) -> Result<()> {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::Snapshot {
                key: key.to_string(),
                reason: format!("unmount {}: {e}", target.display()),
            }),
        }
    }

    /// Unmounts and removes an active snapshot.
    pub fn remove(&self, key: &str) -> Result<()> {
        remove_tree(&self.retire(key)?)
    }

    /// Unmounts an active snapshot and takes it out of `active/` at once: renamed within
    /// `active/` to `.rm-<key>` (a name no key can have), no snapshot from then on. Returns
    /// that directory for the caller to remove ([`remove_tree`]), now or in the background:
    /// deleting a tree can take long (on a filesystem mounted with `discard` every freed
    /// extent is discarded synchronously), and keelsond does it off the RPC, as containerd
    /// leaves snapshot deletion to its garbage collector. What is left of a retired tree
    /// (a crash) [`Snapshotter::retired`] lists and `clean_tmp` removes.
    pub fn retire(&self, key: &str) -> Result<PathBuf> {
        match self.unmount(key) {
            // Left by an interrupted prepare: nothing is mounted by key.
            Err(Error::SnapshotNotFound(_)) if self.active_dir(key).is_dir() => {}
            other => other?,
        }
        let dir = self.active_dir(key);
        let retired = self.root.join("active").join(format!(".rm-{key}"));
        // A key used again after an earlier removal whose tree is still there.
        remove_tree(&retired)?;
        // Same directory: no filesystem-wide rename lock, no data moved or freed.
        fs::rename(&dir, &retired).map_err(io_err("rename", &dir))?;
        Ok(retired)
    }

    /// Retired snapshot trees not removed yet.
    pub fn retired(&self) -> Result<Vec<PathBuf>> {
        let active = self.root.join("active");
        let mut out = Vec::new();
        for e in fs::read_dir(&active).map_err(io_err("read dir", &active))? {
            let e = e.map_err(io_err("read dir", &active))?;
            if e.file_name().to_string_lossy().starts_with(".rm-") {
                out.push(e.path());
            }
        }
        Ok(out)
    }
}

/// What a tree takes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (512-byte blocks), a hard-linked file once.
    pub bytes: u64,
    pub inodes: u64,
}

/// Disk usage of a tree, as `du -sx` counts it: the blocks of each inode and the number of
/// inodes, `root` included. Never follows symlinks nor leaves `root`'s filesystem. Entries
/// removed while the walk runs (a container at work) are skipped.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let top = fs::symlink_metadata(root).map_err(io_err("lstat", root))?;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut count = |m: &fs::Metadata, usage: &mut Usage| {
        if seen.insert(m.ino()) {
            usage.inodes += 1;
            usage.bytes += m.blocks() * 512;
        }
    };
    count(&top, &mut usage);
    if !top.is_dir() {
        return Ok(usage);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io_err("read dir", &d)(e)),
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(io_err("read dir", &d)(err)),
            };
            let m = match fs::symlink_metadata(e.path()) {
                Ok(m) => m,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(io_err("lstat", e.path())(err)),
            };
            if m.dev() != top.dev() {
                continue;
            }
            count(&m, &mut usage);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}

/// Removes a tree, fine if it is missing. Never follows symlinks (`remove_dir_all` does not).
pub fn remove_tree(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_err("remove", p)),
        Ok(_) => fs::remove_file(p).map_err(io_err("remove", p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("lstat", p)(e)),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the running system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

/// An overlay mount made with fsopen/fsconfig/fsmount/move_mount, one `lowerdir+` per layer
/// (top first, as in a `lowerdir=` list), so the number of layers is not bound by the page
/// that mount(2) copies its options into.
fn mount_overlay_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // From <linux/mount.h>.
    const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

    let cstr = |b: &[u8]| CString::new(b).map_err(std::io::Error::other);
    let fd_of = |rc: libc::c_long| -> std::io::Result<OwnedFd> {
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::c_int::try_from(rc).map_err(std::io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let fstype = cstr(b"overlay")?;
    // SAFETY: fsopen with a NUL-terminated name that outlives the call.
    let fs = fd_of(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let set = |key: &str, value: &Path| -> std::io::Result<()> {
        let k = cstr(key.as_bytes())?;
        let v = cstr(value.as_os_str().as_bytes())?;
        // SAFETY: fsconfig on our fs context with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("{key}={}: {e}", value.display()),
            ));
        }
        Ok(())
    };
    for l in lowers {
        set("lowerdir+", l)?;
    }
    set("upperdir", upper)?;
    set("workdir", work)?;
    // SAFETY: fsconfig CMD_CREATE on our context; no pointers are passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fsmount on our configured context; no pointers are passed.
    let mnt =
        fd_of(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    let empty = cstr(b"")?;
    let to = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: move_mount of our detached mount onto `target`; both strings are
    // NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Applies one committed layer (overlay format) onto a merged copy `dst` (the native
/// snapshotter): whiteouts remove what they name, opaque directories drop what was below,
/// everything else replaces what was there; owners, modes, mtimes, xattrs (not
/// `trusted.overlay.*`) and hard links within the layer are kept. Nothing is followed: `dst`'s
/// directories are made here, a symlink in the way is removed, not traversed.
fn copy_layer(
    src: &Path,
    dst: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut dirs = Vec::new();
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((sdir, ddir)) = stack.pop() {
        for e in fs::read_dir(&sdir).map_err(io_err("read dir", &sdir))? {
            let e = e.map_err(io_err("read dir", &sdir))?;
            let s = e.path();
            let d = ddir.join(e.file_name());
            let m = fs::symlink_metadata(&s).map_err(io_err("lstat", &s))?;
            let ft = m.file_type();
            if crate::unpack::is_whiteout(&m) {
                remove_tree(&d)?;
                continue;
            }
            if ft.is_dir() {
                let opaque = matches!(
                    xattr::get(&s, "trusted.overlay.opaque"),
                    Ok(Some(v)) if v == b"y"
                );
                match fs::symlink_metadata(&d) {
                    Ok(dm) if dm.is_dir() && !opaque => {}
                    Ok(_) => {
                        remove_tree(&d)?;
                        fs::create_dir(&d).map_err(io_err("mkdir", &d))?;
                    }
                    Err(_) => fs::create_dir(&d).map_err(io_err("mkdir", &d))?,
                }
                std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))
                    .map_err(io_err("lchown", &d))?;
                fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))
                    .map_err(io_err("chmod", &d))?;
                copy_xattrs(&s, &d);
                dirs.push((d.clone(), m.mtime()));
                stack.push((s, d));
                continue;
            }
            remove_tree(&d)?;
            if m.nlink() > 1
                && let Some(first) = links.get(&(m.dev(), m.ino()))
            {
                fs::hard_link(first, &d).map_err(io_err("link", &d))?;
                continue;
            }
            if ft.is_file() {
                let mut from = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&s)
                    .map_err(io_err("open", &s))?;
                let mut to = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&d)
                    .map_err(io_err("create", &d))?;
                std::io::copy(&mut from, &mut to).map_err(io_err("copy", &d))?;
            } else if ft.is_symlink() {
                let t = fs::read_link(&s).map_err(io_err("readlink", &s))?;
                std::os::unix::fs::symlink(&t, &d).map_err(io_err("symlink", &d))?;
            } else {
                let kind = if ft.is_char_device() {
                    nix::sys::stat::SFlag::S_IFCHR
                } else if ft.is_block_device() {
                    nix::sys::stat::SFlag::S_IFBLK
                } else if ft.is_fifo() {
                    nix::sys::stat::SFlag::S_IFIFO
                } else {
                    continue;
                };
                let mode = nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777);
                nix::sys::stat::mknod(&d, kind, mode, m.rdev())
                    .map_err(|e| io_err("mknod", &d)(e.into()))?;
            }
            std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()))
                .map_err(io_err("lchown", &d))?;
            if !ft.is_symlink() {
                fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))
                    .map_err(io_err("chmod", &d))?;
            }
            copy_xattrs(&s, &d);
            set_times(&d, m.mtime())?;
            if m.nlink() > 1 {
                links.insert((m.dev(), m.ino()), d);
            }
        }
    }
    // Directory mtimes last, deepest first, after their children were added.
    dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
    for (d, mtime) in dirs {
        set_times(&d, mtime)?;
    }
    Ok(())
}

fn copy_xattrs(src: &Path, dst: &Path) {
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if n.to_string_lossy().starts_with("trusted.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n)
                && let Err(e) = xattr::set(dst, &n, &v)
            {
                tracing::warn!(path = %dst.display(), xattr = ?n, error = %e, "xattr not copied");
            }
        }
    }
}

fn set_times(path: &Path, mtime: i64) -> Result<()> {
    let t = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("utimensat", path)(e.into()))
}
