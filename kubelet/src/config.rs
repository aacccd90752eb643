//! The kubelet's configuration: upstream's flags and the `KubeletConfiguration` (v1beta1) file.
//!
//! Flags given on the command line win over the file, as upstream. Fields of upstream's
//! KubeletConfiguration that keelson does not act on yet are accepted with a warning; fields
//! upstream does not know are an error (upstream decodes the file strictly too).

use clap::Parser;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{0}")]
    Value(String),
}

/// The command line, with upstream's flag names.
#[derive(Parser, Debug, Default)]
#[command(name = "kubelet", version, about = "keelson's kubelet")]
pub struct Flags {
    /// A KubeletConfiguration (kubelet.config.k8s.io/v1beta1) file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for the kubelet's files (pod directories, state).
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,
    /// The node name, instead of the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The CRI runtime service endpoint (unix:///path).
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// The CRI image service endpoint; the runtime endpoint when not given.
    #[arg(long)]
    pub image_service_endpoint: Option<String>,
    /// The static pod manifest directory (staticPodPath).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// A kubeconfig for the apiserver: accepted, not used in standalone mode.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Log verbosity (0-1 = info, 2-3 = debug, 4+ = trace).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// The serving certificate (PEM); overrides tlsCertFile.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM); overrides tlsPrivateKeyFile.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Where the self-signed serving certificate (kubelet.crt, kubelet.key) is kept when no
    /// certificate is given.
    #[arg(long, default_value = "/var/lib/kubelet/pki")]
    pub cert_dir: PathBuf,
    /// keelson only: the directory of the `<pod>_<ns>_<container>-<id>.log` links upstream
    /// keeps in the fixed /var/log/containers (tests point it into a temp dir).
    #[arg(long, default_value = "/var/log/containers")]
    pub container_log_links_dir: PathBuf,
    /// Minimum age of a finished container before it is garbage collected (Go duration;
    /// upstream's deprecated flag, default 0).
    #[arg(long)]
    pub minimum_container_ttl_duration: Option<String>,
    /// Dead instances of each container to keep (< 0: no limit; default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub maximum_dead_containers_per_container: Option<i64>,
    /// Dead containers to keep in all (< 0: no limit; default -1).
    #[arg(long, allow_negative_numbers = true)]
    pub maximum_dead_containers: Option<i64>,
    /// keelson only: how often container garbage collection runs (Go duration; upstream's
    /// fixed ContainerGCPeriod, 1m). For tests.
    #[arg(long)]
    pub keelson_container_gc_period: Option<String>,
    /// keelson only: how often image garbage collection runs (Go duration; upstream's fixed
    /// ImageGCPeriod, 5m). For tests.
    #[arg(long)]
    pub keelson_image_gc_period: Option<String>,
}

