//! Path resolution inside a container's rootfs that never leaves it.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// Resolves `unsafe_path` as if `root` were `/`: absolute symlinks restart at `root`, and `..`
/// in the requested path stops at `root`. A *relative* symlink whose `..` would climb above
/// `root` is an attempt to point outside and is refused. Missing trailing components are kept
/// as they are (the caller creates them).
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    // Each pending component remembers whether it came from a relative symlink: there a `..`
    // above the root is an escape, not something to clamp.
    let mut pending: Vec<(OsString, bool)> = components(unsafe_path)
        .into_iter()
        .rev()
        .map(|c| (c, false))
        .collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0usize;
    while let Some((comp, in_link)) = pending.pop() {
        if comp == ".." {
            if resolved.pop().is_none() && in_link {
                return Err(Error::Config(format!(
                    "path {} escapes the rootfs through a symlink",
                    unsafe_path.display()
                )));
            }
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(resolved.iter());
        candidate.push(&comp);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::Config(format!(
                        "path {}: too many levels of symbolic links",
                        unsafe_path.display()
                    )));
                }
                let target = fs::read_link(&candidate).map_err(|e| {
                    Error::Config(format!("reading link {}: {e}", candidate.display()))
                })?;
                let relative = !target.is_absolute();
                if !relative {
                    resolved.clear();
                }
                pending.extend(components(&target).into_iter().rev().map(|c| (c, relative)));
            }
            _ => resolved.push(comp),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved.iter());
    Ok(out)
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// True when `p` is `root` or below it, compared byte-wise on clean absolute paths.
pub fn is_within(root: &Path, p: &Path) -> bool {
    let r = root.as_os_str().as_bytes();
    let b = p.as_os_str().as_bytes();
    b.starts_with(r) && (b.len() == r.len() || r.ends_with(b"/") || b[r.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_inside_root() {
        let t = std::env::temp_dir().join(format!("kl-sj-{}", std::process::id()));
        let root = t.join("root");
        fs::create_dir_all(root.join("run")).expect("mkdir");
        fs::create_dir_all(root.join("var")).expect("mkdir");
        symlink("/run", root.join("var/run")).expect("symlink");
        symlink("../../../../..", root.join("up")).expect("symlink");
        symlink("../run", root.join("var/rel")).expect("symlink");
        assert_eq!(
            secure_join(&root, Path::new("/var/run/x")).expect("join"),
            root.join("run/x")
        );
        assert_eq!(
            secure_join(&root, Path::new("/var/rel/y")).expect("join"),
            root.join("run/y")
        );
        assert_eq!(
            secure_join(&root, Path::new("/../../etc")).expect("join"),
            root.join("etc")
        );
        assert!(secure_join(&root, Path::new("/up/etc")).is_err());
        assert!(is_within(&root, &root.join("a")));
        assert!(!is_within(&root, &t.join("rootx")));
        let _ = fs::remove_dir_all(&t);
    }
}
