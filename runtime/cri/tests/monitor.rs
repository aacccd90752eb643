//! The per-container monitor for real: `keelson-monitor create` on a busybox bundle with the
//! engine's state in a temp dir, the engine's `start` called by the test (as keelsond does),
//! then the CRI log, the exit file, log reopening, OOM, terminals, attach and failures.
//!
//! Runs as root. Every test deletes its container (engine delete --force) and kills its monitor
//! when it ends, also on failure (`Guard`), and uses a cgroup scope below this process's own.

use keelson_container::cgroups::Layout;
use keelson_container::container;
use keelson_cri::crilog::{self, Record, Stream, Tag};
use keelson_cri::monitor::attach::{AttachClient, Output};
use keelson_cri::monitor::{self, Error, ExitStatus, MonitorHandle, MonitorOptions};
use keelson_tests::{Bundle, CgroupScope, procs, spec, unique};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const MONITOR: &str = env!("CARGO_BIN_EXE_keelson-monitor");
const WAIT: Duration = Duration::from_secs(30);

/// One container's bundle, cgroup scope and directories (engine root, log, state dir).
struct Case {
    id: String,
    bundle: Bundle,
    scope: CgroupScope,
    tmp: tempfile::TempDir,
}

impl Case {
    fn new(hint: &str, args: &[&str]) -> Case {
        let mut bundle = Bundle::busybox(hint).expect("busybox bundle");
        let scope = CgroupScope::new(hint).expect("cgroup scope");
        bundle.set_args(args);
        bundle.set_cgroups_path(scope.cgroups_path());
        bundle.save().expect("save config");
        let tmp = tempfile::Builder::new()
            .prefix("kmon")
            .tempdir()
            .expect("tempdir");
        Case {
            id: unique::container_id(hint),
            bundle,
            scope,
            tmp,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("m")
    }

    fn log_path(&self) -> PathBuf {
        self.tmp.path().join("c.log")
    }

    fn exit_file(&self) -> PathBuf {
        self.tmp.path().join("m/exit.json")
    }

    fn opts(&self) -> MonitorOptions {
        MonitorOptions {
            binary: Some(PathBuf::from(MONITOR)),
            root: self.root(),
            id: self.id.clone(),
            bundle: self.bundle.path().to_path_buf(),
            log_path: self.log_path(),
            exit_file: self.exit_file(),
            state_dir: self.state_dir(),
            ..Default::default()
        }
    }

    /// A guard for this case's container and monitor, before anything is started.
    fn guard(&self) -> Guard {
        Guard {
            root: self.root(),
            id: self.id.clone(),
            monitor: None,
        }
    }

    /// Starts the monitor (which creates the container) under a guard.
    fn spawn(&self, opts: &MonitorOptions) -> (Guard, MonitorHandle) {
        let mut guard = self.guard();
        let handle = monitor::spawn(opts).unwrap_or_else(|e| panic!("monitor create: {e}"));
        guard.monitor = Some(handle.clone());
        (guard, handle)
    }

    fn start(&self) {
        container::start(&self.root(), &self.id).unwrap_or_else(|e| panic!("start: {e}"));
    }

    fn diag(&self) -> String {
        fs::read_to_string(self.state_dir().join("monitor.log")).unwrap_or_default()
    }

    fn wait_exit(&self, handle: &MonitorHandle) -> ExitStatus {
        match handle.wait(WAIT) {
            Ok(Some(st)) => st,
            Ok(None) => panic!("no exit file after {WAIT:?}; monitor log:\n{}", self.diag()),
            Err(e) => panic!("exit file: {e}; monitor log:\n{}", self.diag()),
        }
    }

    fn records(&self) -> Vec<Record> {
        records_of(&self.log_path())
    }
}

fn records_of(path: &Path) -> Vec<Record> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crilog::parse_log(&data).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{}",
            path.display(),
            String::from_utf8_lossy(&data)
        )
    })
}

