//! `containerd`: the container lifecycle under containerd, `ctr run --rm` of a busybox image
//! with runc and with keelson as the runc binary, run in alternation. Prints wall time and the
//! CPU time of the whole stack (the `ctr` client, the daemon, the shim, the runtime and the
//! container); see `bench/README.md`.

mod stats;
// Shared with `lifecycle`; this bench uses part of it.
#[allow(dead_code)]
mod sys;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use keelson_tests::cgroup::CgroupVersion;
use keelson_tests::containerd::{Containerd, oci_archive};
use keelson_tests::{Bundle, CgroupScope};
use tempfile::TempDir;

use crate::stats::{ms, quantile};
use crate::sys::{WaitError, Waited, children, keelson_binary, version_line};

/// The image every run uses, imported from the busybox fixture.
const IMAGE: &str = "docker.io/library/keelson-bench-busybox:latest";

/// How long the shim may take to exit after `ctr` has, before it counts as a leftover.
const SHIM_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "containerd",
    about = "Container lifecycle under containerd (ctr run --rm) with keelson vs runc as the \
             runc binary"
)]
struct Args {
    /// Measured runs per runtime
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Unmeasured warm-up runs per runtime, run first
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// The keelson binary [default: $KEELSON_BIN, else <workspace>/target/release/keelson]
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// The runc binary
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// The ctr client
    #[arg(long, default_value = "ctr")]
    ctr: PathBuf,
    /// Pause after each run (after its shim has exited) before its CPU window closes, so the
    /// daemon's follow-up work is counted for the run that caused it
    #[arg(long, default_value_t = 50)]
    settle_ms: u64,
    /// Give up on a `ctr run` after this many seconds
    #[arg(long, default_value_t = 60)]
    step_timeout: u64,
}

/// One measured `ctr run --rm`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Spawn of `ctr run` to its exit.
    wall: Duration,
    /// `ctr` + everything in the stack's cgroup (daemon, shims, runtime, container).
    total: Duration,
    /// The `ctr` client process.
    ctr: Duration,
    /// The shim reaped by the bench, with everything it reaped: the runtime's invocations
    /// and the container's processes.
    shim: Duration,
    /// The stack's cgroup minus the shim: the daemon and its `shim start` helper.
    daemon: Duration,
}

/// One runtime under test.
struct Subject {
    name: &'static str,
    bin: PathBuf,
    version: String,
    samples: Vec<Sample>,
    failure: Option<String>,
    /// Odd things seen, with how often.
    notes: BTreeMap<String, usize>,
}

impl Subject {
    fn new(name: &'static str, bin: PathBuf) -> Result<Subject> {
        let meta = fs::metadata(&bin).with_context(|| format!("{}", bin.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", bin.display());
        }
        let bin = fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()))?;
        Ok(Subject {
            name,
            version: version_line(&bin, "--version"),
            bin,
            samples: Vec::new(),
            failure: None,
            notes: BTreeMap::new(),
        })
    }

    fn note(&mut self, what: String) {
        *self.notes.entry(what).or_insert(0) += 1;
    }
}

/// Everything the runs share: the daemon with the image, the cgroup it and all it starts run
/// in, and a directory for `ctr`'s FIFOs and log.
///
/// Drop tears it down in this order: tasks of runs that did not end cleanly are killed and
/// deleted through the daemon, the fixture stops the daemon and removes its directories and
/// the shims' runtime state, the cgroup scope kills whatever is left in it (shims, containers)
/// and removes it, then the shim sockets of unclean runs are removed.
struct Stack {
    ctd: Option<Containerd>,
    scope: Option<CgroupScope>,
    daemon_pid: libc::pid_t,
    /// `cpuacct.usage` of the scope: nanoseconds of CPU of every task that ran in it or below.
    cpuacct_usage: PathBuf,
    /// FIFOs (`ctr run --fifo-dir`), the image archive and `ctr`'s stderr.
    work: TempDir,
    ctr_bin: PathBuf,
    ctr_log: File,
    /// Ids of runs that did not end cleanly.
    dirty: Vec<String>,
    /// Whether `/run/containerd` existed before the daemon started.
    run_dir_existed: bool,
}

