//! Bad input is refused with a message naming the problem, and leaves nothing behind: no
//! state under `--root`, no mount, no cgroup, no process, nothing written outside the rootfs.

use std::fs;
use std::path::{Path, PathBuf};

use keelson_tests::probe::probe;
use keelson_tests::{Bundle, CgroupScope, CmdOutput, Runtime, mountinfo, procs, spec, unique};
use serde_json::json;

fn keelson() -> Runtime {
    Runtime::keelson().expect("keelson runtime (build it or set KEELSON_BIN)")
}

/// A bundle whose container would live in the cgroup `<scope>/<id>`.
struct Case {
    rt: Runtime,
    bundle: Bundle,
    scope: CgroupScope,
    id: String,
}

impl Case {
    fn new(hint: &str) -> Case {
        let rt = keelson();
        let scope = CgroupScope::new(hint).expect("cgroup scope");
        let mut bundle = Bundle::busybox(hint).expect("busybox bundle");
        let id = unique::container_id(hint);
        bundle.set_args(&["sleep", "1000"]);
        bundle.set_cgroups_path(&format!("{}/{id}", scope.cgroups_path()));
        bundle.save().expect("save");
        Case {
            rt,
            bundle,
            scope,
            id,
        }
    }

    fn create(&self) -> CmdOutput {
        let _guard = self.rt.guard(&self.id);
        self.rt.create(&self.bundle, &self.id).expect("create runs")
    }

    /// Asserts the command failed, mentioning one of `words` (case-insensitively), and that
    /// nothing of the container is left.
    fn assert_refused(&self, out: &CmdOutput, words: &[&str]) {
        assert_ne!(out.code, 0, "accepted: {out}");
        let stderr = out.stderr.to_lowercase();
        assert!(
            words.iter().any(|w| stderr.contains(&w.to_lowercase())),
            "the message names none of {words:?}: {out}"
        );
        self.assert_nothing_left();
    }

    fn assert_nothing_left(&self) {
        assert!(
            !self.rt.root_entries().contains(&self.id),
            "state of {} left under --root: {:?}",
            self.id,
            self.rt.root_entries()
        );
        assert_no_mounts_below(self.bundle.path());
        assert_eq!(
            self.scope.descendants(),
            Vec::<PathBuf>::new(),
            "cgroups left"
        );
        assert_eq!(
            self.scope.pids(),
            Vec::<i32>::new(),
            "processes left in the cgroup"
        );
        assert_eq!(
            procs::processes_in(self.bundle.path()),
            vec![],
            "processes left in the bundle"
        );
    }
}

fn assert_no_mounts_below(dir: &Path) {
    let left = mountinfo::mounts_below(dir).expect("read mountinfo");
    assert!(
        left.is_empty(),
        "mounts left below {}: {left:?}",
        dir.display()
    );
}

#[test]
fn missing_bundle_dir() {
    let case = Case::new("no-bundle");
    let missing = std::env::temp_dir().join(unique::name("keelson-missing", "bundle"));
    let out = case
        .rt
        .cmd([
            "create",
            "--bundle",
            missing.to_str().expect("utf-8"),
            case.id.as_str(),
        ])
        .expect("create runs");
    case.assert_refused(&out, &[missing.to_str().expect("utf-8")]);
    assert!(!missing.exists());
    assert_eq!(case.rt.root_entries(), Vec::<String>::new());
}

#[test]
fn config_that_is_not_json() {
    let case = Case::new("not-json");
    fs::write(case.bundle.config_path(), "{not json").expect("write");
    let out = case.create();
    case.assert_refused(
        &out,
        &[
            "config.json",
            "json",
            "invalid character",
            "parse",
            "expected",
        ],
    );
}

#[test]
fn missing_config_json() {
    let case = Case::new("no-config");
    fs::remove_file(case.bundle.config_path()).expect("remove config.json");
    let out = case.create();
    case.assert_refused(&out, &["config.json"]);
}

