//! `lifecycle`: how long and how much CPU and memory one container lifecycle
//! (`create` → `start` → the container's `/bin/true` exits → `delete`) costs with keelson,
//! runc and crun, run in alternation. Prints figures; see `bench/README.md`.

mod report;
mod stats;
#[allow(dead_code)]
mod sys;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use keelson_tests::{Bundle, CgroupScope, Runtime};
use tempfile::TempDir;

use crate::report::Sample;
use crate::sys::{Exit, WaitError, Waited};
use keelson_tests::placement::{self, Placement, Relative};

/// How long to wait for processes still running after `delete` before killing them.
const STRAGGLER_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "lifecycle",
    about = "Container lifecycle cost (create, start, exit, delete) of keelson vs runc and crun"
)]
struct Args {
    /// Measured lifecycles per runtime
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Unmeasured warm-up lifecycles per runtime, run first
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// The keelson binary [default: $KEELSON_BIN, else <workspace>/target/release/keelson]
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// The runc binary
    #[arg(long, default_value = "/usr/sbin/runc")]
    runc: PathBuf,
    /// The crun binary
    #[arg(long, default_value = "/usr/bin/crun")]
    crun: PathBuf,
    /// Give up on one runtime command (or the container's exit) after this many seconds
    #[arg(long, default_value_t = 30)]
    step_timeout: u64,
}

/// One runtime under test with everything its lifecycles use.
///
/// Field order is drop order: containers are force-deleted (`runtime`) before the bundle is
/// removed and before the cgroups are emptied and removed.
struct Subject {
    name: &'static str,
    bin: PathBuf,
    version: String,
    /// `--root` state directory; force-deletes leftover containers on drop.
    runtime: Runtime,
    bundle: Bundle,
    /// Where the container cgroups go; removes directories made outside the scope on drop.
    placement: Placement,
    /// Kept for its drop: kills what is left in the scope and removes it.
    _scope: CgroupScope,
    /// Pid files and the stderr log of `start` and `delete`.
    work: TempDir,
    stderr_log: File,
    samples: Vec<Sample>,
    /// Why the runtime dropped out, if it did.
    failure: Option<String>,
    /// Odd things seen, with how often.
    notes: BTreeMap<String, usize>,
    /// Entries of `--root` already noted as left behind.
    root_seen: BTreeSet<String>,
}