impl Stack {
    fn start(ctr_bin: PathBuf) -> Result<Stack> {
        let scope = CgroupScope::new("bench-ctd").context("pick a cgroup scope")?;
        if scope.is_unified_only() {
            bail!(
                "this bench needs a cgroup v1 cpuacct hierarchy to count the daemon's CPU \
                 time; the host has cgroup v2 only"
            );
        }
        let work = tempfile::Builder::new()
            .prefix("keelson-bench-ctd-")
            .tempdir()
            .context("create a work directory")?;
        let log_path = work.path().join("ctr.log");
        let ctr_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        if !children().is_empty() {
            bail!(
                "the bench has children before the daemon starts: {:?}",
                children()
            );
        }
        let run_dir_existed = Path::new("/run/containerd").exists();
        let ctd = Containerd::start().context("start a private containerd")?;
        let mut stack = Stack {
            ctd: Some(ctd),
            scope: Some(scope),
            daemon_pid: 0,
            cpuacct_usage: PathBuf::new(),
            work,
            ctr_bin,
            ctr_log,
            dirty: Vec::new(),
            run_dir_existed,
        };
        let daemons: Vec<_> = children()
            .into_iter()
            .filter(|(_, comm, _)| comm == "containerd")
            .collect();
        let [(pid, _, _)] = daemons.as_slice() else {
            bail!("expected one containerd child, found {daemons:?}");
        };
        stack.daemon_pid = *pid;
        stack.enter_scope()?;
        stack.import_image()?;
        Ok(stack)
    }

    fn ctd(&self) -> Result<&Containerd> {
        self.ctd
            .as_ref()
            .ok_or_else(|| anyhow!("containerd is stopped"))
    }

    fn scope(&self) -> Result<&CgroupScope> {
        self.scope
            .as_ref()
            .ok_or_else(|| anyhow!("the cgroup scope is gone"))
    }