/// The file, as far as keelson reads it. Unknown keys are checked in [`KNOWN_UNUSED`].
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct FileConfig {
    kind: Option<String>,
    api_version: Option<String>,
    static_pod_path: Option<PathBuf>,
    pod_logs_dir: Option<PathBuf>,
    sync_frequency: Option<String>,
    file_check_frequency: Option<String>,
    healthz_port: Option<i64>,
    healthz_bind_address: Option<String>,
    port: Option<i64>,
    address: Option<String>,
    read_only_port: Option<i64>,
    cgroup_root: Option<String>,
    cgroup_driver: Option<String>,
    cgroups_per_q_o_s: Option<bool>,
    max_pods: Option<i64>,
    container_runtime_endpoint: Option<String>,
    image_service_endpoint: Option<String>,
    resolv_conf: Option<PathBuf>,
    #[serde(rename = "clusterDNS")]
    cluster_dns: Option<Vec<String>>,
    cluster_domain: Option<String>,
    container_log_max_size: Option<String>,
    container_log_max_files: Option<i64>,
    serialize_image_pulls: Option<bool>,
    max_parallel_image_pulls: Option<i64>,
    eviction_hard: Option<BTreeMap<String, String>>,
    tls_cert_file: Option<PathBuf>,
    tls_private_key_file: Option<PathBuf>,
    authentication: Option<serde_json::Value>,
    authorization: Option<serde_json::Value>,
    container_log_monitor_interval: Option<String>,
    #[serde(rename = "cpuCFSQuota")]
    cpu_cfs_quota: Option<bool>,
    #[serde(rename = "cpuCFSQuotaPeriod")]
    cpu_cfs_quota_period: Option<String>,
    pod_pids_limit: Option<i64>,
    system_reserved: Option<BTreeMap<String, String>>,
    kube_reserved: Option<BTreeMap<String, String>>,
    enforce_node_allocatable: Option<Vec<String>>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: Option<i64>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    image_gc_low_threshold_percent: Option<i64>,
    #[serde(rename = "imageMinimumGCAge")]
    image_minimum_gc_age: Option<String>,
    #[serde(rename = "imageMaximumGCAge")]
    image_maximum_gc_age: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// Upstream KubeletConfiguration fields that are accepted but not acted on yet.
const KNOWN_UNUSED: &[&str] = &[
    "enableServer",
    "staticPodURL",
    "staticPodURLHeader",
    "tlsCipherSuites",
    "tlsMinVersion",
    "rotateCertificates",
    "serverTLSBootstrap",
    "registryPullQPS",
    "registryBurst",
    "eventRecordQPS",
    "eventBurst",
    "enableDebuggingHandlers",
    "enableContentionProfiling",
    "oomScoreAdj",
    "streamingConnectionIdleTimeout",
    "nodeStatusUpdateFrequency",
    "nodeStatusReportFrequency",
    "nodeLeaseDurationSeconds",
    "volumeStatsAggPeriod",
    "kubeletCgroups",
    "systemCgroups",
    "cpuManagerPolicy",
    "cpuManagerPolicyOptions",
    "cpuManagerReconcilePeriod",
    "memoryManagerPolicy",
    "topologyManagerPolicy",
    "topologyManagerScope",
    "topologyManagerPolicyOptions",
    "qosReserved",
    "runtimeRequestTimeout",
    "hairpinMode",
    "podCIDR",
    "nodeStatusMaxImages",
    "maxOpenFiles",
    "contentType",
    "kubeAPIQPS",
    "kubeAPIBurst",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "evictionPressureTransitionPeriod",
    "evictionMaxPodGracePeriod",
    "evictionMinimumReclaim",
    "podsPerCore",
    "enableControllerAttachDetach",
    "protectKernelDefaults",
    "makeIPTablesUtilChains",
    "iptablesMasqueradeBit",
    "iptablesDropBit",
    "featureGates",
    "failSwapOn",
    "memorySwap",
    "containerLogMaxWorkers",
    "configMapAndSecretChangeDetectionStrategy",
    "reservedSystemCPUs",
    "showHiddenMetricsForVersion",
    "systemReservedCgroup",
    "kubeReservedCgroup",
    "allowedUnsafeSysctls",
    "volumePluginDir",
    "providerID",
    "kernelMemcgNotification",
    "logging",
    "enableSystemLogHandler",
    "enableSystemLogQuery",
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority",
    "reservedMemory",
    "enableProfilingHandler",
    "enableDebugFlagsHandler",
    "seccompDefault",
    "memoryThrottlingFactor",
    "registerWithTaints",
    "registerNode",
    "tracing",
    "localStorageCapacityIsolation",
    "failCgroupV1",
    "crashLoopBackOff",
    "userNamespaces",
    "imagePullCredentialsVerificationPolicy",
    "preloadedImagesVerificationAllowlist",
    "singleProcessOOMKill",
    "mergeDefaultEvictionSettings",
];

/// The configuration the kubelet runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub root_dir: PathBuf,
    pub node_name: String,
    pub runtime_endpoint: String,
    pub image_endpoint: String,
    pub static_pod_path: Option<PathBuf>,
    pub pod_logs_dir: PathBuf,
    pub sync_frequency: Duration,
    pub file_check_frequency: Duration,
    pub healthz_port: u16,
    pub healthz_bind_address: String,
    pub port: u16,
    pub address: String,
    pub read_only_port: u16,
    pub cgroup_root: String,
    pub cgroups_per_qos: bool,
    /// cpuCFSQuota: container and pod cpu limits become CFS quotas.
    pub cpu_cfs_quota: bool,
    /// cpuCFSQuotaPeriod in microseconds (upstream's default 100ms).
    pub cpu_cfs_period_us: u64,
    /// podPidsLimit: pids.max of each pod cgroup when positive.
    pub pod_pids_limit: i64,
    /// systemReserved and kubeReserved added up, by resource name (cpu in millicores, the
    /// rest in units).
    pub reserved: BTreeMap<String, i64>,
    /// enforceNodeAllocatable has "pods": the kubepods cgroup is limited to node allocatable.
    pub enforce_pods_allocatable: bool,
    pub max_pods: usize,
    pub resolv_conf: PathBuf,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub container_log_max_size: String,
    pub container_log_max_files: i64,
    pub serialize_image_pulls: bool,
    pub max_parallel_image_pulls: Option<i64>,
    pub eviction_hard: BTreeMap<String, String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub container_log_links_dir: PathBuf,
    /// containerLogMaxSize in bytes.
    pub container_log_max_bytes: u64,
    pub container_log_monitor_interval: Duration,
    /// Container, sandbox and pod log garbage collection.
    pub container_gc: crate::gc::ContainerPolicy,
    /// Image garbage collection.
    pub image_gc: crate::gc::ImagePolicy,
    /// How often they run (upstream: fixed 1m and 5m; keelson flags for tests).
    pub container_gc_period: Duration,
    pub image_gc_period: Duration,
    /// authentication.anonymous.enabled.
    pub anonymous_auth: bool,
    /// authorization.mode (AlwaysAllow: the only mode a kubelet without an apiserver has).
    pub authorization_mode: String,
    /// Messages for the log once logging is up (unused fields, ignored flags).
    pub warnings: Vec<String>,
}

