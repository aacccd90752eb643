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
    /// Execute a new process inside a container
    Exec(ExecArgs),
    /// List the processes of a container
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps (default -ef)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Show the enabled features (JSON)
    Features,
    /// Update a container's resource limits
    Update(UpdateArgs),
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
struct ExecArgs {
    /// Unix socket to receive the pty master on
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Working directory in the container
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// Environment variables (KEY=VALUE)
    #[arg(short, long)]
    env: Vec<String>,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    tty: bool,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    /// Additional gids
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json to run instead of the arguments
    #[arg(short, long)]
    process: Option<PathBuf>,
    /// Detach from the process
    #[arg(short, long)]
    detach: bool,
    /// File to write the process's pid to
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// SELinux label of the process
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// AppArmor profile of the process
    #[arg(long)]
    apparmor: Option<String>,
    /// Set no_new_privs
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Add a capability
    #[arg(short, long)]
    cap: Vec<String>,
    /// Pass this many extra file descriptors
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct UpdateArgs {
    /// Resources as JSON (linux.resources shape); "-" reads stdin
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long)]
    memory: Option<i64>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<i64>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<i64>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    id: String,
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
        Cmd::Exec(_) => "exec failed: ",
        _ => "",
    };
    // Like runc, a failed exec exits 255, apart from any code the process itself returns.
    let fail_code = if matches!(cli.cmd, Cmd::Exec(_)) {
        255
    } else {
        1
    };
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{prefix}{e:#}");
            logger.write(&tracing::Level::ERROR, &msg, &[]);
            if cli.log.is_some() {
                eprintln!("{msg}");
            }
            ExitCode::from(fail_code)
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
        Cmd::Exec(a) => cmd_exec(root, a),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => cmd_ps(root, id, format, ps_args),
        Cmd::Features => {
            println!("{}", cli::features::render());
            Ok(0)
        }
        Cmd::Update(a) => cmd_update(root, a),
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
    Ok(CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        no_pivot: a.no_pivot,
        console_socket: a.console_socket.clone(),
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
        layout: None,
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
    let mut opts = create_opts(a)?;
    container::validate_id(&opts.id)?;
    let cfg = keelson_container::config::load(&opts.bundle)?;
    // A terminal in the foreground without a console socket: keelson holds the pty itself.
    let mut console = None;
    if !detach
        && opts.console_socket.is_none()
        && cfg.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true)
    {
        let l = cli::tty::ConsoleListener::new(root, &opts.id)?;
        opts.console_socket = Some(l.path().to_path_buf());
        console = Some(l);
    }
    if !detach {
        // The init is reparented to us once the intermediate process exits, so we can reap it.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        install_forwarding();
    }
    let state = container::create_with_config(root, &opts, cfg)?;
    let master = match &console {
        Some(l) => match l.receive() {
            Ok(m) => Some(m),
            Err(e) => {
                let _ = container::delete(root, &opts.id, true);
                return Err(e);
            }
        },
        None => None,
    };
    if let Err(e) = container::start(root, &opts.id) {
        let _ = container::delete(root, &opts.id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    RUN_PID.store(state.pid, Ordering::SeqCst);
    if let Some(m) = &master {
        cli::tty::proxy(m)?;
    }
    let code = i32::from(wait_exit(state.pid)?);
    RUN_PID.store(0, Ordering::SeqCst);
    if events::oom_kills(&state) > 0 {
        tracing::warn!(id = %state.id, "container was killed by the kernel's OOM killer");
    }
    if !keep {
        container::destroy_stopped(root, &state)?;
    }
    Ok(code.clamp(0, 255) as u8)
}

fn cmd_exec(root: &Path, a: &ExecArgs) -> Result<u8> {
    use keelson_container::exec::{self, ExecOptions};
    use oci_spec::runtime::Process;
    let process: Process = match &a.process {
        Some(p) => {
            let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&data).with_context(|| format!("parsing {}", p.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec: the command to run is missing (give arguments or --process)");
            }
            let spec = exec::container_spec(root, &a.id).map_err(|e| match e {
                keelson_container::Error::Io { .. } => keelson_container::Error::NotExist,
                e => e,
            })?;
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(a.env.iter().cloned());
            p.set_env(Some(env));
            if let Some(cwd) = &a.cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(u) = &a.user {
                let (uid, gid) = match u.split_once(':') {
                    Some((u, g)) => (u.parse::<u32>()?, Some(g.parse::<u32>()?)),
                    None => (
                        u.parse::<u32>()
                            .with_context(|| format!("--user {u:?}: only numeric ids"))?,
                        None,
                    ),
                };
                let mut user = p.user().clone();
                user.set_uid(uid);
                if let Some(g) = gid {
                    user.set_gid(g);
                }
                p.set_user(user);
            }
            if !a.additional_gids.is_empty() {
                let mut user = p.user().clone();
                user.set_additional_gids(Some(a.additional_gids.clone()));
                p.set_user(user);
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if let Some(l) = &a.process_label {
                p.set_selinux_label(Some(l.clone()));
            }
            if let Some(l) = &a.apparmor {
                p.set_apparmor_profile(Some(l.clone()));
            }
            if !a.cap.is_empty() {
                let mut caps = p.capabilities().clone().unwrap_or_default();
                for name in &a.cap {
                    let c: oci_spec::runtime::Capability =
                        serde_json::from_value(serde_json::Value::String(name.clone()))
                            .with_context(|| format!("unknown capability {name:?}"))?;
                    let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                        let mut set = set.clone().unwrap_or_default();
                        set.insert(c);
                        Some(set)
                    };
                    caps.set_bounding(add(caps.bounding()));
                    caps.set_effective(add(caps.effective()));
                    caps.set_permitted(add(caps.permitted()));
                }
                p.set_capabilities(Some(caps));
            }
            p
        }
    };
    if process
        .selinux_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
    {
        bail!("unimplemented: SELinux process labels");
    }
    let opts = ExecOptions {
        id: a.id.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
    };
    let mut console = None;
    let mut opts = opts;
    if !a.detach {
        if process.terminal() == Some(true) && a.console_socket.is_none() {
            let l = cli::tty::ConsoleListener::new(root, &a.id)?;
            opts.console_socket = Some(l.path().to_path_buf());
            console = Some(l);
        }
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        install_forwarding();
    }
    let (_, pid) = exec::exec(root, &opts, &process)?;
    if a.detach {
        return Ok(0);
    }
    RUN_PID.store(pid, Ordering::SeqCst);
    if let Some(l) = &console {
        let master = l.receive()?;
        cli::tty::proxy(&master)?;
    }
    let code = wait_exit(pid)?;
    RUN_PID.store(0, Ordering::SeqCst);
    Ok(code)
}

fn install_forwarding() {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ] {
        // SAFETY: installs a handler that only calls async-signal-safe kill().
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
}

fn wait_exit(pid: i32) -> Result<u8> {
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(st) => {
                if let Some(c) = container::exit_code(st) {
                    return Ok(c.clamp(0, 255) as u8);
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => bail!("waiting for process {pid}: {e}"),
        }
    }
}

fn cmd_ps(root: &Path, id: &str, format: &str, ps_args: &[String]) -> Result<u8> {
    let state = container::load(root, id)?;
    let pids = state.cgroups.pids()?;
    match format {
        "json" => {
            println!("{}", serde_json::to_string(&pids)?);
            Ok(0)
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("running ps")?;
            if !out.status.success() {
                bail!("ps: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let col = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("couldn't find PID field in ps output")?;
            println!("{header}");
            for l in lines {
                let pid: Option<i32> = l.split_whitespace().nth(col).and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{l}");
                }
            }
            Ok(0)
        }
        other => bail!("invalid format option {other:?}"),
    }
}

fn cmd_update(root: &Path, a: &UpdateArgs) -> Result<u8> {
    use oci_spec::runtime::LinuxResources;
    let mut res: LinuxResources = match &a.resources {
        Some(p) => {
            let data = if p.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_slice(&data).context("parsing resources")?
        }
        None => LinuxResources::default(),
    };
    let mut v = serde_json::to_value(&res)?;
    let mut set = |path: &[&str], val: serde_json::Value| {
        let mut cur = &mut v;
        for k in &path[..path.len() - 1] {
            if cur.get(*k).is_none_or(|x| x.is_null()) {
                cur[*k] = serde_json::json!({});
            }
            cur = &mut cur[*k];
        }
        cur[path[path.len() - 1]] = val;
    };
    let to = |x: Option<serde_json::Value>| x;
    let flags: [(&[&str], Option<serde_json::Value>); 12] = [
        (&["blockIO", "weight"], to(a.blkio_weight.map(Into::into))),
        (&["cpu", "period"], to(a.cpu_period.map(Into::into))),
        (&["cpu", "quota"], to(a.cpu_quota.map(Into::into))),
        (&["cpu", "shares"], to(a.cpu_share.map(Into::into))),
        (
            &["cpu", "realtimePeriod"],
            to(a.cpu_rt_period.map(Into::into)),
        ),
        (
            &["cpu", "realtimeRuntime"],
            to(a.cpu_rt_runtime.map(Into::into)),
        ),
        (&["cpu", "cpus"], to(a.cpuset_cpus.clone().map(Into::into))),
        (&["cpu", "mems"], to(a.cpuset_mems.clone().map(Into::into))),
        (&["memory", "limit"], to(a.memory.map(Into::into))),
        (
            &["memory", "reservation"],
            to(a.memory_reservation.map(Into::into)),
        ),
        (&["memory", "swap"], to(a.memory_swap.map(Into::into))),
        (&["pids", "limit"], to(a.pids_limit.map(Into::into))),
    ];
    for (path, value) in flags {
        if let Some(v) = value {
            set(path, v);
        }
    }
    res = serde_json::from_value(v).context("resources")?;
    container::update(root, &a.id, &res)?;
    Ok(0)
}
