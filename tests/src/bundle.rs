//! OCI bundles with a static-busybox rootfs.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{mountinfo, spec, unique};

/// Where the static busybox comes from, unless `KEELSON_TEST_BUSYBOX` names another file.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
kt:x:1000:1000:keelson test user:/home/kt:/bin/sh\n";

const GROUP: &str = "root:x:0:\n\
nobody:x:65534:\n\
kt:x:1000:\n\
ktextra:x:1001:kt\n";

/// An OCI bundle directory: `config.json` plus `rootfs/`.
///
/// The config starts as what `runc spec` writes, with `process.terminal = false`. Change it
/// through [`Bundle::config_mut`] and write it with [`Bundle::save`]. Dropping the bundle
/// unmounts whatever is still mounted below it (lazily) and removes the directory.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    config: Value,
}

/// The static busybox to copy: `$KEELSON_TEST_BUSYBOX` or `/bin/busybox`.
pub fn busybox_path() -> PathBuf {
    std::env::var_os("KEELSON_TEST_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
}

/// Whether the ELF file at `path` is statically linked (has no `PT_INTERP` program header).
pub fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut data = Vec::new();
    fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut data)?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(bad("not an ELF file"));
    }
    let is_64 = match data[4] {
        1 => false,
        2 => true,
        _ => return Err(bad("unknown ELF class")),
    };
    let little = match data[5] {
        1 => true,
        2 => false,
        _ => return Err(bad("unknown ELF byte order")),
    };
    let read = |off: usize, len: usize| -> Option<u64> {
        let bytes = data.get(off..off + len)?;
        let mut value = 0u64;
        for i in 0..len {
            let b = if little { bytes[len - 1 - i] } else { bytes[i] };
            value = (value << 8) | u64::from(b);
        }
        Some(value)
    };
    let (phoff, phentsize, phnum) = if is_64 {
        (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    } else {
        (read(0x1c, 4), read(0x2a, 2), read(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err(bad("truncated ELF header"));
    };
    const PT_INTERP: u64 = 3;
    for i in 0..phnum {
        let off = phoff
            .checked_add(i * phentsize)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| bad("program header offset overflows"))?;
        let p_type = read(off, 4).ok_or_else(|| bad("program headers beyond the first 64 KiB"))?;
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The applet names of the busybox at `busybox` (`busybox --list`), without `busybox` itself.
pub fn busybox_applets(busybox: &Path) -> io::Result<Vec<String>> {
    let out = Command::new(busybox).arg("--list").output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} --list failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| {
            !name.is_empty()
                && *name != "busybox"
                && !name.contains('/')
                && *name != "."
                && *name != ".."
        })
        .map(str::to_string)
        .collect())
}