fn tagged(records: &[Record]) -> Vec<(Stream, Tag, String)> {
    records
        .iter()
        .map(|r| {
            (
                r.stream,
                r.tag,
                String::from_utf8_lossy(&r.content).into_owned(),
            )
        })
        .collect()
}

/// Force-deletes the container and kills the monitor if they are still there.
struct Guard {
    root: PathBuf,
    id: String,
    monitor: Option<MonitorHandle>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = container::delete(&self.root, &self.id, true);
        if let Some(m) = &self.monitor {
            // Give a monitor whose container just died time to record it, then kill it.
            let end = Instant::now() + Duration::from_secs(5);
            while m.is_running() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = m.kill();
        }
    }
}

/// A child process killed and reaped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_monitor_gone(handle: &MonitorHandle) {
    wait_until("the monitor to exit", || !handle.is_running());
}

fn proc_status_field(pid: i32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    })
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    proc_status_field(pid, "VmRSS")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn output_goes_to_the_cri_log_and_exit_code_to_the_exit_file() {
    let case = Case::new(
        "mon-basic",
        &["sh", "-c", "echo out; echo err >&2; sleep 0.2; exit 3"],
    );
    let t0 = SystemTime::now();
    // The layout as keelsond hands it over (discovered once, passed as JSON).
    let opts = MonitorOptions {
        cgroup_layout: Some(Layout::discover().expect("cgroup layout")),
        ..case.opts()
    };
    let (_guard, handle) = case.spawn(&opts);
    assert_ne!(handle.monitor_pid, std::process::id() as i32);
    // The init is in the bundle's cgroup, resolved with that layout.
    let pid = handle.init_pid.to_string();
    let dirs = case.scope.existing_dirs();
    assert!(!dirs.is_empty());
    for d in &dirs {
        let procs = fs::read_to_string(d.join("cgroup.procs")).expect("cgroup.procs");
        assert!(
            procs.lines().any(|l| l == pid),
            "init {pid} not in {}",
            d.display()
        );
    }
    assert!(handle.is_running());
    // Detached: its own session, not a child of this process.
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(handle.monitor_pid)))
            .expect("sid")
            .as_raw(),
        handle.monitor_pid
    );
    assert_ne!(
        procs::parent(handle.monitor_pid),
        Some(std::process::id() as i32)
    );
    // Created, not started: the monitor leaves `start` to its caller.
    let st = container::state(&case.root(), &case.id).expect("state");
    assert_eq!(st.status, "created");
    assert_eq!(st.pid, handle.init_pid);
    let rss = vm_rss_kib(handle.monitor_pid);
    println!("keelson-monitor VmRSS while the container waits for start: {rss:?} KiB");
    // One thread: no runtime, no helper threads in the loop.
    assert_eq!(
        proc_status_field(handle.monitor_pid, "Threads"),
        Some("1".to_string())
    );
    case.start();
    let exit = case.wait_exit(&handle);
    let t1 = SystemTime::now();
    assert_eq!(exit.exit_code, 3, "{exit:?}");
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert_eq!(exit.pid, handle.init_pid);
    let finished = exit.finished_at_time().expect("finished_at parses");
    assert!(finished >= t0 && finished <= t1, "{exit:?}");
    let records = case.records();
    assert_eq!(
        tagged(&records),
        vec![
            (Stream::Stdout, Tag::Full, "out".to_string()),
            (Stream::Stderr, Tag::Full, "err".to_string()),
        ]
    );
    for r in &records {
        assert!(r.time >= t0 && r.time <= t1, "{r:?}");
    }
    wait_monitor_gone(&handle);
    assert!(!case.state_dir().join(monitor::PID_FILE).exists());
    assert!(!handle.attach_socket().exists());
    container::delete(&case.root(), &case.id, false).expect("delete the stopped container");
}

