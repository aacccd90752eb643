//! keelsonctl: a CRI client following crictl (commands, flags, tables, JSON), for people
//! and tests driving keelsond, or any CRI runtime, over its gRPC socket.
//!
//! - [`cli`]: the command line.
//! - [`protojson`]: CRI messages to and from JSON, driven by the compiled-in descriptors.
//! - [`config`]: pod and container config files.
//! - [`display`]: tables, sizes, ages, times and name patterns as crictl shows them.
//! - the commands: pods, containers, exec, logs, stats, images, runtime status.

pub mod cli;
pub mod config;
mod containers;
pub mod display;
mod exec;
mod images;
mod logs;
mod pods;
pub mod protojson;
mod stats;
mod status;
mod stream;

use anyhow::{Context, Result, anyhow, bail};
use cli::{Cli, Command};
use keelson_proto::runtime::v1 as pb;
use pb::image_service_client::ImageServiceClient;
use pb::runtime_service_client::RuntimeServiceClient;
use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

/// crictl's limit on gRPC messages (a node with many containers lists more than 4 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The connection to the runtime (and image) service and how requests are made.
#[derive(Clone)]
pub struct Ctl {
    runtime_endpoint: String,
    image_endpoint: String,
    /// How long connecting and a request may take (crictl's `--timeout`).
    pub timeout: Duration,
    debug: bool,
    runtime: tokio::sync::OnceCell<Channel>,
    images: tokio::sync::OnceCell<Channel>,
}

/// A gRPC error the way Go prints one (`rpc error: code = NotFound desc = ...`).
pub fn rpc_error(s: &tonic::Status) -> anyhow::Error {
    anyhow!(
        "rpc error: code = {:?} desc = {}",
        s.code(),
        s.message().replace('\n', " ")
    )
}

/// `unix:///path` from an endpoint flag (a bare absolute path is taken as a unix socket).
fn endpoint_uri(e: &str, flag: &str) -> Result<String> {
    if e.is_empty() {
        bail!("--{flag} is not set");
    }
    if let Some(path) = e.strip_prefix("unix://") {
        if path.is_empty() {
            bail!("--{flag} {e:?}: no socket path");
        }
        return Ok(e.to_string());
    }
    if e.starts_with('/') {
        return Ok(format!("unix://{e}"));
    }
    bail!("--{flag} {e:?}: only unix:// endpoints are supported")
}

impl Ctl {
    fn new(cli: &Cli) -> Result<Ctl> {
        let env = |k: &str| std::env::var(k).ok();
        let runtime = cli
            .runtime_endpoint
            .clone()
            .or_else(|| env("CONTAINER_RUNTIME_ENDPOINT"))
            .unwrap_or_else(|| cli::DEFAULT_ENDPOINT.to_string());
        let image = cli
            .image_endpoint
            .clone()
            .or_else(|| env("IMAGE_SERVICE_ENDPOINT"))
            .unwrap_or_else(|| runtime.clone());
        let timeout = match cli.timeout {
            Some(t) if !t.is_zero() => t,
            _ => cli::DEFAULT_TIMEOUT,
        };
        Ok(Ctl {
            runtime_endpoint: endpoint_uri(&runtime, "runtime-endpoint")?,
            image_endpoint: endpoint_uri(&image, "image-endpoint")?,
            timeout,
            debug: cli.debug,
            runtime: tokio::sync::OnceCell::new(),
            images: tokio::sync::OnceCell::new(),
        })
    }

    /// Prints `msg` on stderr with `--debug`.
    pub fn debug(&self, msg: impl std::fmt::Display) {
        if self.debug {
            eprintln!("keelsonctl: debug: {msg}");
        }
    }

