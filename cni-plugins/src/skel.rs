//! The CNI execution protocol: environment, stdin config, command dispatch, result and error
//! output, exit code.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::{CniError, Code, Result};
use crate::types::{self, CURRENT_VERSION, CniResult, SUPPORTED_VERSIONS};

/// The command of one invocation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("unknown CNI_COMMAND: {other}"),
                ));
            }
        })
    }
}

/// The environment of one invocation.
#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; may be empty or missing on DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    /// The config's `cniVersion`.
    pub version: String,
}

impl Args {
    /// The reference plugins' `types.LoadArgs`: `CNI_ARGS` keys other than `known` (and
    /// `IgnoreUnknown`) are an error unless `IgnoreUnknown` is `1` or `true`.
    pub fn refuse_unknown(&self, known: &[&str]) -> Result<()> {
        if self
            .arg("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        {
            return Ok(());
        }
        let unknown: Vec<String> = self
            .args
            .iter()
            .filter(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str()))
            .map(|(k, v)| format!("{:?}", format!("{k}={v}")))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(CniError::new(
            Code::Internal,
            format!("ARGS: unknown args [{}]", unknown.join(" ")),
        ))
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One plugin's command handlers. `conf` is the whole config from stdin.
pub trait Plugin {
    fn add(&self, args: &Args, conf: &Value) -> Result<CniResult>;
    fn del(&self, args: &Args, conf: &Value) -> Result<()>;
    fn check(&self, args: &Args, conf: &Value) -> Result<()>;
    fn status(&self, _args: &Args, _conf: &Value) -> Result<()> {
        Ok(())
    }
    fn gc(&self, _args: &Args, _conf: &Value) -> Result<()> {
        Ok(())
    }
    /// Validates the plugin-specific part of the config before any command runs.
    fn validate(&self, conf: &Value) -> Result<()>;
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("ARGS: invalid pair {pair:?}"),
            ));
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Reads the environment and stdin, runs `plugin`, writes the result or error, and returns the
/// process exit code.
pub fn run(plugin: &dyn Plugin) -> i32 {
    init_logging();
    let mut version = CURRENT_VERSION.to_string();
    match run_inner(plugin, &mut version) {
        Ok(Some(out)) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            tracing::debug!(code = e.code, "{e}");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            1
        }
    }
}

fn init_logging() {
    if let Ok(filter) = std::env::var("KEELSON_CNI_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
}

fn run_inner(plugin: &dyn Plugin, version: &mut String) -> Result<Option<Value>> {
    let cmd = env("CNI_COMMAND")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidEnv,
                "required env variables [CNI_COMMAND] missing",
            )
        })?;
    let command = Command::parse(&cmd)?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::io("error reading from stdin", e))?;

    if command == Command::Version {
        if let Ok(v) = serde_json::from_slice::<Value>(&stdin)
            && let Some(cv) = v.get("cniVersion").and_then(Value::as_str)
        {
            *version = cv.to_string();
        }
        return Ok(Some(json!({
            "cniVersion": CURRENT_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }

    // The environment, as the spec requires it per command.
    let mut missing = Vec::new();
    let mut need = |name: &'static str, required: bool| -> String {
        let v = env(name).unwrap_or_default();
        if required && v.is_empty() {
            missing.push(name);
        }
        v
    };
    let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let container_id = need("CNI_CONTAINERID", per_container);
    let netns = need(
        "CNI_NETNS",
        matches!(command, Command::Add | Command::Check),
    );
    let ifname = need("CNI_IFNAME", per_container);
    let path = need("CNI_PATH", per_container);
    if !missing.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let cni_args = parse_cni_args(&env("CNI_ARGS").unwrap_or_default())?;

    let conf: Value = serde_json::from_slice(&stdin).map_err(|e| {
        CniError::with_details(Code::Decode, "error parsing network configuration", e)
    })?;
    if !conf.is_object() {
        return Err(CniError::new(
            Code::Decode,
            "network configuration must be a JSON object",
        ));
    }
    let cv = match conf.get("cniVersion") {
        Some(Value::String(s)) => s.clone(),
        None => "0.1.0".to_string(),
        Some(other) => {
            return Err(CniError::with_details(
                Code::Decode,
                "cniVersion must be a string",
                other,
            ));
        }
    };
    types::check_version(&cv)?;
    *version = cv.clone();
    if matches!(command, Command::Status | Command::Gc) && !types::version_at_least(&cv, 1, 1) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config version {cv} does not allow {cmd}"),
        ));
    }
    if command == Command::Check && !types::version_at_least(&cv, 0, 4) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config version {cv} does not allow CHECK"),
        ));
    }
    if conf
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(CniError::config("missing network name"));
    }
    plugin.validate(&conf)?;

    let args = Args {
        command,
        container_id,
        netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
        ifname,
        args: cni_args,
        path: std::env::split_paths(&path).collect(),
        version: cv.clone(),
    };
    let span = tracing::info_span!("cni", command = %cmd, container = %args.container_id);
    let _enter = span.enter();
    match command {
        Command::Add => {
            let result = plugin.add(&args, &conf)?;
            Ok(Some(result.to_value(&cv)))
        }
        Command::Del => plugin.del(&args, &conf).map(|_| None),
        Command::Check => plugin.check(&args, &conf).map(|_| None),
        Command::Status => plugin.status(&args, &conf).map(|_| None),
        Command::Gc => plugin.gc(&args, &conf).map(|_| None),
        Command::Version => Ok(None),
    }
}

/// Runs a plugin main: exits with [`run`]'s code.
pub fn main(plugin: &dyn Plugin) -> ! {
    let code = run(plugin);
    std::process::exit(code)
}
