//! Where each runtime puts the container's cgroup, always below this process's own cgroup in
//! every hierarchy.
//!
//! keelson and runc place a relative `linux.cgroupsPath` below the calling process's own
//! cgroup of each hierarchy, so `<scope>/bench` lands inside the [`CgroupScope`]. crun (1.8,
//! cgroupfs manager) puts a relative path at the *root* of every hierarchy instead
//! (`make_cgroup_path` prefixes a `/`), which on a host where this process sits in
//! `memory:/process_api/<hash>` would create cgroups outside its own. crun therefore gets an
//! absolute path: the deepest own cgroup of all hierarchies (the others must be its ancestors)
//! plus `<scope>/bench`. In hierarchies where the own cgroup is shallower, that creates
//! directories outside the scope; the ones that did not exist before are removed again
//! (empty ones only, deepest first) when the [`Placement`] is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::CgroupScope;
use anyhow::{Result, bail};

/// The leaf cgroup of every container: `<scope>/<CGROUP_LEAF>`.
pub const CGROUP_LEAF: &str = "bench";

/// How a runtime interprets a relative `linux.cgroupsPath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relative {
    /// Below the calling process's own cgroup of each hierarchy (runc, keelson).
    ToOwnCgroup,
    /// Below the root of each hierarchy (crun's cgroupfs manager).
    ToRoot,
}

/// The `linux.cgroupsPath` of one runtime and where that puts the containers.
#[derive(Debug)]
pub struct Placement {
    /// What goes into `linux.cgroupsPath`.
    pub cgroups_path: String,
    /// Per hierarchy: its controllers (for messages) and the directory holding the leaf.
    pub parents: Vec<(String, PathBuf)>,
    /// Directories outside the scope the runtime will create; removed on drop, deepest first.
    extra_dirs: Vec<PathBuf>,
}

impl Placement {
    pub fn new(scope: &CgroupScope, relative: Relative) -> Result<Placement> {
        let label = |controllers: &[String]| {
            if controllers.is_empty() {
                "unified".to_string()
            } else {
                controllers.join(",")
            }
        };
        if relative == Relative::ToOwnCgroup {
            return Ok(Placement {
                cgroups_path: format!("{}/{CGROUP_LEAF}", scope.cgroups_path()),
                parents: scope
                    .hierarchies()
                    .iter()
                    .map(|h| (label(&h.controllers), h.own_dir.join(scope.name())))
                    .collect(),
                extra_dirs: Vec::new(),
            });
        }
        // The own cgroup of each hierarchy, relative to its root.
        let owns: Vec<PathBuf> = scope
            .hierarchies()
            .iter()
            .map(|h| {
                h.own_dir
                    .strip_prefix(&h.mount_point)
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            })
            .collect();
        let Some(deepest) = owns.iter().max_by_key(|p| p.components().count()).cloned() else {
            bail!("no cgroup hierarchy");
        };
        if let Some(other) = owns.iter().find(|o| !deepest.starts_with(o)) {
            bail!(
                "a relative cgroupsPath is placed at the root of every hierarchy by this \
                 runtime, and this process's own cgroups /{} and /{} have no common \
                 descendant, so no single absolute path stays below both",
                deepest.display(),
                other.display()
            );
        }
        let mut parents = Vec::new();
        let mut extra_dirs = Vec::new();
        for h in scope.hierarchies() {
            let parent = h.mount_point.join(&deepest).join(scope.name());
            let scope_dir = h.own_dir.join(scope.name());
            let mut dir = parent.as_path();
            while dir.starts_with(&h.own_dir) && dir != h.own_dir {
                if dir != scope_dir && !dir.exists() {
                    extra_dirs.push(dir.to_path_buf());
                }
                match dir.parent() {
                    Some(up) => dir = up,
                    None => break,
                }
            }
            parents.push((label(&h.controllers), parent));
        }
        extra_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let mut cgroups_path = PathBuf::from("/");
        cgroups_path.push(&deepest);
        cgroups_path.push(scope.name());
        cgroups_path.push(CGROUP_LEAF);
        Ok(Placement {
            cgroups_path: cgroups_path.to_string_lossy().into_owned(),
            parents,
            extra_dirs,
        })
    }

    /// The container's leaf cgroup in each hierarchy: (controllers, directory).
    pub fn leaves(&self) -> impl Iterator<Item = (&str, PathBuf)> {
        self.parents
            .iter()
            .map(|(label, dir)| (label.as_str(), dir.join(CGROUP_LEAF)))
    }

    /// Cgroups that exist below the parents (the leaf and anything else), parents first.
    pub fn cgroups_below(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for (_, parent) in &self.parents {
            let mut tree = Vec::new();
            collect_tree(parent, &mut tree);
            found.extend(tree.into_iter().filter(|d| d != parent));
        }
        found
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for dir in &self.extra_dirs {
            let mut tree = Vec::new();
            collect_tree(dir, &mut tree);
            for d in tree.iter().rev() {
                empty_and_remove(d);
            }
        }
    }
}

/// `dir` and every directory below it, parents first; nothing if `dir` does not exist.
fn collect_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    out.push(dir.to_path_buf());
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_tree(&entry.path(), out);
        }
    }
}

/// SIGKILLs what is in the cgroup `dir` and removes it (an empty cgroup directory only).
fn empty_and_remove(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("lifecycle: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => sleep(Duration::from_millis(10)),
        }
    }
}

/// Removes empty leftover cgroups (deepest first); they are all below a placement's parents.
pub fn remove_empty(dirs: &[PathBuf]) {
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}
