//! Test cgroups: a uniquely named scope below this process's own cgroup in every hierarchy.
//!
//! Nothing here ever creates or removes a cgroup outside `<own cgroup>/<scope name>` of a
//! hierarchy: the machine's other cgroups are not ours.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::{mountinfo, unique};

/// Which cgroup filesystem a hierarchy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A mounted cgroup hierarchy and this process's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: CgroupVersion,
    /// v1: the controllers bound to the hierarchy (`cpu`, `name=systemd`, ...); v2: empty.
    pub controllers: Vec<String>,
    pub mount_point: PathBuf,
    /// This process's own cgroup directory in this hierarchy.
    pub own_dir: PathBuf,
}

/// The cgroup hierarchies this process can see, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`. Hierarchies that are not mounted (or whose mount does not contain
/// this process's cgroup) are left out.
pub fn hierarchies() -> io::Result<Vec<Hierarchy>> {
    let cgroup_text = fs::read_to_string("/proc/self/cgroup")?;
    let mounts = mountinfo::current()?;
    Ok(parse_hierarchies(&cgroup_text, &mounts))
}

/// [`hierarchies`] from given `/proc/self/cgroup` text and mount table.
pub fn parse_hierarchies(cgroup_text: &str, mounts: &[mountinfo::MountInfo]) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in cgroup_text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let controllers: Vec<String> = controllers
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let version = if controllers.is_empty() {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        let candidates = mounts.iter().filter(|m| match version {
            CgroupVersion::V2 => m.fs_type == "cgroup2",
            CgroupVersion::V1 => {
                m.fs_type == "cgroup" && controllers.iter().all(|c| m.has_super_option(c))
            }
        });
        for mount in candidates {
            let Ok(rel) = Path::new(path).strip_prefix(&mount.root) else {
                continue;
            };
            found.push(Hierarchy {
                version,
                controllers: controllers.clone(),
                mount_point: PathBuf::from(&mount.mount_point),
                own_dir: Path::new(&mount.mount_point).join(rel),
            });
            break;
        }
    }
    found
}

/// A cgroup named `keelson-test-<hint>-<pid>-<n>` below this process's cgroup in each
/// hierarchy. The scope does not create directories itself: the runtime under test does, when
/// a config's `linux.cgroupsPath` is [`CgroupScope::cgroups_path`].
///
/// Drop kills every process left in the scope or its children and removes the directories,
/// deepest first.
#[derive(Debug)]
pub struct CgroupScope {
    name: String,
    hierarchies: Vec<Hierarchy>,
}

impl CgroupScope {
    /// Picks a name that exists in no hierarchy yet.
    pub fn new(hint: &str) -> io::Result<CgroupScope> {
        let hierarchies = hierarchies()?;
        if hierarchies.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup hierarchy is mounted",
            ));
        }
        for _ in 0..100 {
            let name = unique::name("keelson-test", hint);
            if hierarchies.iter().all(|h| !h.own_dir.join(&name).exists()) {
                return Ok(CgroupScope { name, hierarchies });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free cgroup scope name",
        ))
    }

    /// The scope's name, a single path component.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The relative path to put into `linux.cgroupsPath`: runtimes place a relative path below
    /// the calling process's own cgroup in each hierarchy.
    pub fn cgroups_path(&self) -> &str {
        &self.name
    }

    /// The hierarchies this scope lives in.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// Whether the machine runs cgroup v2 only (one cgroup2 hierarchy and no v1 one).
    pub fn is_unified_only(&self) -> bool {
        self.hierarchies
            .iter()
            .all(|h| h.version == CgroupVersion::V2)
    }

    /// The host directory of the scope in the hierarchy of `controller`: a v1 hierarchy that
    /// has the controller (`memory`, `cpu`, `name=systemd`, ...); on a v2-only machine the
    /// unified directory for any controller; `"unified"` or `""` always names the cgroup2
    /// hierarchy if one is mounted.
    pub fn host_dir(&self, controller: &str) -> Option<PathBuf> {
        let v2 = || {
            self.hierarchies
                .iter()
                .find(|h| h.version == CgroupVersion::V2)
        };
        let hierarchy = if controller.is_empty() || controller == "unified" {
            v2()
        } else if let Some(h) = self.hierarchies.iter().find(|h| {
            h.version == CgroupVersion::V1 && h.controllers.iter().any(|c| c == controller)
        }) {
            Some(h)
        } else if self.is_unified_only() {
            v2()
        } else {
            None
        };
        hierarchy.map(|h| h.own_dir.join(&self.name))
    }

    /// Reads `<host_dir(controller)>/<file>`, trimmed.
    pub fn read(&self, controller: &str, file: &str) -> io::Result<String> {
        let dir = self.host_dir(controller).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no hierarchy has controller {controller}"),
            )
        })?;
        let path = dir.join(file);
        fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))
    }

    /// The scope directory in every hierarchy, whether it exists or not.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.own_dir.join(&self.name))
            .collect()
    }

    /// The scope directories that exist now.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        self.dirs().into_iter().filter(|d| d.is_dir()).collect()
    }

    /// Cgroups below the scope directories (not the scope directories themselves).
    pub fn descendants(&self) -> Vec<PathBuf> {
        let mut all = Vec::new();
        for dir in self.existing_dirs() {
            let mut tree = Vec::new();
            collect_tree(&dir, &mut tree);
            all.extend(tree.into_iter().filter(|d| *d != dir));
        }
        all
    }

    /// Every process in the scope or below it, in any hierarchy.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for dir in self.existing_dirs() {
            let mut tree = Vec::new();
            collect_tree(&dir, &mut tree);
            for d in tree {
                pids.extend(read_procs(&d));
            }
        }
        pids.into_iter().collect()
    }

    /// Kills what is left in the scope and removes its directories now.
    pub fn cleanup(&self) -> io::Result<()> {
        let mut errors = Vec::new();
        for hierarchy in &self.hierarchies {
            let scope = hierarchy.own_dir.join(&self.name);
            if let Err(e) = remove_scope(&hierarchy.own_dir, &self.name, &scope) {
                errors.push(format!("{}: {e}", scope.display()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(errors.join("; ")))
        }
    }
}

impl Drop for CgroupScope {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("keelson-tests: cgroup scope cleanup: {e}");
        }
    }
}