/// A Go `time.Duration` string: "20s", "1m0s", "1.5h", "300ms".
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(format!("invalid duration {s:?}"));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit"))?;
        let (num, after) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
        };
        total += n * scale;
        rest = after;
    }
    Ok(Duration::from_secs_f64(total))
}

fn port(name: &str, v: i64) -> Result<u16, ConfigError> {
    u16::try_from(v).map_err(|_| ConfigError::Value(format!("{name}: {v} is not a port number")))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Reads the file (if any) and lays the flags over it.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let file = match &flags.config {
            Some(p) => read_file(p, &mut warnings)?,
            None => FileConfig::default(),
        };
        if flags.kubeconfig.is_some() {
            warnings.push(
                "--kubeconfig is accepted but not used: this kubelet runs in standalone mode"
                    .into(),
            );
        }
        if let Some(d) = file.cgroup_driver.as_deref() {
            match d {
                "cgroupfs" => {}
                "systemd" => {
                    return Err(ConfigError::Value(
                        "cgroupDriver \"systemd\" is not supported yet; use \"cgroupfs\"".into(),
                    ));
                }
                other => {
                    return Err(ConfigError::Value(format!(
                        "cgroupDriver {other:?}: must be \"cgroupfs\" or \"systemd\""
                    )));
                }
            }
        }
        let dur = |name: &str, v: &Option<String>, default: Duration| match v {
            Some(s) => parse_go_duration(s).map_err(|e| ConfigError::Value(format!("{name}: {e}"))),
            None => Ok(default),
        };
        let sync_frequency = dur(
            "syncFrequency",
            &file.sync_frequency,
            Duration::from_secs(60),
        )?;
        let file_check_frequency = dur(
            "fileCheckFrequency",
            &file.file_check_frequency,
            Duration::from_secs(20),
        )?;
        if sync_frequency.is_zero() || file_check_frequency.is_zero() {
            return Err(ConfigError::Value(
                "syncFrequency and fileCheckFrequency must be greater than 0".into(),
            ));
        }
        let max_pods = file.max_pods.unwrap_or(110);
        if max_pods < 0 {
            return Err(ConfigError::Value(format!(
                "maxPods: {max_pods} must not be negative"
            )));
        }
        let node_name = flags
            .hostname_override
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(hostname)
            .trim()
            .to_lowercase();
        let runtime_endpoint = flags
            .container_runtime_endpoint
            .clone()
            .or(file.container_runtime_endpoint.clone())
            .unwrap_or_else(|| "unix:///run/containerd/containerd.sock".into());
        let image_endpoint = flags
            .image_service_endpoint
            .clone()
            .or(file.image_service_endpoint.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| runtime_endpoint.clone());
        for (name, e) in [
            ("container runtime endpoint", &runtime_endpoint),
            ("image service endpoint", &image_endpoint),
        ] {
            if !e.starts_with("unix://") {
                return Err(ConfigError::Value(format!(
                    "{name} {e:?}: only unix:// endpoints are supported"
                )));
            }
        }
        let cgroup_root = file.cgroup_root.clone().unwrap_or_default();
        if cgroup_root.split('/').any(|c| c == "..") {
            return Err(ConfigError::Value(format!(
                "cgroupRoot {cgroup_root:?} must not contain '..'"
            )));
        }
        let cgroups_per_qos = file.cgroups_per_q_o_s.unwrap_or(true);
        let cpu_cfs_quota_period = dur(
            "cpuCFSQuotaPeriod",
            &file.cpu_cfs_quota_period,
            Duration::from_millis(100),
        )?;
        if cpu_cfs_quota_period < Duration::from_millis(1)
            || cpu_cfs_quota_period > Duration::from_secs(1)
        {
            return Err(ConfigError::Value(format!(
                "cpuCFSQuotaPeriod (--cpu-cfs-quota-period) {cpu_cfs_quota_period:?} must be \
                 between 1ms and 1sec, inclusive"
            )));
        }
        let pod_pids_limit = file.pod_pids_limit.unwrap_or(-1);
        let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
        for (field, m) in [
            ("systemReserved", &file.system_reserved),
            ("kubeReserved", &file.kube_reserved),
        ] {
            for (k, v) in m.iter().flatten() {
                let n = match k.as_str() {
                    "cpu" => crate::quantity::milli_cpu(v),
                    "memory" | "pid" | "ephemeral-storage" => crate::quantity::bytes(v),
                    other if other.starts_with("hugepages-") => crate::quantity::bytes(v),
                    other => {
                        return Err(ConfigError::Value(format!(
                            "{field}: unsupported resource {other:?} (cpu, memory, pid, \
                             ephemeral-storage or hugepages-<size>)"
                        )));
                    }
                }
                .map_err(|e| ConfigError::Value(format!("{field}[{k}]: {e}")))?;
                if n < 0 {
                    return Err(ConfigError::Value(format!(
                        "{field}[{k}]: {v:?} must not be negative"
                    )));
                }
                *reserved.entry(k.clone()).or_default() += n;
            }
        }
        let enforce = file
            .enforce_node_allocatable
            .clone()
            .unwrap_or_else(|| vec!["pods".into()]);
        if !cgroups_per_qos && !enforce.is_empty() {
            return Err(ConfigError::Value(
                "enforceNodeAllocatable (--enforce-node-allocatable) is not supported unless \
                 cgroupsPerQOS (--cgroups-per-qos) feature is turned on"
                    .into(),
            ));
        }
        for v in &enforce {
            match v.as_str() {
                "pods" => {}
                "none" if enforce.len() > 1 => {
                    return Err(ConfigError::Value(
                        "enforceNodeAllocatable (--enforce-node-allocatable) may not contain \
                         additional enforcements when \"none\" is specified"
                            .into(),
                    ));
                }
                "none" => {}
                "system-reserved" | "kube-reserved" => {
                    return Err(ConfigError::Value(format!(
                        "enforceNodeAllocatable {v:?} is not implemented yet (only \"pods\" and \
                         \"none\")"
                    )));
                }
                other => {
                    return Err(ConfigError::Value(format!(
                        "option {other:?} specified for enforceNodeAllocatable \
                         (--enforce-node-allocatable). Valid options are \"pods\", \
                         \"system-reserved\", \"kube-reserved\", or \"none\""
                    )));
                }
            }
        }
        let cluster_domain = file.cluster_domain.clone().unwrap_or_default();
        let container_log_max_size = file
            .container_log_max_size
            .clone()
            .unwrap_or_else(|| "10Mi".into());
        let container_log_max_bytes = crate::quantity::bytes(&container_log_max_size)
            .map_err(|e| ConfigError::Value(format!("containerLogMaxSize: {e}")))?;
        let container_log_max_files = file.container_log_max_files.unwrap_or(5);
        // Upstream's validation: at least 2 files. (keelson: a size of 0 turns rotation off.)
        if container_log_max_files < 2 {
            return Err(ConfigError::Value(format!(
                "containerLogMaxFiles: {container_log_max_files} must be greater than 1"
            )));
        }
        if container_log_max_bytes < 0 {
            return Err(ConfigError::Value(format!(
                "containerLogMaxSize: {container_log_max_size:?} must not be negative"
            )));
        }
        let container_log_monitor_interval = dur(
            "containerLogMonitorInterval",
            &file.container_log_monitor_interval,
            Duration::from_secs(10),
        )?;
        if container_log_monitor_interval < Duration::from_secs(3) {
            return Err(ConfigError::Value(
                "containerLogMonitorInterval must be at least 3s".into(),
            ));
        }
        let (container_gc, image_gc, container_gc_period, image_gc_period) =
            gc_config(flags, &file)?;
        let (anonymous_auth, authorization_mode) =
            crate::auth::from_config(file.authentication.as_ref(), file.authorization.as_ref())
                .map_err(ConfigError::Value)?;
        let tls_cert_file = flags.tls_cert_file.clone().or(file.tls_cert_file.clone());
        let tls_private_key_file = flags
            .tls_private_key_file
            .clone()
            .or(file.tls_private_key_file.clone());
        if tls_cert_file.is_some() != tls_private_key_file.is_some() {
            return Err(ConfigError::Value(
                "tlsCertFile and tlsPrivateKeyFile must be given together".into(),
            ));
        }
        Ok(Config {
            root_dir: flags.root_dir.clone(),
            node_name,
            runtime_endpoint,
            image_endpoint,
            static_pod_path: flags
                .pod_manifest_path
                .clone()
                .or(file.static_pod_path.clone())
                .filter(|p| !p.as_os_str().is_empty()),
            pod_logs_dir: file
                .pod_logs_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
            sync_frequency,
            file_check_frequency,
            healthz_port: port("healthzPort", file.healthz_port.unwrap_or(10248))?,
            healthz_bind_address: file
                .healthz_bind_address
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: port("port", file.port.unwrap_or(10250))?,
            address: file.address.clone().unwrap_or_else(|| "0.0.0.0".into()),
            read_only_port: port("readOnlyPort", file.read_only_port.unwrap_or(0))?,
            cgroup_root,
            cgroups_per_qos,
            cpu_cfs_quota: file.cpu_cfs_quota.unwrap_or(true),
            cpu_cfs_period_us: cpu_cfs_quota_period.as_micros() as u64,
            pod_pids_limit,
            reserved,
            enforce_pods_allocatable: enforce.iter().any(|v| v == "pods"),
            max_pods: max_pods as usize,
            resolv_conf: file
                .resolv_conf
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf")),
            cluster_dns: file.cluster_dns.clone().unwrap_or_default(),
            cluster_domain,
            container_log_max_size,
            container_log_max_files,
            container_log_max_bytes: container_log_max_bytes as u64,
            container_log_monitor_interval,
            container_gc,
            image_gc,
            container_gc_period,
            image_gc_period,
            tls_cert_file,
            tls_private_key_file,
            cert_dir: flags.cert_dir.clone(),
            container_log_links_dir: flags.container_log_links_dir.clone(),
            anonymous_auth,
            authorization_mode,
            serialize_image_pulls: file.serialize_image_pulls.unwrap_or(true),
            max_parallel_image_pulls: file.max_parallel_image_pulls,
            eviction_hard: file.eviction_hard.clone().unwrap_or_else(|| {
                [
                    ("memory.available", "100Mi"),
                    ("nodefs.available", "10%"),
                    ("imagefs.available", "15%"),
                    ("nodefs.inodesFree", "5%"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
            }),
            warnings,
        })
    }

    /// `/var/log/pods/<ns>_<name>_<uid>`, upstream's pod log directory.
    pub fn pod_log_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pod_logs_dir.join(format!("{namespace}_{name}_{uid}"))
    }
}

