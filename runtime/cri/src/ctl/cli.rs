//! keelsonctl's command line: crictl's commands and flags (see the bin's docs for the list).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The runtime endpoint when neither `--runtime-endpoint` nor `CONTAINER_RUNTIME_ENDPOINT`
/// names one: keelsond's socket.
pub const DEFAULT_ENDPOINT: &str = "unix:///run/keelsond/keelsond.sock";

/// crictl's connection and request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A Go-style duration ("2s", "1m30s", "500ms"); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(format!("invalid duration {s:?}"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[derive(Debug, Parser)]
#[command(
    name = "keelsonctl",
    version,
    about = "A client for CRI runtimes (keelsond, containerd, CRI-O) with crictl's commands",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Endpoint of the CRI runtime service (env CONTAINER_RUNTIME_ENDPOINT; default
    /// unix:///run/keelsond/keelsond.sock)
    #[arg(short = 'r', long, value_name = "ENDPOINT")]
    pub runtime_endpoint: Option<String>,
    /// Endpoint of the CRI image service (env IMAGE_SERVICE_ENDPOINT; default: the runtime
    /// endpoint)
    #[arg(short = 'i', long, value_name = "ENDPOINT")]
    pub image_endpoint: Option<String>,
    /// Timeout of connecting and of each request (e.g. 2s, 20s); 0 or less is the default 2s
    #[arg(short = 't', long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Print every request and response on stderr
    #[arg(short = 'D', long)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Display runtime version information
    Version,
    /// Display information of the container runtime (Status, as JSON)
    Info(InfoArgs),
    /// Run a new pod from a pod config file
    Runp(RunpArgs),
    /// List pods
    Pods(PodsArgs),
    /// Display the status of one or more pods
    Inspectp(InspectpArgs),
    /// Stop one or more running pods
    Stopp(IdsArgs),
    /// Remove one or more pods
    Rmp(RmpArgs),
    /// Create a new container in a pod
    Create(CreateArgs),
    /// Run a new container inside a new pod (runp + create + start)
    Run(RunArgs),
    /// Start one or more created containers
    Start(IdsArgs),
    /// List containers
    Ps(PsArgs),
    /// Display the status of one or more containers
    Inspect(InspectArgs),
    /// Stop one or more running containers
    Stop(StopArgs),
    /// Remove one or more containers
    Rm(RmArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Fetch the logs of a container
    Logs(LogsArgs),
    /// List container resource usage statistics
    Stats(StatsArgs),
    /// List pod statistics
    Statsp(StatspArgs),
    /// Pull an image from a registry
    Pull(PullArgs),
    /// List images
    #[command(visible_aliases = ["image", "img"])]
    Images(ImagesArgs),
    /// Return the status of one or more images
    Inspecti(InspectiArgs),
    /// Remove one or more images
    Rmi(RmiArgs),
    /// Return image filesystem info
    Imagefsinfo(OutputArgs),
    /// Forward local ports to a pod
    PortForward(PortForwardArgs),
    /// Attach to a running container
    Attach(AttachArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format: json
    #[arg(short = 'o', long, default_value = "json")]
    pub output: String,
    /// Do not show verbose information
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RunpArgs {
    /// The pod config (JSON)
    pub config: PathBuf,
    /// Runtime handler to use
    #[arg(short = 'r', long, default_value = "")]
    pub runtime: String,
    /// How long to wait for the request (default: twice the global timeout)
    #[arg(short = 'T', long, value_parser = parse_duration)]
    pub cancel_timeout: Option<Duration>,
}

/// The filters crictl's pod commands share.
#[derive(Debug, Args, Clone, Default)]
pub struct PodFilterArgs {
    /// Filter by pod name regular expression pattern
    #[arg(long)]
    pub name: Option<String>,
    /// Filter by pod namespace regular expression pattern
    #[arg(long)]
    pub namespace: Option<String>,
    /// Filter by pod state (ready, notready)
    #[arg(short = 's', long)]
    pub state: Option<String>,
    /// Filter by key=value label (repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Show the most recently created pod
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Show the last n recently created pods (0: all)
    #[arg(short = 'n', long, default_value_t = 0)]
    pub last: usize,
}

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// Filter by pod id (prefix)
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub filter: PodFilterArgs,
    /// Show verbose info for pods
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// List only pod IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: json or table
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectpArgs {
    /// Pod IDs (default: the pods the filters select)
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: PodFilterArgs,
    /// Output format: json (default) or table
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Do not show verbose information
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmpArgs {
    pub ids: Vec<String>,
    /// Remove all pods
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Stop a ready pod before removing it
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// How a command that creates containers may pull their image.
#[derive(Debug, Args, Clone, Default)]
pub struct PullFlags {
    /// Do not pull the image
    #[arg(long, conflicts_with = "with_pull")]
    pub no_pull: bool,
    /// Pull the image first
    #[arg(long)]
    pub with_pull: bool,
    /// USERNAME[:PASSWORD] for the registry
    #[arg(long)]
    pub creds: Option<String>,
    /// base64 of USERNAME[:PASSWORD] for the registry
    #[arg(long)]
    pub auth: Option<String>,
    /// How long to wait for the create request (default: the global timeout)
    #[arg(short = 'T', long, value_parser = parse_duration)]
    pub cancel_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The pod to create the container in
    pub pod: String,
    /// The container config (JSON)
    pub container_config: PathBuf,
    /// The pod's config (JSON)
    pub pod_config: PathBuf,
    #[command(flatten)]
    pub pull: PullFlags,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The container config (JSON)
    pub container_config: PathBuf,
    /// The pod config (JSON)
    pub pod_config: PathBuf,
    /// Runtime handler to use
    #[arg(short = 'r', long, default_value = "")]
    pub runtime: String,
    #[command(flatten)]
    pub pull: PullFlags,
}

/// The filters crictl's container commands share.
#[derive(Debug, Args, Clone, Default)]
pub struct ContainerFilterArgs {
    /// Filter by container name regular expression pattern
    #[arg(long)]
    pub name: Option<String>,
    /// Filter by pod namespace regular expression pattern
    #[arg(long)]
    pub namespace: Option<String>,
    /// Filter by pod id (prefix)
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    /// Filter by container image
    #[arg(long)]
    pub image: Option<String>,
    /// Filter by container state (created, running, exited, unknown)
    #[arg(short = 's', long)]
    pub state: Option<String>,
    /// Filter by key=value label (repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Show the most recently created container (any state)
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Show the last n recently created containers (any state; 0: all)
    #[arg(short = 'n', long, default_value_t = 0)]
    pub last: usize,
    /// Show all containers (default: running ones)
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Filter by container id (prefix)
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub filter: ContainerFilterArgs,
    /// Show verbose information for containers
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Only display container IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: json or table
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Container IDs (default: the containers the filters select)
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: ContainerFilterArgs,
    /// Output format: json (default) or table
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Do not show verbose information
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub ids: Vec<String>,
    /// Seconds to wait before killing the container after a graceful stop
    #[arg(short = 't', long, default_value_t = 0)]
    pub timeout: i64,
    /// Stop all running containers
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub ids: Vec<String>,
    /// Stop a running container before removing it
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Keep the container's log file and its rotations
    #[arg(short = 'k', long)]
    pub keep_logs: bool,
    /// Remove all containers
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run the command synchronously (always the case without -i/-t)
    #[arg(short = 's', long)]
    pub sync: bool,
    /// Timeout of the command in seconds (0: none)
    #[arg(long, default_value_t = 0)]
    pub timeout: i64,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// The container
    pub id: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The container
    pub id: String,
    /// Follow log output
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the logs of the previous instance (attempt - 1) of the container
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Reopen the container's log file first
    #[arg(short = 'r', long)]
    pub reopen: bool,
    /// Number of lines to show from the end of the logs (-1: all)
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub tail: i64,
    /// Maximum bytes of logs to return (-1: no limit)
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub limit_bytes: i64,
    /// Show logs since a timestamp (2013-01-02T13:23:37Z) or for a duration (42m)
    #[arg(long)]
    pub since: Option<String>,
    /// Show timestamps
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Show only this stream (stdout or stderr)
    #[arg(short = 's', long)]
    pub stream: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// A container ID (same as --id)
    pub container: Option<String>,
    /// Show all containers (default: running ones)
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filter by container id (prefix)
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by pod id (prefix)
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    /// Filter by key=value label (repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Output format: json or table
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// Sample duration for CPU usage in seconds
    #[arg(short = 's', long, default_value_t = 1)]
    pub seconds: u64,
}

#[derive(Debug, Args)]
pub struct StatspArgs {
    /// A pod ID (same as --id)
    pub pod: Option<String>,
    /// Filter by pod id (prefix)
    #[arg(long)]
    pub id: Option<String>,
    /// Filter by key=value label (repeatable)
    #[arg(long)]
    pub label: Vec<String>,
    /// Output format: json or table
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// Sample duration for CPU usage in seconds
    #[arg(short = 's', long, default_value_t = 1)]
    pub seconds: u64,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    pub image: String,
    /// USERNAME[:PASSWORD] for the registry (env CRICTL_CREDS)
    #[arg(long)]
    pub creds: Option<String>,
    /// base64 of USERNAME[:PASSWORD] for the registry (env CRICTL_AUTH)
    #[arg(long)]
    pub auth: Option<String>,
    /// A pod config (JSON) to send along with the pull
    #[arg(long)]
    pub pod_config: Option<PathBuf>,
    /// key=value annotation to set on the pulled image (repeatable)
    #[arg(short = 'a', long)]
    pub annotation: Vec<String>,
    /// Maximum time for the pull (0s: none)
    #[arg(long = "pull-timeout", visible_alias = "pt", value_parser = parse_duration)]
    pub pull_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// REPOSITORY[:TAG]
    pub image: Option<String>,
    /// Show verbose info for images
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Only show image IDs
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: json or table
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Show output without truncating the ID
    #[arg(long)]
    pub no_trunc: bool,
    /// Show whether the image is pinned
    #[arg(long)]
    pub pinned: bool,
}

#[derive(Debug, Args)]
pub struct InspectiArgs {
    /// Image IDs or names (default: every image)
    pub ids: Vec<String>,
    /// Output format: json (default) or table
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Do not show verbose information
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    pub ids: Vec<String>,
    /// Remove all images
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Remove all images no container uses
    #[arg(short = 'q', long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format: json (default) or table
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Keep STDIN open
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Stdin is a TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The container
    pub id: String,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The pod
    pub pod: String,
    /// [LOCAL_PORT:]REMOTE_PORT (repeatable)
    #[arg(required = true)]
    pub ports: Vec<String>,
}
