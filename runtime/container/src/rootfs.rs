//! The container's filesystem view: mounts, devices, pivot_root, masked and read-only paths.
//! Runs in the container's init process, inside its new mount namespace.

use crate::cgroups::Cgroups;
use crate::config::Config;
use crate::error::{Context, Error, Result};
use crate::fsutil::{is_within, secure_join};
use crate::mount_opts::{self, MountOptions};
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod, umask};
use nix::unistd::{Gid, Uid, chdir, chown, fchdir, pivot_root};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

type NoStr = Option<&'static str>;
const NONE: NoStr = None;

/// Prepares the rootfs and switches to it. On return the process's `/` is the container's.
pub fn setup(
    cfg: &Config,
    cgroups: &Cgroups,
    no_pivot: bool,
    idmapped: &[(usize, std::os::fd::OwnedFd)],
    before_pivot: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let linux = cfg.spec.linux().as_ref();
    let rootfs = &cfg.rootfs;
    let prop = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .filter(|p| !p.is_empty())
        .and_then(mount_opts::propagation)
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(NONE, "/", NONE, prop, NONE).ctx(|| "setting propagation of /")?;
    if prop.contains(MsFlags::MS_SHARED) {
        make_parent_mount_private(rootfs)?;
    }
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .ctx(|| format!("bind-mounting rootfs {}", rootfs.display()))?;

    let mut dev_bound = false;
    for (i, m) in cfg.spec.mounts().iter().flatten().enumerate() {
        if m.destination() == Path::new("/dev") && is_bind(m) {
            dev_bound = true;
        }
        if let Some((_, tree)) = idmapped.iter().find(|(j, _)| *j == i) {
            mount_idmapped(cfg, m, tree)?;
            continue;
        }
        mount_entry(cfg, cgroups, m)?;
    }
    if !dev_bound {
        create_devices(cfg)?;
    }
    setup_dev_symlinks(rootfs)?;
    if let Some(p) = cfg.spec.process().as_ref() {
        let cwd = secure_join(rootfs, p.cwd())?;
        if !cwd.exists() {
            fs::create_dir_all(&cwd).ctx(|| format!("creating cwd {}", p.cwd().display()))?;
        }
    }
    before_pivot()?;
    if no_pivot {
        move_root(rootfs)
    } else {
        pivot(rootfs)
    }
}

/// After hostname and sysctls are written: read-only and masked paths, then the read-only root.
pub fn finalize(cfg: &Config) -> Result<()> {
    if let Some(l) = cfg.spec.linux().as_ref() {
        for p in l.readonly_paths().iter().flatten() {
            readonly_path(p)?;
        }
        for p in l.masked_paths().iter().flatten() {
            mask_path(p)?;
        }
    }
    if cfg.spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_readonly(Path::new("/"))?;
    }
    Ok(())
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// The mount the rootfs lives on (the rootfs itself when it is a mount point, as runc's
/// `getParentMount` finds it) must not be shared: the rootfs bind mount made on it would be
/// shared too, and pivot_root refuses a shared new root or parent (EINVAL).
fn make_parent_mount_private(rootfs: &Path) -> Result<()> {
    let mp = match mount_point_by_statx(rootfs) {
        Some(mp) => Some(mp),
        None => mount_point_by_mountinfo(rootfs)?,
    };
    if let Some(mp) = mp {
        mount(NONE, &mp, NONE, MsFlags::MS_PRIVATE, NONE)
            .ctx(|| format!("making {} private", mp.display()))?;
    }
    Ok(())
}

/// The deepest mount point at or above `path`: the first of its (canonical) ancestors that
/// statx marks as a mount root. A few statx calls, where mountinfo has every mount of the
/// namespace (several per pod on a node). `None` when the kernel does not report mount roots
/// (before 5.8) or a lookup fails.
fn mount_point_by_statx(path: &Path) -> Option<PathBuf> {
    let canon = fs::canonicalize(path).ok()?;
    for p in canon.ancestors() {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: an all-zero statx is a valid value of this plain C struct.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statx buffer that
        // outlives the call.
        let rc = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                libc::STATX_BASIC_STATS,
                &mut st,
            )
        };
        let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
        if rc != 0 || st.stx_attributes_mask & flag == 0 {
            return None;
        }
        if st.stx_attributes & flag != 0 {
            return Some(p.to_path_buf());
        }
    }
    None
}

