//! `keelson`: a runc-compatible command line over the engine.

mod cli;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use cli::log::{self, Format};
use keelson_container::container::{self, CreateOptions};
use keelson_container::{events, spec, state::Status};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "keelson",
    version,
    about = "keelson: an OCI container runtime (runc-compatible CLI)"
)]
struct Cli {
    /// Root directory for storage of container state
    #[arg(long, global = true, default_value = "/run/keelson")]
    root: PathBuf,
    /// Log file (default: stderr)
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: Format,
    /// Enable debug logging
    #[arg(long, global = true)]
    debug: bool,
    /// Use the systemd cgroup driver
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a new specification file (config.json)
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        rootless: bool,
    },
    /// Create a container
    Create(CreateArgs),
    /// Run a created container's user process
    Start { id: String },
    /// Create and run a container
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Detach from the container's process
        #[arg(short, long)]
        detach: bool,
        /// Do not delete the container after it exits
        #[arg(long)]
        keep: bool,
    },
    /// Output the state of a container
    State { id: String },
    /// Send a signal to the container's init process
    Kill {
        /// Send the signal to all processes in the container
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and the resources it holds
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Suspend all processes of a container (cgroup freezer)
    Pause { id: String },
    /// Resume all processes of a paused container
    Resume { id: String },
    /// Display container events (OOM notifications and statistics)
    Events {
        /// Display the container's statistics once
        #[arg(long)]
        stats: bool,
        /// Interval between statistics
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Path to the bundle directory
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// File to write the container's init pid to
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master on (terminal containers)
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Do not create a new session keyring
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass this many extra file descriptors to the container
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // Usage errors exit 1 as runc's do; --help and --version exit 0.
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let logger = match log::init(cli.log.as_deref(), cli.log_format, cli.debug) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    let prefix = match &cli.cmd {
        Cmd::Create(_) => "keelson create failed: ",
        Cmd::Run { .. } => "keelson run failed: ",
        _ => "",
    };
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{prefix}{e:#}");
            logger.write(&tracing::Level::ERROR, &msg, &[]);
            if cli.log.is_some() {
                eprintln!("{msg}");
            }
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: &Cli) -> Result<u8> {
    if cli.systemd_cgroup {
        bail!("unimplemented: the systemd cgroup driver (--systemd-cgroup)");
    }
    let root = cli.root.as_path();
    match &cli.cmd {
        Cmd::Spec { bundle, rootless } => cmd_spec(bundle.as_deref(), *rootless),
        Cmd::Create(a) => {
            container::create(root, &create_opts(a)?)?;
            Ok(0)
        }
        Cmd::Start { id } => {
            container::start(root, id)?;
            Ok(0)
        }
        Cmd::Run {
            create,
            detach,
            keep,
        } => cmd_run(root, create, *detach, *keep),
        Cmd::State { id } => {
            let s = container::state(root, id)?;
            print!("{}", serde_json::to_string_pretty(&s)?);
            Ok(0)
        }
        Cmd::Kill { all, id, signal } => {
            let sig = container::parse_signal(signal)?;
            container::kill(root, id, sig, *all)?;
            Ok(0)
        }
        Cmd::Delete { force, id } => match container::delete(root, id, *force) {
            // runc: forcing the delete of a container that does not exist is not an error.
            Err(keelson_container::Error::NotExist) if *force => Ok(0),
            r => r.map(|()| 0).map_err(Into::into),
        },
        Cmd::Pause { id } => {
            container::pause(root, id)?;
            Ok(0)
        }
        Cmd::Resume { id } => {
            container::resume(root, id)?;
            Ok(0)
        }
        Cmd::List { format, quiet } => cmd_list(root, format, *quiet),
        Cmd::Events {
            stats,
            interval,
            id,
        } => cmd_events(root, id, *stats, interval),
    }
}

fn create_opts(a: &CreateArgs) -> Result<CreateOptions> {
    if a.preserve_fds > 0 {
        bail!("unimplemented: --preserve-fds");
    }
    if a.console_socket.is_some() {
        bail!("unimplemented: --console-socket (terminal containers)");
    }
    let _ = a.no_new_keyring;
    Ok(CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        no_pivot: a.no_pivot,
    })
}

fn cmd_spec(bundle: Option<&Path>, rootless: bool) -> Result<u8> {
    if rootless {
        bail!("unimplemented: spec --rootless");
    }
    let dir = bundle.unwrap_or(Path::new("."));
    let path = dir.join("config.json");
    if path.exists() {
        bail!("File config.json exists. Remove it first");
    }
    std::fs::write(&path, spec::render(&spec::default_spec()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}

fn cmd_list(root: &Path, format: &str, quiet: bool) -> Result<u8> {
    let list = container::list(root)?;
    if quiet {
        for s in &list {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match format {
        "json" => println!("{}", serde_json::to_string(&list)?),
        "table" => {
            let mut rows = vec![
                ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                    .map(String::from)
                    .to_vec(),
            ];
            for s in &list {
                rows.push(vec![
                    s.id.clone(),
                    s.pid.to_string(),
                    s.status.clone(),
                    s.bundle.display().to_string(),
                    s.created.clone(),
                    s.owner.clone(),
                ]);
            }
            let ncol = rows[0].len();
            let widths: Vec<usize> = (0..ncol)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0).max(9) + 3)
                .collect();
            for r in rows {
                let mut line = String::new();
                for (c, cell) in r.iter().enumerate() {
                    if c + 1 == ncol {
                        line.push_str(cell);
                    } else {
                        line.push_str(&format!("{cell:<w$}", w = widths[c]));
                    }
                }
                println!("{line}");
            }
        }
        other => bail!("invalid format option {other:?}"),
    }
    Ok(0)
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("invalid duration {s:?}"),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("duration must be greater than 0");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn cmd_events(root: &Path, id: &str, once: bool, interval: &str) -> Result<u8> {
    let interval = parse_duration(interval)?;
    let state = container::load(root, id)?;
    if once {
        println!("{}", events::stats_event(&state));
        return Ok(0);
    }
    let mut seen = events::oom_kills(&state);
    let mut next_stats = Instant::now() + interval;
    loop {
        let stopped = state.status(root) == Status::Stopped;
        let n = events::oom_kills(&state);
        if n > seen {
            println!("{}", events::oom_event(&state));
            seen = n;
        }
        if stopped || container::load(root, id).is_err() {
            return Ok(0);
        }
        if Instant::now() >= next_stats {
            println!("{}", events::stats_event(&state));
            next_stats = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static RUN_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = RUN_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is a positive process id.
        unsafe { libc::kill(pid, sig) };
    }
}

fn cmd_run(root: &Path, a: &CreateArgs, detach: bool, keep: bool) -> Result<u8> {
    let opts = create_opts(a)?;
    if !detach {
        // The init is reparented to us once the intermediate process exits, so we can reap it.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            // SAFETY: installs a handler that only calls async-signal-safe kill().
            unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
        }
    }
    let state = container::create(root, &opts)?;
    if let Err(e) = container::start(root, &opts.id) {
        let _ = container::delete(root, &opts.id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    RUN_PID.store(state.pid, Ordering::SeqCst);
    let code = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(state.pid), None) {
            Ok(st) => {
                if let Some(c) = container::exit_code(st) {
                    break c;
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => bail!("waiting for container init {}: {e}", state.pid),
        }
    };
    RUN_PID.store(0, Ordering::SeqCst);
    if events::oom_kills(&state) > 0 {
        tracing::warn!(id = %state.id, "container was killed by the kernel's OOM killer");
    }
    if !keep {
        container::destroy_stopped(root, &state)?;
    }
    Ok(code.clamp(0, 255) as u8)
}
