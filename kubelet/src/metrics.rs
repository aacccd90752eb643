//! The kubelet's own metrics (`/metrics`, Prometheus text format 0.0.4) with upstream's names,
//! label names and histogram buckets (pkg/kubelet/metrics); the help texts are ours.
//!
//! The text format is written here rather than with the `prometheus-client` crate: the few
//! families the kubelet has (counters, gauges, histograms with fixed buckets) take less code
//! than the crate's registry and encoder wiring, and the exact output (upstream's metric and
//! label names, `le` values) stays visible in one place.
//!
//! Metrics live in one process-wide [`METRICS`] so that the pod workers, the PLEG and the CRI
//! client can record without threading a handle through.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Prometheus' default buckets (`prometheus.DefBuckets`).
pub const DEF_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upstream's buckets of `kubelet_runtime_operations_duration_seconds`:
/// `prometheus.ExponentialBuckets(.005, 2.5, 14)`.
pub const RUNTIME_OP_BUCKETS: &[f64] = &[
    0.005,
    0.0125,
    0.03125,
    0.078125,
    0.1953125,
    0.48828125,
    1.220703125,
    3.0517578125,
    7.62939453125,
    19.073486328125,
    47.6837158203125,
    119.20928955078125,
    298.0232238769531,
    745.0580596923828,
];
/// Upstream's `podStartupDurationBuckets`.
pub const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

pub struct Metrics {
    pod_start: Mutex<Histogram>,
    /// By operation_type (create, update, sync).
    pod_worker: Mutex<BTreeMap<String, Histogram>>,
    pleg_relist_duration: Mutex<Histogram>,
    pleg_relist_interval: Mutex<Histogram>,
    /// By operation_type.
    runtime_ops: Mutex<BTreeMap<String, u64>>,
    runtime_errors: Mutex<BTreeMap<String, u64>>,
    /// By operation_type.
    runtime_durations: Mutex<BTreeMap<String, Histogram>>,
    /// By container_type (container, init_container).
    started_containers: Mutex<BTreeMap<String, u64>>,
    started_container_errors: Mutex<BTreeMap<(String, String), u64>>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    pod_start: Mutex::new(Histogram::new(POD_START_BUCKETS)),
    pod_worker: Mutex::new(BTreeMap::new()),
    pleg_relist_duration: Mutex::new(Histogram::new(DEF_BUCKETS)),
    pleg_relist_interval: Mutex::new(Histogram::new(DEF_BUCKETS)),
    runtime_ops: Mutex::new(BTreeMap::new()),
    runtime_errors: Mutex::new(BTreeMap::new()),
    runtime_durations: Mutex::new(BTreeMap::new()),
    started_containers: Mutex::new(BTreeMap::new()),
    started_container_errors: Mutex::new(BTreeMap::new()),
});

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// From the kubelet seeing a pod (config.seen) to the pod running.
pub fn pod_started(d: Duration) {
    lock(&METRICS.pod_start).observe(d.as_secs_f64());
}

/// One pod sync; `op` is create (first sync), update (after a spec change) or sync.
pub fn pod_worker(op: &str, d: Duration) {
    lock(&METRICS.pod_worker)
        .entry(op.to_string())
        .or_insert_with(|| Histogram::new(DEF_BUCKETS))
        .observe(d.as_secs_f64());
}

pub fn pleg_relist(duration: Duration, interval: Option<Duration>) {
    lock(&METRICS.pleg_relist_duration).observe(duration.as_secs_f64());
    if let Some(i) = interval {
        lock(&METRICS.pleg_relist_interval).observe(i.as_secs_f64());
    }
}