#[test]
fn long_lines_are_split_like_containerd() {
    let case = Case::new(
        "mon-long",
        &[
            "sh",
            "-c",
            "head -c 40960 /dev/zero | tr '\\0' a; echo; head -c 100 /dev/zero | tr '\\0' b",
        ],
    );
    let (_guard, handle) = case.spawn(&case.opts());
    case.start();
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    let got: Vec<(Stream, Tag, usize, bool)> = case
        .records()
        .iter()
        .map(|r| {
            let uniform = r.content.iter().all(|&b| b == r.content[0]);
            (r.stream, r.tag, r.content.len(), uniform)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Stream::Stdout, Tag::Partial, 16384, true),
            (Stream::Stdout, Tag::Partial, 16384, true),
            (Stream::Stdout, Tag::Full, 40960 - 2 * 16384, true),
            // The last line has no newline: containerd writes it as partial.
            (Stream::Stdout, Tag::Partial, 100, true),
        ]
    );
    let lines = crilog::assemble(&case.records());
    assert_eq!(lines[0].1, vec![b'a'; 40960]);
    assert_eq!(lines[1].1, vec![b'b'; 100]);
}

#[test]
fn monitor_survives_its_caller_being_killed() {
    let case = Case::new(
        "mon-orphan",
        &["sh", "-c", "echo started; sleep 0.3; echo finished"],
    );
    let mut guard = case.guard();
    let out_file = case.tmp.path().join("created.json");
    // A stand-in for keelsond: runs the monitor, then lingers until it is SIGKILLed.
    let caller = Command::new("sh")
        .arg("-c")
        .arg("\"$@\" > \"$OUT.tmp\" && mv \"$OUT.tmp\" \"$OUT\"; exec sleep 600")
        .arg("sh")
        .arg(MONITOR)
        .args(case.opts().args())
        .env("OUT", &out_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn caller");
    let mut caller = KillOnDrop(caller);
    wait_until("the monitor's answer", || out_file.exists());
    let created: monitor::Created =
        serde_json::from_slice(&fs::read(&out_file).expect("answer")).expect("answer JSON");
    let handle = MonitorHandle::load(&case.state_dir(), &case.exit_file())
        .expect("pid file")
        .expect("monitor running");
    guard.monitor = Some(handle.clone());
    assert_eq!(handle.monitor_pid, created.monitor_pid);
    assert_eq!(handle.init_pid, created.init_pid);
    let caller_pid = caller.0.id() as i32;
    caller.0.kill().expect("SIGKILL the caller");
    caller.0.wait().expect("reap the caller");
    std::thread::sleep(Duration::from_millis(100));
    assert!(handle.is_running(), "the monitor died with its caller");
    assert_ne!(procs::parent(handle.monitor_pid), Some(caller_pid));
    case.start();
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert_eq!(exit.pid, created.init_pid);
    assert_eq!(
        tagged(&case.records()),
        vec![
            (Stream::Stdout, Tag::Full, "started".to_string()),
            (Stream::Stdout, Tag::Full, "finished".to_string()),
        ]
    );
}

#[test]
fn reopen_log_follows_a_rotation() {
    let case = Case::new(
        "mon-reopen",
        &[
            "sh",
            "-c",
            "echo one; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo two",
        ],
    );
    let (_guard, handle) = case.spawn(&case.opts());
    case.start();
    let log = case.log_path();
    wait_until("the first line", || {
        fs::read(&log).is_ok_and(|d| d.ends_with(b" F one\n"))
    });
    let rotated = case.tmp.path().join("c.log.1");
    fs::rename(&log, &rotated).expect("rotate");
    monitor::reopen_log(&case.state_dir()).expect("reopen");
    wait_until("the reopened log", || log.exists());
    fs::write(case.bundle.rootfs().join("tmp/go"), "").expect("go");
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert_eq!(
        tagged(&records_of(&rotated)),
        vec![(Stream::Stdout, Tag::Full, "one".to_string())]
    );
    assert_eq!(
        tagged(&case.records()),
        vec![(Stream::Stdout, Tag::Full, "two".to_string())]
    );
    wait_monitor_gone(&handle);
    // Nothing to reopen once the monitor is gone.
    assert!(matches!(
        monitor::reopen_log(&case.state_dir()),
        Err(Error::NotRunning(_))
    ));
    assert!(matches!(handle.reopen_log(), Err(Error::NotRunning(_))));
}

#[test]
fn oom_kill_is_recorded() {
    let mut case = Case::new(
        "mon-oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"],
    );
    spec::object_at(case.bundle.config_mut(), &["linux", "resources"]).insert(
        "memory".into(),
        json!({"limit": 8 * 1024 * 1024, "swap": 8 * 1024 * 1024}),
    );
    case.bundle.save().expect("save");
    let (_guard, handle) = case.spawn(&case.opts());
    assert!(
        case.scope.host_dir("memory").is_some_and(|d| d.is_dir()),
        "the container's memory cgroup is in the test's scope"
    );
    case.start();
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 137, "{exit:?}");
    assert_eq!(exit.signal, Some(9));
    assert!(exit.oom_killed, "{exit:?}");
}