/// The same from /proc/self/mountinfo: the longest mount point `path` is within.
fn mount_point_by_mountinfo(path: &Path) -> Result<Option<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading mountinfo")?;
    let mut best: Option<PathBuf> = None;
    for line in info.lines() {
        let Some(mp) = line.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(mp);
        if is_within(&mp, path)
            && best
                .as_ref()
                .is_none_or(|b| mp.as_os_str().len() > b.as_os_str().len())
        {
            best = Some(mp);
        }
    }
    Ok(best)
}

/// Resolves a destination inside the rootfs and creates it as a directory or an empty file.
/// A resolved mount destination: its path, and a descriptor opened with openat2
/// RESOLVE_IN_ROOT that the mount goes through, so swapping a path component for a symlink
/// between the check and the mount (CVE-2021-30465) cannot redirect it.
struct Dest {
    path: PathBuf,
    fd: OwnedFd,
}

impl Dest {
    /// What mount(2) is given: the descriptor's magic link.
    fn target(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

fn prepare_dest(rootfs: &Path, dest: &Path, as_file: bool) -> Result<Dest> {
    let target = secure_join(rootfs, dest)?;
    if !is_within(rootfs, &target) {
        return Err(Error::Config(format!(
            "mount destination {} leaves the rootfs",
            dest.display()
        )));
    }
    if fs::symlink_metadata(&target).is_err() {
        if as_file {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            fs::File::create(&target).ctx(|| format!("creating {}", target.display()))?;
        } else {
            fs::create_dir_all(&target).ctx(|| format!("creating {}", target.display()))?;
        }
    }
    // A path created through links we followed must still resolve inside.
    let real = fs::canonicalize(&target).ctx(|| format!("resolving {}", target.display()))?;
    if !is_within(rootfs, &real) {
        return Err(Error::Config(format!(
            "mount destination {} leaves the rootfs",
            dest.display()
        )));
    }
    let rel = real.strip_prefix(rootfs).unwrap_or(Path::new(""));
    let fd = open_in_root(rootfs, rel)?;
    Ok(Dest { path: real, fd })
}

/// openat2(O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) of `rel` below `rootfs`.
fn open_in_root(rootfs: &Path, rel: &Path) -> Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let root = open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| format!("opening rootfs {}", rootfs.display()))?;
    let rel_c = std::ffi::CString::new(if rel.as_os_str().is_empty() {
        ".".as_bytes().to_vec()
    } else {
        std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).to_vec()
    })
    .map_err(|_| Error::Config(format!("{} contains a NUL byte", rel.display())))?;
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(Error::Io {
            context: format!(
                "opening mount destination {} inside the rootfs",
                rel.display()
            ),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a successful openat2 returns a descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn mount_entry(cfg: &Config, cgroups: &Cgroups, m: &Mount) -> Result<()> {
    let opts = mount_opts::parse(m.options().as_deref().unwrap_or_default())?;
    let typ = m.typ().clone().unwrap_or_default();
    let dest_name = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        let dest = prepare_dest(&cfg.rootfs, dest_name, false)?;
        return mount_cgroups(cfg, cgroups, &dest, &opts);
    }
    if opts.bind || typ == "bind" {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::Config(format!("bind mount {} has no source", dest_name.display()))
        })?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            cfg.bundle.join(src)
        };
        let meta = fs::metadata(&src)
            .map_err(|e| Error::Config(format!("bind mount source {}: {e}", src.display())))?;
        let dest = prepare_dest(&cfg.rootfs, dest_name, !meta.is_dir())?;
        let mut flags = MsFlags::MS_BIND;
        if opts.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&src), &dest.target(), NONE, flags, NONE)
            .ctx(|| format!("bind-mounting {} on {}", src.display(), dest_name.display()))?;
        let extra = opts.flags - MsFlags::MS_REMOUNT;
        if !extra.is_empty() {
            remount_bind(&dest.path, extra)?;
        }
        if opts.recursive_readonly {
            crate::idmap::make_recursively_readonly(&dest.path)?;
        }
        return apply_propagation(&dest.path, &opts);
    }
    let dest = prepare_dest(&cfg.rootfs, dest_name, false)?;
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| typ.clone());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let res = mount(
        Some(source.as_str()),
        &dest.target(),
        Some(typ.as_str()),
        opts.flags,
        data,
    );
    if res.is_ok() && opts.tmpcopyup && typ == "tmpfs" {
        // The descriptor still names the directory the tmpfs now covers: copy from it.
        copy_tree(&dest.target(), &dest.path).map_err(|e| Error::Io {
            context: format!("tmpcopyup into {}", dest_name.display()),
            source: e,
        })?;
    }
    match res {
        Ok(()) => {}
        Err(nix::Error::EPERM) if typ == "sysfs" && !cfg.new_ns(LinuxNamespaceType::Network) => {
            // sysfs of the host's network namespace may not be mounted anew: bind it instead.
            mount(
                Some("/sys"),
                &dest.target(),
                NONE,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                NONE,
            )
            .ctx(|| "bind-mounting /sys")?;
            if opts.flags.contains(MsFlags::MS_RDONLY) {
                remount_bind(&dest.path, opts.flags)?;
            }
        }
        Err(e) => {
            return Err(Error::Sys {
                context: format!("mounting {typ} on {}", dest_name.display()),
                source: e,
            });
        }
    }
    apply_propagation(&dest.path, &opts)
}