type GcConfig = (
    crate::gc::ContainerPolicy,
    crate::gc::ImagePolicy,
    Duration,
    Duration,
);

/// The garbage collection settings, checked like upstream's `ValidateKubeletConfiguration`.
fn gc_config(flags: &Flags, file: &FileConfig) -> Result<GcConfig, ConfigError> {
    let dur = |name: &str, v: Option<&str>, default: Duration| match v {
        Some(s) if !s.trim().is_empty() => {
            parse_go_duration(s).map_err(|e| ConfigError::Value(format!("{name}: {e}")))
        }
        _ => Ok(default),
    };
    let high = file.image_gc_high_threshold_percent.unwrap_or(85);
    let low = file.image_gc_low_threshold_percent.unwrap_or(80);
    if !(0..=100).contains(&high) {
        return Err(ConfigError::Value(format!(
            "imageGCHighThresholdPercent (--image-gc-high-threshold) {high} must be between 0 and 100, inclusive"
        )));
    }
    if !(0..=100).contains(&low) {
        return Err(ConfigError::Value(format!(
            "imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be between 0 and 100, inclusive"
        )));
    }
    if low >= high {
        return Err(ConfigError::Value(format!(
            "imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}"
        )));
    }
    let min_age = dur(
        "imageMinimumGCAge",
        file.image_minimum_gc_age.as_deref(),
        Duration::from_secs(120),
    )?;
    let max_age = dur(
        "imageMaximumGCAge",
        file.image_maximum_gc_age.as_deref(),
        Duration::ZERO,
    )?;
    if !max_age.is_zero() && max_age <= min_age {
        return Err(ConfigError::Value(format!(
            "imageMaximumGCAge {} must be greater than imageMinimumGCAge {}",
            crate::configz::go_duration(max_age),
            crate::configz::go_duration(min_age)
        )));
    }
    let container = crate::gc::ContainerPolicy {
        min_age: dur(
            "--minimum-container-ttl-duration",
            flags.minimum_container_ttl_duration.as_deref(),
            Duration::ZERO,
        )?,
        max_per_pod_container: flags.maximum_dead_containers_per_container.unwrap_or(1),
        max_containers: flags.maximum_dead_containers.unwrap_or(-1),
    };
    let period = |name: &str, v: Option<&str>, default: Duration| {
        let d = dur(name, v, default)?;
        if d.is_zero() {
            return Err(ConfigError::Value(format!("{name} must be greater than 0")));
        }
        Ok(d)
    };
    Ok((
        container,
        crate::gc::ImagePolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            min_age,
            max_age,
        },
        period(
            "--keelson-container-gc-period",
            flags.keelson_container_gc_period.as_deref(),
            crate::gc::CONTAINER_GC_PERIOD,
        )?,
        period(
            "--keelson-image-gc-period",
            flags.keelson_image_gc_period.as_deref(),
            crate::gc::IMAGE_GC_PERIOD,
        )?,
    ))
}