impl Subject {
    fn new(name: &'static str, bin: PathBuf, relative: Relative) -> Result<Subject> {
        let meta = fs::metadata(&bin).with_context(|| format!("{}", bin.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", bin.display());
        }
        let version = sys::version_line(&bin, "--version");
        let runtime = Runtime::with_binary(name, &bin).context("create a --root directory")?;
        let scope = CgroupScope::new(&format!("bench-{name}")).context("pick a cgroup scope")?;
        let mut bundle = Bundle::busybox(&format!("bench-{name}")).context("build the bundle")?;
        bundle.set_args(&["/bin/true"]);
        let placement = Placement::new(&scope, relative).context("place the container cgroups")?;
        bundle.set_cgroups_path(&placement.cgroups_path);
        bundle.save().context("save config.json")?;
        let work = tempfile::Builder::new()
            .prefix(&format!("keelson-bench-{name}-"))
            .tempdir()
            .context("create a work directory")?;
        let log_path = work.path().join("stderr.log");
        let stderr_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        Ok(Subject {
            name,
            bin,
            version,
            runtime,
            bundle,
            placement,
            _scope: scope,
            work,
            stderr_log,
            samples: Vec::new(),
            failure: None,
            notes: BTreeMap::new(),
            root_seen: BTreeSet::new(),
        })
    }

    fn note(&mut self, what: String) {
        *self.notes.entry(what).or_insert(0) += 1;
    }

    fn log_len(&self) -> u64 {
        self.stderr_log.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut file = &self.stderr_log;
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// Runs `<bin> --root <root> <args>` and reaps it. The container inherits the stdio of
    /// `create`, so `create` gets /dev/null for all three; `start` and `delete` write stderr
    /// to a log file, read back when they fail.
    fn step(&self, args: &[OsString], log_stderr: bool, deadline: Instant) -> Result<Exit> {
        let stderr = if log_stderr {
            Stdio::from(self.stderr_log.try_clone().context("dup the stderr log")?)
        } else {
            Stdio::null()
        };
        let child = Command::new(&self.bin)
            .arg("--root")
            .arg(self.runtime.root_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
        // The child is reaped with wait4 below, never through `child`.
        drop(child);
        match sys::wait_exit(pid, deadline) {
            Ok(Waited::Reaped(exit)) => Ok(exit),
            Ok(Waited::NotOurChild) => Err(anyhow!("pid {pid} was not our child")),
            Err(e) => {
                sys::kill_and_reap(pid);
                Err(anyhow!(e))
            }
        }
    }

    /// Why `create` failed: the same create again, with its output captured in files this
    /// time (which the container then inherits; it is deleted right away).
    fn diagnose_create(&self, id: &str) -> String {
        let diag_id = format!("{id}-diag");
        let text = match self.runtime.create(&self.bundle, &diag_id) {
            Ok(out) if out.success() => "a diagnostic re-run of create succeeded".to_string(),
            Ok(out) => {
                let text = out.combined();
                let text = text.trim();
                if text.is_empty() {
                    format!("a diagnostic re-run exited {} without output", out.code)
                } else {
                    text.to_string()
                }
            }
            Err(e) => format!("diagnostic re-run: {e}"),
        };
        let _ = self.runtime.delete_force(&diag_id);
        text
    }

    /// One measured lifecycle with a fresh container id.
    fn lifecycle(&mut self, id: &str, timeout: Duration, verify: bool) -> Result<Sample> {
        let result = self.lifecycle_inner(id, timeout, verify);
        if result.is_err() {
            // Whatever half-made state the failed lifecycle left: delete it, then reap.
            let _ = self.runtime.delete_force(id);
            let _ = fs::remove_file(self.pid_file(id));
            self.reap_after_failure();
        }
        result
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.work.path().join(format!("{id}.pid"))
    }

    fn reap_after_failure(&mut self) {
        let deadline = Instant::now() + STRAGGLER_GRACE;
        loop {
            let reaped = sys::reap_zombies();
            if !reaped.running_left {
                return;
            }
            if Instant::now() > deadline {
                for (pid, _) in sys::running_children() {
                    sys::kill_and_reap(pid);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lifecycle_inner(&mut self, id: &str, timeout: Duration, verify: bool) -> Result<Sample> {
        let pid_file = self.pid_file(id);
        // Start from a clean slate: nothing left to reap that could be counted in this window.
        let before = sys::reap_zombies();
        if before.running_left {
            let left = sys::running_children();
            if !left.is_empty() {
                self.note(format!(
                    "children still running before a lifecycle: {left:?}"
                ));
            }
        }

        let cpu_before = sys::children_cpu_time()?;
        let t0 = Instant::now();
        let mut peak_rss = 0i64;

        // create
        let args: Vec<OsString> = vec![
            "create".into(),
            "--bundle".into(),
            self.bundle.path().into(),
            "--pid-file".into(),
            pid_file.clone().into(),
            id.into(),
        ];
        let exit = self
            .step(&args, false, Instant::now() + timeout)
            .context("create")?;
        let t_create = t0.elapsed();
        peak_rss = peak_rss.max(exit.max_rss_kib);
        if !exit.success() {
            bail!("create {}: {}", exit.describe(), self.diagnose_create(id));
        }
        let pid_text = fs::read_to_string(&pid_file)
            .with_context(|| format!("read the pid file {}", pid_file.display()))?;
        let container_pid: libc::pid_t = pid_text
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("pid file holds {pid_text:?}, not a pid"))?;
        if verify {
            self.verify_created(id, container_pid);
        }

        // start
        let log_at = self.log_len();
        let exit = self
            .step(&["start".into(), id.into()], true, Instant::now() + timeout)
            .context("start")?;
        let t_start = t0.elapsed();
        peak_rss = peak_rss.max(exit.max_rss_kib);
        if !exit.success() {
            bail!("start {}: {}", exit.describe(), self.log_since(log_at));
        }

        // the container's /bin/true exits
        match sys::wait_exit(container_pid, Instant::now() + timeout) {
            Ok(Waited::Reaped(exit)) => {
                peak_rss = peak_rss.max(exit.max_rss_kib);
                if !exit.success() {
                    bail!("the container's /bin/true {}", exit.describe());
                }
            }
            Ok(Waited::NotOurChild) => self.note(
                "the container process was not reparented to the bench (its CPU time and \
                 RSS are not counted)"
                    .into(),
            ),
            Err(WaitError::TimedOut) => bail!(
                "the container (pid {container_pid}) did not exit within {timeout:?} after start"
            ),
            Err(e) => bail!("waiting for the container (pid {container_pid}): {e}"),
        }
        let t_exited = t0.elapsed();

        // delete
        let log_at = self.log_len();
        let exit = self
            .step(
                &["delete".into(), id.into()],
                true,
                Instant::now() + timeout,
            )
            .context("delete")?;
        let wall = t0.elapsed();
        peak_rss = peak_rss.max(exit.max_rss_kib);
        if !exit.success() {
            bail!("delete {}: {}", exit.describe(), self.log_since(log_at));
        }

        // Anything else of this lifecycle that ended up our child is reaped inside the CPU
        // window; what still runs after the grace period is a leftover, killed and noted.
        let grace_end = Instant::now() + STRAGGLER_GRACE;
        loop {
            let reaped = sys::reap_zombies();
            for (_, exit) in &reaped.exits {
                peak_rss = peak_rss.max(exit.max_rss_kib);
            }
            if !reaped.exits.is_empty() {
                self.note(format!(
                    "{} extra process(es) of a lifecycle were orphaned to the bench and reaped \
                     by it",
                    reaped.exits.len()
                ));
            }
            if !reaped.running_left {
                break;
            }
            if Instant::now() > grace_end {
                for (pid, comm) in sys::running_children() {
                    self.note(format!(
                        "process `{comm}` still ran {STRAGGLER_GRACE:?} after delete (killed)"
                    ));
                    sys::kill_and_reap(pid);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let cpu = sys::children_cpu_time()?.saturating_sub(cpu_before);

        let _ = fs::remove_file(&pid_file);
        self.check_leftovers(id);
        Ok(Sample {
            wall,
            cpu,
            peak_rss_kib: peak_rss,
            create: t_create,
            start: t_start - t_create,
            exit_wait: t_exited - t_start,
            delete: wall - t_exited,
        })
    }

    /// First lifecycle only: the container is in its cgroup in every hierarchy.
    fn verify_created(&mut self, id: &str, container_pid: libc::pid_t) {
        let pid = container_pid.to_string();
        let mut missing = Vec::new();
        for (controllers, leaf) in self.placement.leaves() {
            let procs = fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            if !procs.lines().any(|l| l.trim() == pid) {
                missing.push(format!("{controllers} ({})", leaf.display()));
            }
        }
        if !missing.is_empty() {
            self.note(format!(
                "after create of {id}, the container process was not in its cgroup of: {}",
                missing.join(", ")
            ));
        }
    }

    /// After a successful delete: no state left in `--root`, no cgroup left behind.
    fn check_leftovers(&mut self, id: &str) {
        // Only entries not seen after an earlier lifecycle, named with `<id>` for this one.
        let mut entries: Vec<String> = Vec::new();
        for entry in self.runtime.root_entries() {
            if self.root_seen.insert(entry.clone()) {
                entries.push(entry.replace(id, "<id>"));
            }
        }
        if !entries.is_empty() {
            entries.sort();
            self.note(format!(
                "left in --root after delete: {}",
                entries.join(", ")
            ));
        }
        let cgroups = self.placement.cgroups_below();
        if !cgroups.is_empty() {
            let shown: Vec<String> = cgroups
                .iter()
                .map(|d| {
                    d.strip_prefix("/sys/fs/cgroup")
                        .unwrap_or(d)
                        .display()
                        .to_string()
                })
                .collect();
            self.note(format!(
                "cgroup(s) left after delete (removed by the bench): {}",
                shown.join(", ")
            ));
            placement::remove_empty(&cgroups);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lifecycle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root (it creates containers and cgroups)");
    }
    // Still single-threaded here, as unshare(CLONE_NEWNS) requires; nothing spawned yet.
    sys::enter_private_mount_namespace()?;
    let detached = sys::detach_unified_hierarchy()?;
    sys::become_child_subreaper()?;
    sys::install_signal_handlers()?;

    let timeout = Duration::from_secs(args.step_timeout.max(1));
    let candidates: [(&'static str, PathBuf, Relative); 3] = [
        (
            "keelson",
            sys::keelson_binary(args.keelson),
            Relative::ToOwnCgroup,
        ),
        ("runc", args.runc, Relative::ToOwnCgroup),
        ("crun", args.crun, Relative::ToRoot),
    ];
    let mut subjects = Vec::new();
    let mut skipped = Vec::new();
    for (name, bin, relative) in candidates {
        match Subject::new(name, bin.clone(), relative) {
            Ok(s) => subjects.push(s),
            Err(e) => {
                eprintln!("lifecycle: skipping {name} ({}): {e:#}", bin.display());
                skipped.push((name, format!("{e:#}")));
            }
        }
    }

    println!("container lifecycle: create → start → /bin/true exits → delete");
    println!(
        "cgroups: {}",
        if detached {
            format!(
                "v1 only ({} unmounted in the bench's private mount namespace)",
                sys::UNIFIED
            )
        } else {
            "as the host has them (no cgroup2 at /sys/fs/cgroup/unified)".to_string()
        }
    );
    for s in &subjects {
        println!(
            "  {:<8} {}  {}  (cgroupsPath {})",
            s.name,
            s.bin.display(),
            s.version,
            s.placement.cgroups_path
        );
    }
    println!(
        "{} warm-up + {} measured lifecycles per runtime, in alternation",
        args.warmup, args.iterations
    );
    println!();

    let rounds = args.warmup + args.iterations;
    let pid = std::process::id();
    'rounds: for round in 0..rounds {
        for s in subjects.iter_mut() {
            if s.failure.is_some() {
                continue;
            }
            if sys::interrupted() {
                break 'rounds;
            }
            let id = format!("kbench-{}-{pid}-{round}", s.name);
            match s.lifecycle(&id, timeout, round == 0) {
                Ok(sample) => {
                    if round >= args.warmup {
                        s.samples.push(sample);
                    }
                }
                Err(e) => {
                    if sys::interrupted() {
                        break 'rounds;
                    }
                    let why = format!("lifecycle {} failed: {e:#}", round + 1);
                    eprintln!("lifecycle: {}: {why}; no more rounds for it", s.name);
                    s.failure = Some(why);
                }
            }
        }
        if (round + 1) % 10 == 0 || round + 1 == rounds {
            eprintln!("lifecycle: round {}/{rounds} done", round + 1);
        }
    }

    let interrupted = sys::interrupted();
    if interrupted {
        println!("interrupted: the figures below cover the lifecycles completed so far");
        println!();
    }
    report::print(&subjects, &skipped);

    let keelson_ok = subjects
        .iter()
        .any(|s| s.name == "keelson" && !s.samples.is_empty());
    // Clean up (containers, bundles, cgroup scopes) before reporting the exit status.
    drop(subjects);
    sys::reap_zombies();
    Ok(if interrupted {
        ExitCode::from(130)
    } else if keelson_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
