//! `/configz`: the effective KubeletConfiguration as upstream serves it,
//! `{"kubeletconfig": {...}}` with the v1beta1 JSON field names, durations in Go's format.

use crate::config::Config;
use serde_json::{Value, json};
use std::time::Duration;

/// Go's `time.Duration.String()`: "1m0s", "20s", "1h0m0s", "300ms", "0s".
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        return if ns % 1_000_000 == 0 {
            format!("{}ms", ns / 1_000_000)
        } else if ns % 1000 == 0 {
            format!("{}µs", ns / 1000)
        } else {
            format!("{ns}ns")
        };
    }
    let total = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{:09}", frac);
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

pub fn configz(c: &Config) -> Value {
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let mut k = json!({
        "enableServer": true,
        "staticPodPath": path(&c.static_pod_path),
        "podLogsDir": c.pod_logs_dir.display().to_string(),
        "syncFrequency": go_duration(c.sync_frequency),
        "fileCheckFrequency": go_duration(c.file_check_frequency),
        "address": c.address,
        "port": c.port,
        "readOnlyPort": c.read_only_port,
        "tlsCertFile": path(&c.tls_cert_file),
        "tlsPrivateKeyFile": path(&c.tls_private_key_file),
        "authentication": {
            "x509": {},
            "webhook": {"enabled": false, "cacheTTL": "2m0s"},
            "anonymous": {"enabled": c.anonymous_auth},
        },
        "authorization": {
            "mode": c.authorization_mode,
            "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"},
        },
        "healthzPort": c.healthz_port,
        "healthzBindAddress": c.healthz_bind_address,
        "clusterDomain": c.cluster_domain,
        "clusterDNS": c.cluster_dns,
        "cgroupRoot": c.cgroup_root,
        "cgroupsPerQOS": c.cgroups_per_qos,
        "cgroupDriver": "cgroupfs",
        "maxPods": c.max_pods,
        "resolvConf": c.resolv_conf.display().to_string(),
        "serializeImagePulls": c.serialize_image_pulls,
        "evictionHard": c.eviction_hard,
        "containerLogMaxSize": c.container_log_max_size,
        "containerLogMaxFiles": c.container_log_max_files,
        "containerLogMonitorInterval": go_duration(c.container_log_monitor_interval),
        "imageGCHighThresholdPercent": c.image_gc.high_threshold_percent,
        "imageGCLowThresholdPercent": c.image_gc.low_threshold_percent,
        "imageMinimumGCAge": go_duration(c.image_gc.min_age),
        "imageMaximumGCAge": go_duration(c.image_gc.max_age),
        "containerRuntimeEndpoint": c.runtime_endpoint,
        "imageServiceEndpoint": c.image_endpoint,
    });
    if let Some(n) = c.max_parallel_image_pulls
        && let Some(o) = k.as_object_mut()
    {
        o.insert("maxParallelImagePulls".into(), n.into());
    }
    json!({ "kubeletconfig": k })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (d, want) in [
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(20), "20s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(5430), "1h30m30s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(go_duration(d), want);
        }
        for s in ["1m0s", "20s", "1h30m30s", "1.5s"] {
            let d = crate::config::parse_go_duration(s).expect("parse");
            assert_eq!(go_duration(d), s);
        }
    }
}