#[test]
fn terminal_output_and_resize() {
    let mut case = Case::new(
        "mon-tty",
        &["sh", "-c", "echo hello; read x; stty size; exit 5"],
    );
    spec::object_at(case.bundle.config_mut(), &["process"]).insert("terminal".into(), json!(true));
    case.bundle.save().expect("save");
    let opts = MonitorOptions {
        tty: true,
        stdin: true,
        ..case.opts()
    };
    let (_guard, handle) = case.spawn(&opts);
    assert!(!case.state_dir().join("console.sock").exists());
    let mut client = AttachClient::connect(&handle.attach_socket()).expect("attach");
    client.set_read_timeout(Some(WAIT)).expect("read timeout");
    case.start();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("hello") {
        match client.read_output().expect("output") {
            Some(Output::Stdout(d)) => seen.extend(d),
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
    }
    client.resize(100, 30).expect("resize");
    client.send_stdin(b"x\n").expect("stdin");
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 5, "{exit:?}");
    let records = case.records();
    assert!(
        records.iter().all(|r| r.stream == Stream::Stdout),
        "{records:?}"
    );
    let lines: Vec<String> = tagged(&records).into_iter().map(|(_, _, s)| s).collect();
    // \r\n from the terminal ends lines like \n; "x" is the terminal's echo.
    assert_eq!(lines, vec!["hello", "x", "30 100"], "{records:?}");
}

#[test]
fn attach_stdin_once_and_output_fan_out() {
    let case = Case::new(
        "mon-attach",
        &[
            "sh",
            "-c",
            "read line; echo \"got $line\"; cat; echo done >&2",
        ],
    );
    let opts = MonitorOptions {
        stdin: true,
        stdin_once: true,
        ..case.opts()
    };
    let (_guard, handle) = case.spawn(&opts);
    let mut client = AttachClient::connect(&handle.attach_socket()).expect("attach");
    client.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut watcher = AttachClient::connect(&handle.attach_socket()).expect("second attach");
    watcher.set_read_timeout(Some(WAIT)).expect("read timeout");
    case.start();
    client.send_stdin(b"hello\n").expect("stdin");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while !out.ends_with(b"got hello\n") {
        match client.read_output().expect("output") {
            Some(Output::Stdout(d)) => out.extend(d),
            other => panic!("unexpected {other:?} after {out:?}"),
        }
    }
    client.send_stdin(b"more\n").expect("stdin");
    // Ending the first attach's stdin closes the container's: cat ends.
    client.close_stdin().expect("close stdin");
    loop {
        match client.read_output().expect("output") {
            Some(Output::Stdout(d)) => out.extend(d),
            Some(Output::Stderr(d)) => err.extend(d),
            None => break,
        }
    }
    assert_eq!(String::from_utf8_lossy(&out), "got hello\nmore\n");
    assert_eq!(String::from_utf8_lossy(&err), "done\n");
    let exit = case.wait_exit(&handle);
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    // The second client saw the same output.
    let (mut out2, mut err2) = (Vec::new(), Vec::new());
    while let Some(o) = watcher.read_output().expect("watcher output") {
        match o {
            Output::Stdout(d) => out2.extend(d),
            Output::Stderr(d) => err2.extend(d),
        }
    }
    assert_eq!((out2, err2), (out, err));
    assert_eq!(
        tagged(&case.records()),
        vec![
            (Stream::Stdout, Tag::Full, "got hello".to_string()),
            (Stream::Stdout, Tag::Full, "more".to_string()),
            (Stream::Stderr, Tag::Full, "done".to_string()),
        ]
    );
}