/// Puts a detached idmapped clone (made by the runtime) at the mount's destination.
fn mount_idmapped(cfg: &Config, m: &Mount, tree: &std::os::fd::OwnedFd) -> Result<()> {
    let opts = mount_opts::parse(m.options().as_deref().unwrap_or_default())?;
    let src = m.source().clone().unwrap_or_default();
    let src = if src.is_absolute() {
        src
    } else {
        cfg.bundle.join(src)
    };
    let is_dir = fs::metadata(&src).map(|md| md.is_dir()).unwrap_or(true);
    let dest = prepare_dest(&cfg.rootfs, m.destination(), !is_dir)?;
    crate::idmap::move_to(tree, &dest.fd)?;
    let extra = opts.flags - MsFlags::MS_REMOUNT;
    if !extra.is_empty() {
        remount_bind(&dest.path, extra)?;
    }
    apply_propagation(&dest.path, &opts)
}

fn apply_propagation(dest: &Path, opts: &MountOptions) -> Result<()> {
    for p in &opts.propagation {
        mount(NONE, dest, NONE, *p, NONE)
            .ctx(|| format!("setting propagation of {}", dest.display()))?;
    }
    Ok(())
}

/// Remounts a bind mount with extra flags, keeping the flags the kernel locks (nosuid, nodev,
/// noexec, atime) as they are on the source.
fn remount_bind(dest: &Path, flags: MsFlags) -> Result<()> {
    let locked = nix::sys::statvfs::statvfs(dest)
        .map(|s| {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (ff, mf) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(ff) {
                    m |= mf;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    let all = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked;
    mount(NONE, dest, NONE, all, NONE).ctx(|| format!("remounting {}", dest.display()))
}

fn remount_readonly(p: &Path) -> Result<()> {
    remount_bind(p, MsFlags::MS_RDONLY)
}

/// The `cgroup` mount: a tmpfs with one directory per v1 hierarchy holding the container's own
/// cgroup (bind-mounted), or the container's v2 cgroup directly.
fn mount_cgroups(cfg: &Config, cgroups: &Cgroups, d: &Dest, opts: &MountOptions) -> Result<()> {
    // The first mount goes through the descriptor; what follows is below our own new mount.
    let target = d.target();
    let dest = d.path.as_path();
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let base = opts.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    let cgroupns = cfg.new_ns(LinuxNamespaceType::Cgroup);
    if cgroups.unified {
        let dir = cgroups
            .dirs
            .iter()
            .find(|d| d.v2)
            .ok_or_else(|| Error::Init("no cgroup v2 directory".into()))?;
        if cgroupns {
            mount(
                Some("cgroup2"),
                &target,
                Some("cgroup2"),
                base | (opts.flags & MsFlags::MS_RDONLY),
                NONE,
            )
            .ctx(|| "mounting cgroup2")?;
        } else {
            mount(Some(&dir.path), &target, NONE, MsFlags::MS_BIND, NONE)
                .ctx(|| "binding cgroup v2 dir")?;
            if ro || !base.is_empty() {
                remount_bind(dest, base | (opts.flags & MsFlags::MS_RDONLY))?;
            }
        }
        return Ok(());
    }
    mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        base,
        Some("mode=755"),
    )
    .ctx(|| format!("mounting tmpfs for cgroups at {}", dest.display()))?;
    for dir in cgroups.dirs.iter().filter(|d| !d.v2) {
        let name = dir.controllers.join(",");
        let name = name.strip_prefix("name=").unwrap_or(&name).to_string();
        let sub = dest.join(&name);
        fs::create_dir_all(&sub).ctx(|| format!("creating {}", sub.display()))?;
        if cgroupns {
            mount(
                Some("cgroup"),
                &sub,
                Some("cgroup"),
                base,
                Some(dir.controllers.join(",").as_str()),
            )
            .ctx(|| format!("mounting cgroup {name}"))?;
        } else {
            mount(Some(&dir.path), &sub, NONE, MsFlags::MS_BIND, NONE)
                .ctx(|| format!("binding cgroup {name}"))?;
        }
        if ro || !base.is_empty() {
            remount_bind(&sub, base | (opts.flags & MsFlags::MS_RDONLY))?;
        }
    }
    // Like runc, the tmpfs itself stays writable; the hierarchies below it carry `ro`.
    Ok(())
}

struct Dev {
    path: &'static str,
    major: u64,
    minor: u64,
}

const DEFAULT_DEVICES: &[Dev] = &[
    Dev {
        path: "/dev/null",
        major: 1,
        minor: 3,
    },
    Dev {
        path: "/dev/zero",
        major: 1,
        minor: 5,
    },
    Dev {
        path: "/dev/full",
        major: 1,
        minor: 7,
    },
    Dev {
        path: "/dev/random",
        major: 1,
        minor: 8,
    },
    Dev {
        path: "/dev/urandom",
        major: 1,
        minor: 9,
    },
    Dev {
        path: "/dev/tty",
        major: 5,
        minor: 0,
    },
];

fn create_devices(cfg: &Config) -> Result<()> {
    let rootfs = &cfg.rootfs;
    let bind = cfg.new_ns(LinuxNamespaceType::User);
    let old = umask(Mode::empty());
    let res = (|| {
        for d in DEFAULT_DEVICES {
            let configured = cfg
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.devices().as_ref())
                .is_some_and(|v| v.iter().any(|x| x.path() == Path::new(d.path)));
            if configured {
                continue;
            }
            make_device(
                rootfs,
                Path::new(d.path),
                SFlag::S_IFCHR,
                d.major,
                d.minor,
                0o666,
                0,
                0,
                bind,
            )?;
        }
        for d in cfg
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().clone())
            .unwrap_or_default()
        {
            let kind = match d.typ() {
                LinuxDeviceType::B => SFlag::S_IFBLK,
                LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            };
            make_device(
                rootfs,
                d.path(),
                kind,
                d.major() as u64,
                d.minor() as u64,
                d.file_mode().unwrap_or(0o666),
                d.uid().unwrap_or(0),
                d.gid().unwrap_or(0),
                bind,
            )?;
        }
        Ok(())
    })();
    umask(old);
    res
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    rootfs: &Path,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    bind: bool,
) -> Result<()> {
    let target = secure_join(rootfs, path)?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    if bind {
        // mknod is not allowed in a user namespace: bind the host's node instead.
        if fs::symlink_metadata(&target).is_err() {
            fs::File::create(&target).ctx(|| format!("creating {}", target.display()))?;
        }
        return mount(Some(path), &target, NONE, MsFlags::MS_BIND, NONE)
            .ctx(|| format!("binding device {}", path.display()));
    }
    if fs::symlink_metadata(&target).is_ok() {
        fs::remove_file(&target).ctx(|| format!("replacing {}", target.display()))?;
    }
    mknod(
        &target,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        makedev(major, minor),
    )
    .ctx(|| format!("mknod {}", path.display()))?;
    chown(&target, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .ctx(|| format!("chown {}", path.display()))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
        .ctx(|| format!("chmod {}", path.display()))
}

fn setup_dev_symlinks(rootfs: &Path) -> Result<()> {
    let mut links = vec![
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "dev/core"));
    }
    for (target, link) in links {
        let l = rootfs.join(link);
        if fs::symlink_metadata(&l).is_ok() {
            continue;
        }
        if let Err(e) = symlink(target, &l) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::Io {
                    context: format!("symlink {}", l.display()),
                    source: e,
                });
            }
        }
    }
    let ptmx = rootfs.join("dev/ptmx");
    if rootfs.join("dev/pts").is_dir() {
        if fs::symlink_metadata(&ptmx).is_ok() {
            fs::remove_file(&ptmx).ctx(|| "removing /dev/ptmx")?;
        }
        symlink("pts/ptmx", &ptmx).ctx(|| "symlink /dev/ptmx")?;
    }
    Ok(())
}