fn read_file(path: &Path, warnings: &mut Vec<String>) -> Result<FileConfig, ConfigError> {
    let data = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |msg: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let f: FileConfig = serde_norway::from_str(&data).map_err(|e| invalid(e.to_string()))?;
    match f.kind.as_deref() {
        Some("KubeletConfiguration") => {}
        other => {
            return Err(invalid(format!(
                "kind is {other:?}, expected \"KubeletConfiguration\""
            )));
        }
    }
    match f.api_version.as_deref() {
        Some("kubelet.config.k8s.io/v1beta1") | Some("kubelet.config.k8s.io/v1") => {}
        other => {
            return Err(invalid(format!(
                "apiVersion is {other:?}, expected \"kubelet.config.k8s.io/v1beta1\""
            )));
        }
    }
    for k in f.rest.keys() {
        if KNOWN_UNUSED.contains(&k.as_str()) {
            warnings.push(format!(
                "{}: field {k:?} is accepted but not acted on yet",
                path.display()
            ));
        } else {
            return Err(invalid(format!(
                "strict decoding error: unknown field {k:?}"
            )));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_go_duration("1m0s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(parse_go_duration("-1s").is_err());
    }

    fn load_yaml(y: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Value(e.to_string()))?;
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, y).map_err(|e| ConfigError::Value(e.to_string()))?;
        Config::load(&Flags {
            config: Some(p),
            root_dir: "/var/lib/kubelet".into(),
            container_runtime_endpoint: Some("unix:///run/x.sock".into()),
            ..Default::default()
        })
    }

    #[test]
    fn file_and_defaults() {
        let c = load_yaml(
            "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n\
             staticPodPath: /etc/kubernetes/manifests\nfileCheckFrequency: 5s\nport: 0\n\
             authentication: {anonymous: {enabled: true}}\n",
        )
        .expect("config");
        assert_eq!(
            c.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(c.file_check_frequency, Duration::from_secs(5));
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.healthz_port, 10248);
        assert_eq!(c.port, 0);
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.image_endpoint, "unix:///run/x.sock");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.anonymous_auth);
        assert_eq!(c.authorization_mode, "AlwaysAllow");
        assert_eq!(c.container_log_max_bytes, 10 * 1024 * 1024);
        // Upstream's garbage collection defaults.
        assert_eq!(
            c.image_gc,
            crate::gc::ImagePolicy {
                high_threshold_percent: 85,
                low_threshold_percent: 80,
                min_age: Duration::from_secs(120),
                max_age: Duration::ZERO,
            }
        );
        assert_eq!(
            c.container_gc,
            crate::gc::ContainerPolicy {
                min_age: Duration::ZERO,
                max_per_pod_container: 1,
                max_containers: -1,
            }
        );
        assert_eq!(c.container_gc_period, Duration::from_secs(60));
        assert_eq!(c.image_gc_period, Duration::from_secs(300));
    }

    #[test]
    fn bad_files() {
        let head = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n";
        for (body, want) in [
            ("cgroupDriver: systemd\n", "systemd"),
            ("noSuchField: 1\n", "unknown field"),
            ("syncFrequency: 10x\n", "syncFrequency"),
            ("port: 70000\n", "port"),
            ("maxPods: -1\n", "maxPods"),
            ("authorization: {mode: Webhook}\n", "apiserver"),
            ("authentication: {webhook: {enabled: true}}\n", "apiserver"),
            ("containerLogMaxFiles: 1\n", "containerLogMaxFiles"),
            ("containerLogMaxSize: 1Zi\n", "containerLogMaxSize"),
            ("tlsCertFile: /x.crt\n", "together"),
            ("cgroupsPerQOS: false\n", "enforceNodeAllocatable"),
            ("enforceNodeAllocatable: [pods, none]\n", "may not contain"),
            ("enforceNodeAllocatable: [nodes]\n", "Valid options"),
            (
                "enforceNodeAllocatable: [system-reserved]\n",
                "not implemented",
            ),
            ("cpuCFSQuotaPeriod: 2s\n", "between 1ms and 1sec"),
            ("systemReserved: {cpu: lots}\n", "systemReserved[cpu]"),
            ("kubeReserved: {gpus: \"1\"}\n", "unsupported resource"),
            (
                "imageGCHighThresholdPercent: 101\n",
                "imageGCHighThresholdPercent (--image-gc-high-threshold) 101 must be between 0 and 100, inclusive",
            ),
            (
                "imageGCLowThresholdPercent: -1\n",
                "imageGCLowThresholdPercent (--image-gc-low-threshold) -1 must be between 0 and 100",
            ),
            (
                "imageGCHighThresholdPercent: 50\nimageGCLowThresholdPercent: 60\n",
                "imageGCLowThresholdPercent (--image-gc-low-threshold) 60 must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) 50",
            ),
            ("imageMinimumGCAge: 2x\n", "imageMinimumGCAge"),
            (
                "imageMaximumGCAge: 1m\n",
                "imageMaximumGCAge 1m0s must be greater than imageMinimumGCAge 2m0s",
            ),
        ] {
            let e = load_yaml(&format!("{head}{body}")).expect_err(body);
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        let e = load_yaml("kind: Pod\n").expect_err("kind");
        assert!(e.to_string().contains("KubeletConfiguration"), "{e}");
    }
}