fn create_unique_dir(base: &Path, hint: &str) -> io::Result<PathBuf> {
    for _ in 0..100 {
        let dir = base.join(unique::name("keelson-bundle", hint));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("create {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free bundle name below {}", base.display()),
    ))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn populate_rootfs(rootfs: &Path) -> io::Result<()> {
    let busybox = busybox_path();
    match is_static_elf(&busybox) {
        Ok(true) => {}
        Ok(false) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is dynamically linked; the test rootfs needs a static busybox \
                     (apt-get install busybox-static, or set KEELSON_TEST_BUSYBOX)",
                    busybox.display()
                ),
            ));
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot use {} as the static busybox: {e}",
                    busybox.display()
                ),
            ));
        }
    }
    for (dir, mode) in [
        ("bin", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("etc", 0o755),
        ("root", 0o700),
        ("home", 0o755),
    ] {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path).map_err(|e| with_path(e, "create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(|e| with_path(e, "chmod", &path))?;
    }
    let target = rootfs.join("bin/busybox");
    fs::copy(&busybox, &target).map_err(|e| with_path(e, "copy busybox to", &target))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
    for applet in busybox_applets(&busybox)? {
        let link = rootfs.join("bin").join(&applet);
        symlink("busybox", &link).map_err(|e| with_path(e, "symlink", &link))?;
    }
    let home = rootfs.join("home/kt");
    fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .map_err(|e| with_path(e, "chown", &home))?;
    fs::write(rootfs.join("etc/passwd"), PASSWD)?;
    fs::write(rootfs.join("etc/group"), GROUP)?;
    Ok(())
}

impl Bundle {
    /// A new bundle below `/tmp` (or `$TMPDIR`).
    pub fn busybox(name_hint: &str) -> io::Result<Bundle> {
        Bundle::busybox_in(&std::env::temp_dir(), name_hint)
    }

    /// A new bundle in a fresh directory below `base`.
    ///
    /// The rootfs has `/bin/busybox` (static; refused otherwise) and a symlink per applet in
    /// `/bin`, the directories `proc sys dev tmp etc root home`, and `/etc/passwd` and
    /// `/etc/group` with root (0), nobody (65534) and `kt` (1000, member of `ktextra` 1001).
    pub fn busybox_in(base: &Path, name_hint: &str) -> io::Result<Bundle> {
        let dir = create_unique_dir(base, name_hint)?;
        let bundle = Bundle {
            dir,
            config: spec::busybox_default(),
        };
        // From here on, Drop cleans up whatever was made if a step fails.
        fs::set_permissions(&bundle.dir, fs::Permissions::from_mode(0o755))?;
        let rootfs = bundle.rootfs();
        fs::create_dir(&rootfs).map_err(|e| with_path(e, "create", &rootfs))?;
        fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))?;
        populate_rootfs(&rootfs)?;
        bundle.save()?;
        Ok(bundle)
    }

    /// The bundle directory (absolute).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `<bundle>/rootfs`.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// `<bundle>/config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The config as it will be saved.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The config to change; call [`Bundle::save`] afterwards.
    pub fn config_mut(&mut self) -> &mut Value {
        &mut self.config
    }

    /// Writes the config to `config.json`.
    pub fn save(&self) -> io::Result<()> {
        let text = serde_json::to_string_pretty(&self.config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let path = self.config_path();
        fs::write(&path, text).map_err(|e| with_path(e, "write", &path))
    }

    /// Sets `process.args` (not saved).
    pub fn set_args<S: AsRef<str>>(&mut self, args: &[S]) {
        let args: Vec<Value> = args
            .iter()
            .map(|a| Value::String(a.as_ref().to_string()))
            .collect();
        spec::object_at(&mut self.config, &["process"]).insert("args".into(), Value::Array(args));
    }

    /// Sets `linux.cgroupsPath` (not saved).
    pub fn set_cgroups_path(&mut self, path: &str) {
        spec::linux_mut(&mut self.config).insert("cgroupsPath".into(), Value::String(path.into()));
    }

    /// Appends an entry to `mounts` (not saved).
    pub fn add_mount(&mut self, mount: Value) {
        let config = spec::object_at(&mut self.config, &[]);
        match config.get_mut("mounts") {
            Some(Value::Array(mounts)) => mounts.push(mount),
            _ => {
                config.insert("mounts".into(), Value::Array(vec![mount]));
            }
        }
    }

    /// Removes the bundle now, reporting what could not be removed.
    pub fn remove(mut self) -> io::Result<()> {
        let result = self.cleanup();
        self.dir = PathBuf::new();
        result
    }

    fn cleanup(&mut self) -> io::Result<()> {
        if self.dir.as_os_str().is_empty() || !self.dir.exists() {
            return Ok(());
        }
        for mount_point in mountinfo::mounts_below(&self.dir)? {
            // Best effort: a lazy unmount only fails when nothing is mounted there any more.
            let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = mountinfo::mounts_below(&self.dir)?;
        if !left.is_empty() {
            // Removing files below a mount would delete data that is not ours.
            return Err(io::Error::other(format!(
                "not removing {}: still mounted below it: {left:?}",
                self.dir.display()
            )));
        }
        fs::remove_dir_all(&self.dir).map_err(|e| with_path(e, "remove", &self.dir))
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("keelson-tests: bundle cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_busybox_is_detected() {
        assert!(is_static_elf(Path::new(DEFAULT_BUSYBOX)).expect("reads busybox"));
    }

    #[test]
    fn dynamic_binary_is_detected() {
        assert!(!is_static_elf(Path::new("/bin/ls")).expect("reads ls"));
    }

    #[test]
    fn non_elf_is_an_error() {
        assert!(is_static_elf(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn bundle_layout_and_cleanup() {
        let mut bundle = Bundle::busybox("layout").expect("bundle");
        let dir = bundle.path().to_path_buf();
        let rootfs = bundle.rootfs();
        assert!(rootfs.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(rootfs.join("bin/sh")).expect("sh link"),
            Path::new("busybox")
        );
        for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
            assert!(rootfs.join(d).is_dir(), "{d}");
        }
        let group = fs::read_to_string(rootfs.join("etc/group")).expect("group");
        assert!(group.contains("ktextra:x:1001:kt"));
        bundle.set_args(&["true"]);
        bundle.save().expect("save");
        let saved: Value =
            serde_json::from_str(&fs::read_to_string(bundle.config_path()).expect("read"))
                .expect("json");
        assert_eq!(saved["process"]["args"], serde_json::json!(["true"]));
        assert_eq!(saved["process"]["terminal"], serde_json::json!(false));
        drop(bundle);
        assert!(!dir.exists());
    }
}