/// Observes kubelet_pod_start_duration_seconds when a pod turns from Pending to Running
/// (upstream: from the `kubernetes.io/config.seen` time; that annotation has seconds).
pub fn pod_status_changed(
    pod: &k8s_openapi::api::core::v1::Pod,
    old: Option<&k8s_openapi::api::core::v1::PodStatus>,
    new: &k8s_openapi::api::core::v1::PodStatus,
) {
    let was = old.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if was != "Pending" || new.phase.as_deref() != Some("Running") {
        return;
    }
    let seen = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::source::CONFIG_SEEN))
        .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok());
    if let Some(seen) = seen {
        let ns = crate::now_ns() - seen.as_nanosecond() as i64;
        pod_started(Duration::from_nanos(ns.max(0) as u64));
    }
}

/// A container start attempt; `kind` is the kubelet's "init"/"app"; `err` the gRPC code of
/// a failed start.
pub fn container_started(kind: &str, err: Option<tonic::Code>) {
    let err = err.map(|c| format!("{c:?}"));
    let err = err.as_deref();
    let t = if kind == "init" {
        "init_container"
    } else {
        "container"
    };
    *lock(&METRICS.started_containers)
        .entry(t.to_string())
        .or_default() += 1;
    if let Some(code) = err {
        *lock(&METRICS.started_container_errors)
            .entry((code.to_string(), t.to_string()))
            .or_default() += 1;
    }
}

fn runtime_op(op: &str, failed: bool, took: Duration) {
    *lock(&METRICS.runtime_ops)
        .entry(op.to_string())
        .or_default() += 1;
    lock(&METRICS.runtime_durations)
        .entry(op.to_string())
        .or_insert_with(|| Histogram::new(RUNTIME_OP_BUCKETS))
        .observe(took.as_secs_f64());
    if failed {
        *lock(&METRICS.runtime_errors)
            .entry(op.to_string())
            .or_default() += 1;
    }
}

/// Upstream's operation_type of a CRI method: `/runtime.v1.RuntimeService/ListPodSandbox` →
/// `list_podsandbox`.
pub fn operation_type(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or(path);
    let mut out = String::new();
    for (i, ch) in method.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out.replace("pod_sandbox", "podsandbox")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} [ALPHA] {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label value escaping of the text format.
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What `/metrics` shows besides the recorded families: gauges computed at scrape time.
pub struct Gauges {
    pub node_name: String,
    pub running_pods: u64,
    /// container_state (created, running, exited, unknown) → count.
    pub containers: BTreeMap<&'static str, u64>,
}

pub fn render(g: &Gauges) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "kubelet_node_name",
        "gauge",
        "The node's name; the value is always 1.",
    );
    let _ = writeln!(out, "kubelet_node_name{{node=\"{}\"}} 1", esc(&g.node_name));
    family(
        &mut out,
        "kubelet_pleg_relist_duration_seconds",
        "histogram",
        "Seconds one PLEG relist of the runtime took.",
    );
    lock(&METRICS.pleg_relist_duration).render(
        &mut out,
        "kubelet_pleg_relist_duration_seconds",
        "",
    );
    family(
        &mut out,
        "kubelet_pleg_relist_interval_seconds",
        "histogram",
        "Seconds between the starts of two PLEG relists.",
    );
    lock(&METRICS.pleg_relist_interval).render(
        &mut out,
        "kubelet_pleg_relist_interval_seconds",
        "",
    );
    family(
        &mut out,
        "kubelet_pod_start_duration_seconds",
        "histogram",
        "Seconds from the kubelet first seeing a pod to the pod running.",
    );
    lock(&METRICS.pod_start).render(&mut out, "kubelet_pod_start_duration_seconds", "");
    family(
        &mut out,
        "kubelet_pod_worker_duration_seconds",
        "histogram",
        "Seconds one sync of one pod took, by operation type (create, update, sync).",
    );
    for (op, h) in lock(&METRICS.pod_worker).iter() {
        h.render(
            &mut out,
            "kubelet_pod_worker_duration_seconds",
            &format!("operation_type=\"{}\"", esc(op)),
        );
    }
    family(
        &mut out,
        "kubelet_running_pods",
        "gauge",
        "Pods that have a ready sandbox.",
    );
    let _ = writeln!(out, "kubelet_running_pods {}", g.running_pods);
    family(
        &mut out,
        "kubelet_running_containers",
        "gauge",
        "Containers the runtime has, by state.",
    );
    for (state, n) in &g.containers {
        let _ = writeln!(
            out,
            "kubelet_running_containers{{container_state=\"{state}\"}} {n}"
        );
    }
    family(
        &mut out,
        "kubelet_runtime_operations_total",
        "counter",
        "CRI calls made, by operation type.",
    );
    for (op, n) in lock(&METRICS.runtime_ops).iter() {
        let _ = writeln!(
            out,
            "kubelet_runtime_operations_total{{operation_type=\"{}\"}} {n}",
            esc(op)
        );
    }
    family(
        &mut out,
        "kubelet_runtime_operations_duration_seconds",
        "histogram",
        "Duration of CRI calls in seconds, by operation type.",
    );
    for (op, h) in lock(&METRICS.runtime_durations).iter() {
        h.render(
            &mut out,
            "kubelet_runtime_operations_duration_seconds",
            &format!("operation_type=\"{}\"", esc(op)),
        );
    }
    family(
        &mut out,
        "kubelet_runtime_operations_errors_total",
        "counter",
        "CRI calls that failed, by operation type.",
    );
    for (op, n) in lock(&METRICS.runtime_errors).iter() {
        let _ = writeln!(
            out,
            "kubelet_runtime_operations_errors_total{{operation_type=\"{}\"}} {n}",
            esc(op)
        );
    }
    family(
        &mut out,
        "kubelet_started_containers_total",
        "counter",
        "Containers started, by container type.",
    );
    for (t, n) in lock(&METRICS.started_containers).iter() {
        let _ = writeln!(
            out,
            "kubelet_started_containers_total{{container_type=\"{t}\"}} {n}"
        );
    }
    family(
        &mut out,
        "kubelet_started_containers_errors_total",
        "counter",
        "Container starts that failed, by error code and container type.",
    );
    for ((code, t), n) in lock(&METRICS.started_container_errors).iter() {
        let _ = writeln!(
            out,
            "kubelet_started_containers_errors_total{{code=\"{}\",container_type=\"{t}\"}} {n}",
            esc(code)
        );
    }
    out
}