#[test]
fn unknown_namespace_type() {
    let mut case = Case::new("bad-ns");
    case.bundle.config_mut()["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "foo"}));
    case.bundle.save().expect("save");
    let out = case.create();
    case.assert_refused(&out, &["foo"]);
}

#[test]
fn root_path_that_does_not_exist() {
    let mut case = Case::new("bad-root");
    case.bundle.config_mut()["root"]["path"] = json!("nonexistent-root");
    case.bundle.save().expect("save");
    let out = case.create();
    case.assert_refused(&out, &["nonexistent-root"]);
}

#[test]
fn relative_cwd() {
    let mut case = Case::new("bad-cwd");
    case.bundle.config_mut()["process"]["cwd"] = json!("tmp");
    case.bundle.save().expect("save");
    let out = case.create();
    case.assert_refused(&out, &["cwd"]);
}

#[test]
fn executable_that_does_not_exist() {
    let mut case = Case::new("bad-exe");
    case.bundle.set_args(&["/nope/missing"]);
    case.bundle.save().expect("save");
    let out = case.create();
    case.assert_refused(&out, &["/nope/missing"]);
}

#[test]
fn invalid_container_id() {
    let case = Case::new("bad-id");
    let name = unique::name("keelson-evil", "id");
    for id in [
        format!("../{name}"),
        format!("a/{name}"),
        String::from(".."),
    ] {
        let _guard = case.rt.guard(&id);
        let out = case
            .rt
            .cmd([
                "create",
                "--bundle",
                case.bundle.path().to_str().expect("utf-8"),
                id.as_str(),
            ])
            .expect("create runs");
        assert_ne!(out.code, 0, "id {id:?} accepted: {out}");
        assert!(out.stderr.to_lowercase().contains("id"), "{out}");
    }
    let parent = case.rt.root_dir().parent().expect("root has a parent");
    assert!(!parent.join(&name).exists(), "state written outside --root");
    assert_eq!(case.rt.root_entries(), Vec::<String>::new());
    case.assert_nothing_left();
}

/// A mount destination that leads out of the rootfs through a symlink (absolute or relative)
/// or `..` must stay inside the rootfs: the outside directory stays empty and nothing is
/// mounted there. The runtime may refuse the config or contain the mount (runc resolves the
/// path inside the rootfs).
#[test]
fn mount_destination_escaping_through_symlinks() {
    let rt = keelson();
    let outside = tempfile::tempdir().expect("outside dir");
    let outside_path = outside.path().to_path_buf();
    let mut b = Bundle::busybox("escape").expect("bundle");
    let rootfs = b.rootfs();
    std::os::unix::fs::symlink(&outside_path, rootfs.join("evil")).expect("absolute symlink");
    let relative = format!("../../../../../../../..{}", outside_path.display());
    std::os::unix::fs::symlink(&relative, rootfs.join("evil2")).expect("relative symlink");
    let dotdot = format!("/../../../../../../..{}/z", outside_path.display());
    for (destination, kind) in [
        ("/evil/x", "tmpfs"),
        ("/evil2/y", "tmpfs"),
        (dotdot.as_str(), "tmpfs"),
    ] {
        b.add_mount(json!({
            "destination": destination,
            "type": kind,
            "source": "tmpfs",
            "options": ["size=1m"]
        }));
    }
    b.add_mount(json!({
        "destination": "/evil/bound",
        "type": "bind",
        "source": rootfs.join("etc"),
        "options": ["rbind", "ro"]
    }));
    let out = probe(
        &rt,
        &mut b,
        "echo inside > /evil/x/marker 2>/dev/null; true",
    )
    .expect("probe runs");
    let entries: Vec<_> = fs::read_dir(&outside_path)
        .expect("read outside dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries.is_empty(),
        "created outside the rootfs: {entries:?}\n{out}"
    );
    assert_no_mounts_below(&outside_path);
    assert_no_mounts_below(b.path());
    assert_eq!(procs::processes_in(b.path()), vec![]);
    // The symlinks themselves are untouched.
    assert_eq!(
        fs::read_link(rootfs.join("evil")).expect("link"),
        outside_path
    );
}

#[test]
fn duplicate_container_id() {
    let case = Case::new("dup");
    let _guard = case.rt.guard(&case.id);
    let first = case.rt.create(&case.bundle, &case.id).expect("create");
    assert!(first.success(), "{first}");
    let state = case.rt.state(&case.id).expect("state");
    let mut other = Bundle::busybox("dup-other").expect("bundle");
    other.set_args(&["sleep", "1000"]);
    spec::linux_mut(other.config_mut()).insert(
        "cgroupsPath".into(),
        json!(format!("{}/{}-other", case.scope.cgroups_path(), case.id)),
    );
    other.save().expect("save");
    let second = case.rt.create(&other, &case.id).expect("create again");
    assert_eq!(second.code, 1, "{second}");
    assert!(
        second.stderr_mentions("container with given ID already exists"),
        "{second}"
    );
    // The first container is untouched.
    let again = case.rt.state(&case.id).expect("state");
    assert_eq!(again, state);
    assert_no_mounts_below(other.path());
    assert_eq!(procs::processes_in(other.path()), vec![]);
    let leftover = case
        .scope
        .host_dir("pids")
        .map(|d| d.join(format!("{}-other", case.id)));
    assert!(
        !leftover.is_some_and(|d| d.exists()),
        "cgroup of the refused container left"
    );
    let started = case.rt.start(&case.id).expect("start");
    assert!(started.success(), "{started}");
    assert_eq!(case.rt.status(&case.id).expect("status"), "running");
}

#[test]
fn unknown_container_id() {
    let rt = keelson();
    for args in [
        vec!["state", "no-such-ctr"],
        vec!["start", "no-such-ctr"],
        vec!["kill", "no-such-ctr", "KILL"],
        vec!["delete", "no-such-ctr"],
    ] {
        let out = rt.cmd(&args).expect("runs");
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stderr_mentions("container does not exist"), "{out}");
    }
    assert_eq!(rt.root_entries(), Vec::<String>::new());
}

/// keelson goes further than runc here: a *relative* symlink whose `..` climbs above the
/// rootfs is an escape attempt, and the config is refused (absolute links are resolved inside
/// the rootfs, as images rely on that, e.g. /var/run -> /run).
#[test]
fn relative_symlink_escape_is_refused() {
    let c = Case::new("relesc");
    let outside = tempfile::tempdir().expect("outside dir");
    let relative = format!("../../../../../../../..{}", outside.path().display());
    let mut bundle = Bundle::busybox("relesc2").expect("bundle");
    std::os::unix::fs::symlink(&relative, bundle.rootfs().join("up")).expect("symlink");
    bundle.set_args(&["true"]);
    bundle.set_cgroups_path(&format!("{}/{}", c.scope.cgroups_path(), c.id));
    bundle.add_mount(json!({
        "destination": "/up/x",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["size=1m"]
    }));
    bundle.save().expect("save");
    let case = Case { bundle, ..c };
    let out = case.create();
    case.assert_refused(&out, &["escapes the rootfs"]);
    let left: Vec<_> = fs::read_dir(outside.path())
        .expect("read outside")
        .flatten()
        .collect();
    assert!(left.is_empty(), "created outside the rootfs: {left:?}");
    assert_no_mounts_below(outside.path());
}