fn pivot(rootfs: &Path) -> Result<()> {
    let oldroot = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening old root")?;
    let newroot = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "opening new root")?;
    fchdir(&newroot).ctx(|| "entering rootfs")?;
    pivot_root(".", ".").ctx(|| "pivot_root")?;
    // The old root is now stacked under the new one at "/": detach it.
    fchdir(&oldroot).ctx(|| "entering old root")?;
    mount(NONE, ".", NONE, MsFlags::MS_SLAVE | MsFlags::MS_REC, NONE)
        .ctx(|| "making old root slave")?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching old root")?;
    chdir("/").ctx(|| "chdir /")?;
    Ok(())
}

fn move_root(rootfs: &Path) -> Result<()> {
    chdir(rootfs).ctx(|| "entering rootfs")?;
    mount(Some(rootfs), "/", NONE, MsFlags::MS_MOVE, NONE).ctx(|| "moving rootfs to /")?;
    nix::unistd::chroot(".").ctx(|| "chroot")?;
    chdir("/").ctx(|| "chdir /")
}

fn readonly_path(p: &str) -> Result<()> {
    let path = Path::new(p);
    match mount(
        Some(path),
        path,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    ) {
        Ok(()) => remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_REC),
        Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(Error::Sys {
            context: format!("readonly path {p}"),
            source: e,
        }),
    }
}

