//! `keelson-monitor`: keelsond's per-container monitor (see `keelson_cri::monitor`).
//!
//! `keelson-monitor create --root <engine root> --id <id> --bundle <dir> --log-path <file>
//! --exit-file <file> --state-dir <dir> [--stdin] [--stdin-once] [--tty] [--cgroup-layout <json>]`
//! creates the container and returns once it is created (printing one JSON line: monitor pid,
//! its start time, the init's pid) or fails with the reason on stderr; a detached monitor
//! process stays behind, logging the container's output and recording its exit.

use clap::{Args, Parser, Subcommand};
use keelson_container::cgroups::Layout;
use keelson_cri::monitor::{self, MonitorOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keelson-monitor",
    version,
    about = "keelsond's per-container monitor: owns a container's stdio, CRI log and exit status"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the container (engine `create`) and stay behind, detached, as its monitor
    Create(CreateArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The engine's state root
    #[arg(long)]
    root: PathBuf,
    /// Container id
    #[arg(long)]
    id: String,
    /// OCI bundle directory
    #[arg(long)]
    bundle: PathBuf,
    /// CRI log file to write (its directory must exist)
    #[arg(long)]
    log_path: PathBuf,
    /// Where to write the exit status (JSON) when the container exits
    #[arg(long)]
    exit_file: PathBuf,
    /// The monitor's own directory: monitor.pid, attach.sock, monitor.log
    #[arg(long)]
    state_dir: PathBuf,
    /// Keep the container's stdin open for attach
    #[arg(long)]
    stdin: bool,
    /// Close the container's stdin when the first attach's stdin ends
    #[arg(long)]
    stdin_once: bool,
    /// The container has a terminal (process.terminal in its config)
    #[arg(long)]
    tty: bool,
    /// The cgroup layout (JSON) the caller discovered; read from mountinfo when absent
    #[arg(long, value_parser = parse_layout)]
    cgroup_layout: Option<Layout>,
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    serde_json::from_str(s).map_err(|e| format!("not a cgroup layout: {e}"))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Create(a) => monitor::run_create(&MonitorOptions {
            binary: None,
            root: a.root,
            id: a.id,
            bundle: a.bundle,
            log_path: a.log_path,
            exit_file: a.exit_file,
            state_dir: a.state_dir,
            stdin: a.stdin,
            stdin_once: a.stdin_once,
            tty: a.tty,
            cgroup_layout: a.cgroup_layout,
        }),
    };
    std::process::exit(code);
}