#[test]
fn deleting_a_created_container_ends_the_monitor() {
    let case = Case::new("mon-delete", &["sh", "-c", "echo never"]);
    let (_guard, handle) = case.spawn(&case.opts());
    container::delete(&case.root(), &case.id, true).expect("delete");
    let exit = case.wait_exit(&handle);
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)), "{exit:?}");
    assert!(!exit.oom_killed);
    wait_monitor_gone(&handle);
    assert!(case.records().is_empty());
}

#[test]
fn create_failure_is_reported_and_leaves_nothing() {
    let case = Case::new("mon-fail", &["/no/such/program"]);
    let mut guard = case.guard();
    let err = match monitor::spawn(&case.opts()) {
        Ok(h) => {
            guard.monitor = Some(h);
            panic!("create of a missing program succeeded");
        }
        Err(e) => e,
    };
    let Error::Create(msg) = &err else {
        panic!("not a create error: {err:?}");
    };
    assert!(msg.contains("/no/such/program"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert!(
        container::state(&case.root(), &case.id).is_err(),
        "the container is left behind"
    );
    assert!(!case.state_dir().join(monitor::PID_FILE).exists());
    assert_eq!(case.scope.existing_dirs(), Vec::<PathBuf>::new());
    // No monitor process stays behind.
    let state_dir = case.state_dir().to_string_lossy().into_owned();
    std::thread::sleep(Duration::from_millis(100));
    for pid in procs::all_pids() {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let alive = procs::state(pid).is_some_and(|s| s != 'Z');
        assert!(
            !(alive && String::from_utf8_lossy(&cmdline).contains(&state_dir)),
            "monitor {pid} still runs"
        );
    }
    // A malformed layout is refused by name before anything is made.
    let out = Command::new(MONITOR)
        .args(case.opts().args())
        .args(["--cgroup-layout", "{\"hierarchies\": 3}"])
        .output()
        .expect("run the monitor");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cgroup-layout") && err.contains("not a cgroup layout"),
        "{err}"
    );
    assert!(!case.state_dir().join(monitor::PID_FILE).exists());
    assert!(container::state(&case.root(), &case.id).is_err());
    // A bad option is refused the same way.
    let missing = MonitorOptions {
        log_path: case.tmp.path().join("no/such/dir/c.log"),
        ..case.opts()
    };
    match monitor::spawn(&missing) {
        Err(Error::Create(msg)) => assert!(msg.contains("no/such/dir"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn the_monitor_binary_is_static_and_not_pie() {
    if let Err(e) = keelson_static_link::check_static_no_pie(Path::new(MONITOR)) {
        panic!("{e} (runtime/cri/build.rs)");
    }
    // And it runs.
    let out = Command::new(MONITOR)
        .arg("--version")
        .output()
        .expect("run keelson-monitor");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("keelson-monitor "));
}

/// The infra process is built the same way (one runs per pod), and it runs: a bad option is
/// refused with its name.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn the_pause_binary_is_static_and_not_pie() {
    let pause = Path::new(env!("CARGO_BIN_EXE_keelson-pause"));
    if let Err(e) = keelson_static_link::check_static_no_pie(pause) {
        panic!("{e} (runtime/cri/build.rs)");
    }
    let out = Command::new(pause)
        .arg("--no-such-option")
        .output()
        .expect("run keelson-pause");
    assert!(!out.status.success(), "{out:?}");
    // Its one line of answer (ready or the error) goes to keelsond on stdout.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unknown argument \"--no-such-option\""),
        "{out:?}"
    );
}