fn mask_path(p: &str) -> Result<()> {
    let path = Path::new(p);
    match mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE) {
        Ok(()) => Ok(()),
        Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::ENOTDIR) => {
            // A directory: cover it with an empty read-only tmpfs.
            mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, NONE)
                .ctx(|| format!("masking {p}"))
        }
        Err(e) => Err(Error::Sys {
            context: format!("masking {p}"),
            source: e,
        }),
    }
}

/// Copies a directory tree with modes, owners and symlinks (for tmpcopyup).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, lchown};
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
        } else {
            // Device nodes, fifos and sockets are not copied into a tmpfs.
            continue;
        }
        lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of finding the mount a path lives on agree, for mount points, paths below
    /// them and the root (read-only: nothing is mounted).
    #[test]
    fn statx_and_mountinfo_find_the_same_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b");
        fs::create_dir_all(&deep).expect("mkdir");
        let mut checked = 0;
        for p in [
            Path::new("/"),
            Path::new("/proc"),
            Path::new("/proc/sys/kernel"),
            Path::new("/sys/fs/cgroup"),
            Path::new("/dev"),
            deep.as_path(),
        ] {
            let Some(by_statx) = mount_point_by_statx(p) else {
                continue;
            };
            let canon = fs::canonicalize(p).expect("canonicalize");
            let by_table = mount_point_by_mountinfo(&canon).expect("mountinfo");
            assert_eq!(Some(by_statx.clone()), by_table, "{}", p.display());
            assert!(is_within(&by_statx, &canon), "{}", p.display());
            checked += 1;
        }
        assert!(checked > 0, "statx reports no mount roots on this kernel");
        assert_eq!(
            mount_point_by_statx(Path::new("/proc")).as_deref(),
            Some(Path::new("/proc"))
        );
    }
}