    async fn connect(&self, uri: &str) -> Result<Channel> {
        self.debug(format_args!(
            "connecting to {uri} (timeout {:?})",
            self.timeout
        ));
        let ep = tonic::transport::Endpoint::from_shared(uri.to_string())
            .with_context(|| format!("endpoint {uri}"))?
            .connect_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, ep.connect()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    let s_msg = s.to_string();
                    if !msg.contains(&s_msg) {
                        msg.push_str(": ");
                        msg.push_str(&s_msg);
                    }
                    src = s.source();
                }
                Err(anyhow!("connecting to {uri}: {msg}"))
            }
            Err(_) => Err(anyhow!(
                "connecting to {uri}: no answer within {:?}",
                self.timeout
            )),
        }
    }

    /// A client of the runtime service (connected on first use).
    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        let ch = self
            .runtime
            .get_or_try_init(|| self.connect(&self.runtime_endpoint))
            .await?;
        Ok(RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE))
    }

    /// A client of the image service (the runtime's connection when the endpoints match).
    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        let ch = if self.image_endpoint == self.runtime_endpoint {
            self.runtime
                .get_or_try_init(|| self.connect(&self.runtime_endpoint))
                .await?
        } else {
            self.images
                .get_or_try_init(|| self.connect(&self.image_endpoint))
                .await?
        };
        Ok(ImageServiceClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE))
    }

    /// A request carrying `msg` and, when given, its deadline (sent as `grpc-timeout`).
    pub fn req<T: Debug>(&self, name: &str, msg: T, t: Option<Duration>) -> tonic::Request<T> {
        self.debug(format_args!("{name}Request: {msg:?}"));
        let mut r = tonic::Request::new(msg);
        if let Some(t) = t {
            r.set_timeout(t);
        }
        r
    }

    /// Awaits a call, bounded by `t`; gRPC errors become Go-style messages.
    pub async fn call<T: Debug>(
        &self,
        name: &str,
        t: Option<Duration>,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        let res = match t {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| {
                anyhow!("rpc error: code = DeadlineExceeded desc = context deadline exceeded ({name} took longer than {t:?})")
            })?,
            None => fut.await,
        };
        let resp = res.map_err(|s| rpc_error(&s))?.into_inner();
        self.debug(format_args!("{name}Response: {resp:?}"));
        Ok(resp)
    }
}

/// Writes to stdout (a closed pipe ends keelsonctl quietly, see [`run`]).
pub fn out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()?;
    Ok(())
}

/// Parses `key=value` labels the way crictl does (exactly one `=`).
pub fn parse_labels(list: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for l in list {
        let parts: Vec<&str> = l.split('=').collect();
        let [k, v] = parts.as_slice() else {
            bail!("incorrectly specified label: {l}");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The output formats keelsonctl writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Table,
}

/// `-o`'s value; YAML and go-template are crictl's too but keelsonctl has neither.
pub fn output_format(s: &str) -> Result<Output> {
    match s {
        "json" => Ok(Output::Json),
        "table" => Ok(Output::Table),
        "yaml" | "go-template" => {
            bail!("output format {s:?} is not supported by keelsonctl (use json or table)")
        }
        _ => bail!("unsupported output format {s:?}"),
    }
}

/// Runs one command; the exit code is the command's (`exec`) or 0.
async fn dispatch(cli: Cli) -> Result<u8> {
    let ctl = Ctl::new(&cli)?;
    let c = &ctl;
    match &cli.command {
        Command::Version => status::version(c).await?,
        Command::Info(a) => status::info(c, a).await?,
        Command::Runp(a) => pods::runp(c, a).await?,
        Command::Pods(a) => pods::pods(c, a).await?,
        Command::Inspectp(a) => pods::inspectp(c, a).await?,
        Command::Stopp(a) => pods::stopp(c, a).await?,
        Command::Rmp(a) => pods::rmp(c, a).await?,
        Command::Create(a) => containers::create(c, a).await?,
        Command::Run(a) => containers::run(c, a).await?,
        Command::Start(a) => containers::start(c, a).await?,
        Command::Ps(a) => containers::ps(c, a).await?,
        Command::Inspect(a) => containers::inspect(c, a).await?,
        Command::Stop(a) => containers::stop(c, a).await?,
        Command::Rm(a) => containers::rm(c, a).await?,
        Command::Exec(a) => return exec::exec(c, a).await,
        Command::Logs(a) => logs::logs(c, a).await?,
        Command::Stats(a) => stats::stats(c, a).await?,
        Command::Statsp(a) => stats::statsp(c, a).await?,
        Command::Pull(a) => images::pull(c, a).await?,
        Command::Images(a) => images::images(c, a).await?,
        Command::Inspecti(a) => images::inspecti(c, a).await?,
        Command::Rmi(a) => images::rmi(c, a).await?,
        Command::Imagefsinfo(a) => images::imagefsinfo(c, a).await?,
        Command::PortForward(a) => return stream::port_forward(c, a).await,
        Command::Attach(a) => return stream::attach(c, a).await,
    }
    Ok(0)
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// keelsonctl's main: parses the command line, runs the command, and reports a failure as
/// one line `keelsonctl: <message>` with exit code 1.
pub fn run() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keelsonctl: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelsonctl: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