/// The CRI channel with every call counted in `kubelet_runtime_operations_total` (and, when
/// it fails, `_errors_total`) and timed in `kubelet_runtime_operations_duration_seconds`
/// (until the response headers: a whole unary call, a stream's opening), like upstream's
/// instrumented runtime service.
#[derive(Clone, Debug)]
pub struct Instrumented {
    pub inner: tonic::transport::Channel,
}

type Body = tonic::body::Body;

impl tower_service::Service<http::Request<Body>> for Instrumented {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let op = operation_type(req.uri().path());
        let start = std::time::Instant::now();
        let fut = tower_service::Service::call(&mut self.inner, req);
        Box::pin(async move {
            let r = fut.await;
            // Unary errors come back trailers-only: grpc-status is in the headers.
            let failed = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v.as_bytes() != b"0"),
                Err(_) => true,
            };
            runtime_op(&op, failed, start.elapsed());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_types_like_upstream() {
        assert_eq!(
            operation_type("/runtime.v1.RuntimeService/ListPodSandbox"),
            "list_podsandbox"
        );
        assert_eq!(
            operation_type("/runtime.v1.RuntimeService/ContainerStatus"),
            "container_status"
        );
        assert_eq!(
            operation_type("/runtime.v1.ImageService/PullImage"),
            "pull_image"
        );
    }

    #[test]
    fn histogram_text() {
        static B: &[f64] = &[0.5, 1.0];
        let mut h = Histogram::new(B);
        h.observe(0.25);
        h.observe(0.75);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert_eq!(
            out,
            "x_bucket{a=\"b\",le=\"0.5\"} 1\nx_bucket{a=\"b\",le=\"1\"} 2\nx_bucket{a=\"b\",le=\"+Inf\"} 3\nx_sum{a=\"b\"} 4\nx_count{a=\"b\"} 3\n"
        );
    }
}