    /// Moves the daemon into the scope in every hierarchy, so its shims, the runtimes they
    /// run and (through a relative `cgroupsPath`) the containers all land in the scope or
    /// below it.
    fn enter_scope(&mut self) -> Result<()> {
        let scope = self.scope()?;
        let mut cpuacct = None;
        for h in scope.hierarchies() {
            let dir = h.own_dir.join(scope.name());
            fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            if h.controllers.iter().any(|c| c == "cpuset") {
                // A new cpuset cgroup starts with no cpus and mems; tasks cannot join it.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = fs::read_to_string(h.own_dir.join(file))
                        .with_context(|| format!("read {}", h.own_dir.join(file).display()))?;
                    fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("write {}", dir.join(file).display()))?;
                }
            }
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, self.daemon_pid.to_string())
                .with_context(|| format!("move containerd into {}", procs.display()))?;
            if h.version == CgroupVersion::V1 && h.controllers.iter().any(|c| c == "cpuacct") {
                cpuacct = Some(dir.join("cpuacct.usage"));
            }
        }
        self.cpuacct_usage =
            cpuacct.ok_or_else(|| anyhow!("no cgroup v1 hierarchy has the cpuacct controller"))?;
        Ok(())
    }

    fn import_image(&self) -> Result<()> {
        let bundle = Bundle::busybox("bench-ctd-image").context("build the busybox rootfs")?;
        let archive = self.work.path().join("image.tar");
        oci_archive(&bundle.rootfs(), IMAGE, &archive).context("write the OCI archive")?;
        drop(bundle);
        let ctd = self.ctd()?;
        let out = ctd
            .ctr(&["images".as_ref(), "import".as_ref(), archive.as_os_str()])
            .context("run ctr images import")?;
        if !out.status.success() {
            bail!(
                "ctr images import: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                ctd.log()
            );
        }
        let _ = fs::remove_file(&archive);
        Ok(())
    }

    /// The scope's cgroup path, as the containers' `cgroupsPath` is relative to it.
    fn scope_name(&self) -> &str {
        self.scope.as_ref().map(|s| s.name()).unwrap_or("?")
    }

    fn cpuacct(&self) -> Result<Duration> {
        let text = fs::read_to_string(&self.cpuacct_usage)
            .with_context(|| format!("read {}", self.cpuacct_usage.display()))?;
        let ns: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}", self.cpuacct_usage.display()))?;
        Ok(Duration::from_nanos(ns))
    }

    fn log_len(&self) -> u64 {
        self.ctr_log.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut file = &self.ctr_log;
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// The daemon's CPU while idle: ms per second, over `span`.
    fn idle_rate(&self, span: Duration) -> Result<f64> {
        let before = self.cpuacct()?;
        std::thread::sleep(span);
        let used = self.cpuacct()?.saturating_sub(before);
        Ok(used.as_secs_f64() * 1000.0 / span.as_secs_f64())
    }

    /// Reaps our children other than the daemon that have exited; returns the command names
    /// of those reaped and of those still running.
    fn reap_stack_children(&self) -> (Vec<String>, Vec<(libc::pid_t, String)>) {
        let mut reaped = Vec::new();
        let mut running = Vec::new();
        for (pid, comm, state) in children() {
            if pid == self.daemon_pid {
                continue;
            }
            if state == "Z" {
                match sys::wait_exit(pid, Instant::now() + Duration::from_secs(1)) {
                    Ok(Waited::Reaped(_)) => reaped.push(comm),
                    _ => running.push((pid, comm)),
                }
            } else {
                running.push((pid, comm));
            }
        }
        (reaped, running)
    }

    /// One measured `ctr run --rm` of `subject`'s runtime with container id `id`.
    fn run(&mut self, subject: &mut Subject, id: &str, args: &Args) -> Result<Sample> {
        // A clean slate: nothing of an earlier run left to reap inside this window.
        let (_, running) = self.reap_stack_children();
        if !running.is_empty() {
            subject.note(format!("children still running before a run: {running:?}"));
        }
        let timeout = Duration::from_secs(args.step_timeout.max(1));
        let fifo_dir = self.work.path().join("fifo");
        let ctd = self.ctd()?;
        let run_args: Vec<OsString> = vec![
            "-a".into(),
            ctd.socket().into(),
            "-n".into(),
            ctd.namespace.clone().into(),
            "run".into(),
            "--rm".into(),
            "--runc-binary".into(),
            subject.bin.clone().into(),
            "--cgroup".into(),
            id.into(),
            "--fifo-dir".into(),
            fifo_dir.into(),
            IMAGE.into(),
            id.into(),
            "/bin/true".into(),
        ];
        let log_at = self.log_len();
        let stderr = Stdio::from(self.ctr_log.try_clone().context("dup the ctr log")?);

        let group_before = self.cpuacct()?;
        let reaped_before = sys::children_cpu_time()?;
        let t0 = Instant::now();
        self.dirty.push(id.to_string());
        let child = Command::new(&self.ctr_bin)
            .args(&run_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn {}", self.ctr_bin.display()))?;
        let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
        // The child is reaped with wait4 below, never through `child`.
        drop(child);
        let exit = match sys::wait_exit(pid, t0 + timeout) {
            Ok(Waited::Reaped(exit)) => exit,
            Ok(Waited::NotOurChild) => bail!("ctr (pid {pid}) was not our child"),
            Err(e) => {
                sys::kill_and_reap(pid);
                match e {
                    WaitError::TimedOut => bail!("ctr run did not end within {timeout:?}"),
                    e => bail!("waiting for ctr run: {e}"),
                }
            }
        };
        let wall = t0.elapsed();
        let reaped_ctr = sys::children_cpu_time()?;
        if !exit.success() {
            bail!("ctr run {}: {}", exit.describe(), self.log_since(log_at));
        }
        self.dirty.retain(|d| d != id);

        // The shim exits once the daemon has deleted the task; it was orphaned to the bench
        // (a child subreaper) when its `shim start` parent exited, so the bench reaps it.
        let grace_end = Instant::now() + SHIM_GRACE;
        let mut shims = 0usize;
        loop {
            let (reaped, running) = self.reap_stack_children();
            for comm in reaped {
                if comm.starts_with("containerd-shim") {
                    shims += 1;
                } else {
                    subject.note(format!(
                        "`{comm}` was orphaned to the bench and reaped by it"
                    ));
                }
            }
            if running.is_empty() {
                break;
            }
            if Instant::now() > grace_end {
                for (pid, comm) in running {
                    subject.note(format!(
                        "`{comm}` still ran {SHIM_GRACE:?} after ctr run exited (killed)"
                    ));
                    sys::kill_and_reap(pid);
                }
                // A killed shim leaves its socket behind: removed at the end.
                self.dirty.push(id.to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if shims != 1 {
            subject.note(format!(
                "{shims} shims reaped by the bench after a run instead of 1 (the shim / daemon \
                 split of the CPU time is off for those runs; the total is not)"
            ));
        }
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let reaped_after = sys::children_cpu_time()?;
        let group_after = self.cpuacct()?;

        let group = group_after.saturating_sub(group_before);
        let ctr = reaped_ctr.saturating_sub(reaped_before);
        let shim = reaped_after.saturating_sub(reaped_ctr);
        self.check_leftovers(subject);
        Ok(Sample {
            wall,
            total: ctr + group,
            ctr,
            shim,
            daemon: group.saturating_sub(shim),
        })
    }

    /// After a clean run: no cgroup left below the scope, nothing but the daemon in it.
    fn check_leftovers(&self, subject: &mut Subject) {
        let Ok(scope) = self.scope() else {
            return;
        };
        let below = scope.descendants();
        if !below.is_empty() {
            let shown: Vec<String> = below
                .iter()
                .map(|d| {
                    d.strip_prefix("/sys/fs/cgroup")
                        .unwrap_or(d)
                        .display()
                        .to_string()
                })
                .collect();
            subject.note(format!(
                "cgroup(s) left below the scope after a run (removed by the bench): {}",
                shown.join(", ")
            ));
            for dir in below.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
        let others: Vec<i32> = scope
            .pids()
            .into_iter()
            .filter(|p| *p != self.daemon_pid)
            .collect();
        if !others.is_empty() {
            subject.note(format!(
                "processes other than the daemon in the scope after a run: {others:?}"
            ));
        }
    }

    /// After a failed run: the container goes, through the daemon while it still answers;
    /// what is left of the run is reaped.
    fn clean_failed(&mut self, id: &str) {
        if let Ok(ctd) = self.ctd() {
            let _ = ctd.ctr(&["task", "kill", "-s", "KILL", id]);
            let _ = ctd.ctr(&["task", "delete", "-f", id]);
            let _ = ctd.ctr(&["containers", "rm", id]);
        }
        let end = Instant::now() + SHIM_GRACE;
        loop {
            let (_, running) = self.reap_stack_children();
            if running.is_empty() {
                return;
            }
            if Instant::now() > end {
                for (pid, _) in running {
                    sys::kill_and_reap(pid);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where the shim of container `id` listens: `/run/containerd/s/<sha256 of
    /// "<containerd socket>/<namespace>/<id>">`, as containerd 1.6 names it.
    fn shim_socket(&self, id: &str) -> Option<PathBuf> {
        let ctd = self.ctd.as_ref()?;
        let key = ctd.socket().join(&ctd.namespace).join(id);
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()?
            .write_all(key.as_os_str().as_encoded_bytes())
            .ok()?;
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.split_whitespace().next()?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Path::new("/run/containerd/s").join(hex))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let sockets: Vec<PathBuf> = dirty.iter().filter_map(|id| self.shim_socket(id)).collect();
        for id in &dirty {
            self.clean_failed(id);
        }
        // Kills the tasks still listed and the daemon, unmounts below its directory, removes
        // the shims' runtime state (`/run/containerd/runc/<namespace>`).
        drop(self.ctd.take());
        // Kills what is left in the scope (shims, containers) and removes it, deepest first.
        drop(self.scope.take());
        // The daemon is reaped now: what is left to reap is ours.
        sys::reap_zombies();
        for socket in sockets {
            let _ = fs::remove_file(socket);
        }
        if !self.run_dir_existed {
            // As the fixture does: only empty directories go, another daemon may use them.
            for d in ["s", "runc", "fifo", ""] {
                let _ = fs::remove_dir(Path::new("/run/containerd").join(d));
            }
        }
    }
}

/// The figures of one runtime, in table order: (label, value in ms).
fn figures(samples: &[Sample]) -> [(&'static str, Option<f64>); 6] {
    let col = |f: fn(&Sample) -> Duration| samples.iter().map(|s| ms(f(s))).collect::<Vec<_>>();
    let wall = col(|s| s.wall);
    [
        ("wall median", quantile(&wall, 0.5)),
        ("wall p90", quantile(&wall, 0.9)),
        ("cpu median", quantile(&col(|s| s.total), 0.5)),
        ("  ctr", quantile(&col(|s| s.ctr), 0.5)),
        ("  shim+rt+ctnr", quantile(&col(|s| s.shim), 0.5)),
        ("  daemon", quantile(&col(|s| s.daemon), 0.5)),
    ]
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

fn print_report(subjects: &[Subject], skipped: &[(&str, String)]) {
    println!(
        "{:<8} {:>4} {:>11} {:>11} {:>10} {:>8} {:>13} {:>8}",
        "runtime", "n", "wall med", "wall p90", "cpu med", "ctr", "shim+rt+ctnr", "daemon"
    );
    for s in subjects {
        let f = figures(&s.samples);
        println!(
            "{:<8} {:>4} {:>11} {:>11} {:>10} {:>8} {:>13} {:>8}",
            s.name,
            s.samples.len(),
            cell(f[0].1),
            cell(f[1].1),
            cell(f[2].1),
            cell(f[3].1),
            cell(f[4].1),
            cell(f[5].1),
        );
    }
    for (name, _) in skipped {
        println!("{name:<8} {:>4}", "-");
    }
    println!("(ms; every column is a median over runs except wall p90, so the parts of the CPU");
    println!(" time need not add up to its median)");

    let keelson = subjects.iter().find(|s| s.name == "keelson");
    let runc = subjects.iter().find(|s| s.name == "runc");
    if let (Some(k), Some(r)) = (keelson, runc) {
        println!();
        println!("keelson / runc (below 1.00x: keelson takes less)");
        let theirs = figures(&r.samples);
        for (i, (label, ours)) in figures(&k.samples).iter().enumerate() {
            let ratio = match (ours, theirs[i].1) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "n/a".to_string(),
            };
            println!("  {label:<16} {ratio:>8}");
        }
    }

    let mut remarks = Vec::new();
    for (name, why) in skipped {
        remarks.push(format!("{name}: not run: {why}"));
    }
    for s in subjects {
        if let Some(why) = &s.failure {
            remarks.push(format!("{}: {why}", s.name));
        }
        for (what, count) in &s.notes {
            remarks.push(format!("{}: {what} (x{count})", s.name));
        }
    }
    println!();
    if remarks.is_empty() {
        println!("no failures; after every run one shim exited and no cgroup or process was left");
    } else {
        println!("remarks:");
        for r in remarks {
            println!("  {r}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("containerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it runs containerd and containers)");
    }
    // Still single-threaded here, as unshare(CLONE_NEWNS) requires; nothing spawned yet. The
    // daemon and its shims inherit the namespace, so their mounts never reach the host's.
    sys::enter_private_mount_namespace()?;
    sys::become_child_subreaper()?;
    sys::install_signal_handlers()?;

    let mut subjects = Vec::new();
    let mut skipped = Vec::new();
    for (name, bin) in [
        ("keelson", keelson_binary(args.keelson.clone())),
        ("runc", args.runc.clone()),
    ] {
        match Subject::new(name, bin.clone()) {
            Ok(s) => subjects.push(s),
            Err(e) => {
                eprintln!("containerd: skipping {name} ({}): {e:#}", bin.display());
                skipped.push((name, format!("{e:#}")));
            }
        }
    }
    if !subjects.iter().any(|s| s.name == "keelson") {
        report_and_bail(&subjects, &skipped)?;
    }

    let mut stack = Stack::start(args.ctr.clone())?;
    println!("containerd lifecycle: ctr run --rm --runc-binary RUNTIME {IMAGE} ID /bin/true");
    println!(
        "  containerd {}",
        version_line(Path::new("containerd"), "--version")
    );
    println!("  ctr        {}", version_line(&args.ctr, "--version"));
    println!(
        "  shim       {}",
        version_line(Path::new("containerd-shim-runc-v2"), "-v")
    );
    for s in &subjects {
        println!("  {:<10} {}  {}", s.name, s.bin.display(), s.version);
    }
    println!(
        "the daemon, its shims and the containers run in cgroup {} (cgroupsPath ID, relative), \
         v1 cpuacct",
        stack.scope_name()
    );
    let idle = stack.idle_rate(Duration::from_secs(1))?;
    println!(
        "idle daemon: {idle:.2} ms CPU per s over 1 s before the runs (part of every run's \
         window: its wall time plus the {} ms settle pause)",
        args.settle_ms
    );
    println!(
        "{} warm-up + {} measured runs per runtime, in alternation (the order flips every round)",
        args.warmup, args.iterations
    );
    println!();

    let rounds = args.warmup + args.iterations;
    let pid = std::process::id();
    'rounds: for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..subjects.len()).collect()
        } else {
            (0..subjects.len()).rev().collect()
        };
        for i in order {
            let Some(s) = subjects.get_mut(i) else {
                continue;
            };
            if s.failure.is_some() {
                continue;
            }
            if sys::interrupted() {
                break 'rounds;
            }
            let id = format!("kbench-{}-{pid}-{round}", s.name);
            match stack.run(s, &id, &args) {
                Ok(sample) => {
                    if round >= args.warmup {
                        s.samples.push(sample);
                    }
                }
                Err(e) => {
                    if sys::interrupted() {
                        break 'rounds;
                    }
                    let why = format!("run {} failed: {e:#}", round + 1);
                    eprintln!("containerd: {}: {why}; no more rounds for it", s.name);
                    s.failure = Some(why);
                    stack.clean_failed(&id);
                }
            }
        }
        if (round + 1) % 10 == 0 || round + 1 == rounds {
            eprintln!("containerd: round {}/{rounds} done", round + 1);
        }
    }

    let interrupted = sys::interrupted();
    if interrupted {
        println!("interrupted: the figures below cover the runs completed so far");
        println!();
    }
    print_report(&subjects, &skipped);
    println!();
    for line in [
        "cpu med counts: the ctr client (its own rusage); everything in the cgroup scope, by",
        "  cpuacct.usage: the daemon (all threads, idle work included) and its `shim start`",
        "  helper, the shim, every runtime invocation the shim made (create, start, delete, ...)",
        "  and the container's processes, the runtime's set-up before exec included.",
        "shim+rt+ctnr: getrusage(CHILDREN) of the shim, which is orphaned to the bench (a child",
        "  subreaper) and reaped by it, and has reaped the runtime and the container itself.",
        "daemon: the scope's cpuacct.usage minus shim+rt+ctnr.",
        "not counted: the bench itself, kernel threads (kworkers tearing down cgroups, namespaces",
        "  and mounts asynchronously), interrupts, work the daemon does after the settle pause.",
    ] {
        println!("{line}");
    }

    let keelson_ok = subjects
        .iter()
        .any(|s| s.name == "keelson" && !s.samples.is_empty());
    drop(stack);
    Ok(if interrupted {
        ExitCode::from(130)
    } else if keelson_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// keelson cannot be measured: say why and stop.
fn report_and_bail(subjects: &[Subject], skipped: &[(&str, String)]) -> Result<()> {
    print_report(subjects, skipped);
    bail!("keelson cannot be measured")
}