/// `dir` and every directory below it, parents before children. Symlinks are not followed.
fn collect_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_tree(&entry.path(), out);
        }
    }
}

fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn remove_scope(own_dir: &Path, name: &str, scope: &Path) -> io::Result<()> {
    let single_component = matches!(
        Path::new(name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    if !single_component || scope != own_dir.join(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing to remove {}: not a direct child of our cgroup",
                scope.display()
            ),
        ));
    }
    if !scope.is_dir() {
        return Ok(());
    }
    let mut tree = Vec::new();
    collect_tree(scope, &mut tree);
    tree.retain(|d| d.starts_with(scope));
    // Thaw top-down first: frozen tasks do not die until thawed.
    for dir in &tree {
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
        let _ = fs::write(dir.join("cgroup.freeze"), "0");
    }
    let mut first_error = None;
    for dir in tree.iter().rev() {
        if let Err(e) = empty_cgroup(dir).and_then(|()| rmdir_retrying(dir)) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn empty_cgroup(dir: &Path) -> io::Result<()> {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = read_procs(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("processes {pids:?} stay in {}", dir.display()),
            ));
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        sleep(Duration::from_millis(10));
    }
}

fn rmdir_retrying(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("rmdir {}: {e}", dir.display()),
                ));
            }
            Err(_) => sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str =
        "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const MOUNTS: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hierarchies_are_matched_by_controller() {
        let hs = parse_hierarchies(CGROUP, &mountinfo::parse(MOUNTS));
        assert_eq!(hs.len(), 5);
        let mem = hs
            .iter()
            .find(|h| h.controllers == ["memory"])
            .expect("memory");
        assert_eq!(
            mem.own_dir,
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        let cpu = hs.iter().find(|h| h.controllers == ["cpu"]).expect("cpu");
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        let v2 = hs
            .iter()
            .find(|h| h.version == CgroupVersion::V2)
            .expect("v2");
        assert_eq!(v2.own_dir, Path::new("/sys/fs/cgroup/unified/"));
    }

    #[test]
    fn scope_paths_stay_below_own_cgroup() {
        let scope = CgroupScope::new("unit").expect("scope");
        assert!(!scope.cgroups_path().contains('/'));
        for h in scope.hierarchies() {
            let dir = h.own_dir.join(scope.name());
            assert!(dir.starts_with(&h.own_dir));
        }
        if let Some(mem) = scope.host_dir("memory") {
            assert!(mem.ends_with(scope.name()));
        }
    }

    #[test]
    fn scope_cleanup_kills_and_removes() {
        let scope = CgroupScope::new("cleanup").expect("scope");
        let Some(dir) = scope.host_dir("pids").or_else(|| scope.host_dir("unified")) else {
            return;
        };
        fs::create_dir_all(dir.join("child")).expect("mkdir scope/child");
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        fs::write(dir.join("child/cgroup.procs"), child.id().to_string()).expect("move sleep");
        assert_eq!(
            scope.pids(),
            vec![i32::try_from(child.id()).expect("pid fits")]
        );
        assert_eq!(scope.descendants(), vec![dir.join("child")]);
        scope.cleanup().expect("cleanup");
        assert!(!dir.exists());
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }
}
