//! Checks a static pod must pass before the kubelet runs it (a subset of upstream's
//! `ValidatePodCreate`), and strict decoding (no unknown fields).

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::HashSet;

/// A DNS-1123 label: lower-case alphanumerics and '-', at most 63, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Every key of `original` (with a non-null value) must survive a round trip through the
/// typed Pod: a key that does not is a field the Pod type does not have.
pub fn known_fields(original: &Value) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(original.clone()).map_err(|e| e.to_string())?;
    let typed = serde_json::to_value(&pod).map_err(|e| e.to_string())?;
    fn walk(path: &str, orig: &Value, typed: &Value) -> Result<(), String> {
        match (orig, typed) {
            (Value::Object(o), Value::Object(t)) => {
                for (k, v) in o {
                    if v.is_null() {
                        continue;
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match t.get(k) {
                        Some(tv) => walk(&p, v, tv)?,
                        None => {
                            return Err(format!("strict decoding error: unknown field \"{p}\""));
                        }
                    }
                }
                Ok(())
            }
            (Value::Array(o), Value::Array(t)) => {
                for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                    walk(&format!("{path}[{i}]"), ov, tv)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk("", original, &typed)
}

/// What upstream's validation would refuse and the kubelet depends on.
pub fn pod(pod: &Pod) -> Result<(), String> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if !is_dns_subdomain(name) {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        ));
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    if !is_dns_label(ns) {
        return Err(format!("metadata.namespace: Invalid value: {ns:?}"));
    }
    let spec = pod.spec.as_ref().ok_or("spec: Required value")?;
    if spec.containers.is_empty() {
        return Err("spec.containers: Required value".into());
    }
    match spec.restart_policy.as_deref() {
        Some("Always" | "OnFailure" | "Never") => {}
        other => return Err(format!("spec.restartPolicy: Unsupported value: {other:?}")),
    }
    match spec.dns_policy.as_deref() {
        Some("ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None") => {}
        other => return Err(format!("spec.dnsPolicy: Unsupported value: {other:?}")),
    }
    if spec.dns_policy.as_deref() == Some("None") && spec.dns_config.is_none() {
        return Err(
            "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
                .into(),
        );
    }
    if let Some(psc) = &spec.security_context {
        match psc.supplemental_groups_policy.as_deref() {
            None | Some("Merge" | "Strict") => {}
            Some(other) => {
                return Err(format!(
                    "spec.securityContext.supplementalGroupsPolicy: Unsupported value: {other:?}: supported values: \"Merge\", \"Strict\""
                ));
            }
        }
        match psc.fs_group_change_policy.as_deref() {
            None | Some("OnRootMismatch" | "Always") => {}
            Some(other) => {
                return Err(format!(
                    "spec.securityContext.fsGroupChangePolicy: Unsupported value: {other:?}: supported values: \"OnRootMismatch\", \"Always\""
                ));
            }
        }
        if let Some(g) = psc.fs_group
            && !(0..=i64::from(i32::MAX)).contains(&g)
        {
            return Err(format!(
                "spec.securityContext.fsGroup: Invalid value: {g}: must be between 0 and 2147483647, inclusive"
            ));
        }
    }
    if spec.termination_grace_period_seconds.is_some_and(|g| g < 0) {
        return Err("spec.terminationGracePeriodSeconds: must be non-negative".into());
    }
    let mut seen = HashSet::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    for (i, (field, c)) in all.enumerate() {
        if !is_dns_label(&c.name) {
            return Err(format!(
                "spec.{field}[{i}].name: Invalid value: {:?}",
                c.name
            ));
        }
        if !seen.insert(c.name.clone()) {
            return Err(format!(
                "spec.{field}[{i}].name: Duplicate value: {:?}",
                c.name
            ));
        }
        if c.image.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Err(format!("spec.{field}[{i}].image: Required value"));
        }
        match c.image_pull_policy.as_deref() {
            Some("Always" | "IfNotPresent" | "Never") => {}
            other => {
                return Err(format!(
                    "spec.{field}[{i}].imagePullPolicy: Unsupported value: {other:?}"
                ));
            }
        }
        if let Some(rp) = c.restart_policy.as_deref()
            && (field != "initContainers" || rp != "Always")
        {
            return Err(format!(
                "spec.{field}[{i}].restartPolicy: Unsupported value: {rp:?}"
            ));
        }
        probes_and_hooks(&format!("spec.{field}[{i}]"), field, c)?;
        for p in c.ports.iter().flatten() {
            if !(1..=65535).contains(&p.container_port) {
                return Err(format!(
                    "spec.{field}[{i}].ports: containerPort {} must be between 1 and 65535",
                    p.container_port
                ));
            }
        }
        if let Some(r) = &c.resources {
            for q in r
                .limits
                .iter()
                .chain(r.requests.iter())
                .flat_map(|m| m.iter())
            {
                crate::quantity::parse(&q.1.0)
                    .map_err(|e| format!("spec.{field}[{i}].resources.{}: {e}", q.0))?;
            }
        }
    }
    crate::volumes::validate(spec)?;
    Ok(())
}

fn handler_count(
    exec: bool,
    http: bool,
    tcp: bool,
    grpc: bool,
    sleep: bool,
    path: &str,
) -> Result<(), String> {
    match [exec, http, tcp, grpc, sleep]
        .iter()
        .filter(|b| **b)
        .count()
    {
        1 => Ok(()),
        0 => Err(format!(
            "{path}: Required value: must specify a handler type"
        )),
        _ => Err(format!(
            "{path}: Forbidden: may not specify more than 1 handler type"
        )),
    }
}

fn port_ok(p: &IntOrString, path: &str) -> Result<(), String> {
    match p {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(()),
        IntOrString::String(s) if is_port_name(s) => Ok(()),
        _ => Err(format!(
            "{path}.port: Invalid value: {p:?}: must be a port number between 1 and 65535 or a port name"
        )),
    }
}

/// An IANA_SVC_NAME: at most 15 lower-case alphanumerics and '-', at least one letter.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Upstream's probe and lifecycle handler checks.
fn probes_and_hooks(path: &str, field: &str, c: &Container) -> Result<(), String> {
    let sidecar = c.restart_policy.as_deref() == Some("Always");
    let probes = [
        ("startupProbe", &c.startup_probe),
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
    ];
    for (name, p) in probes {
        let Some(p) = p else { continue };
        let at = format!("{path}.{name}");
        if field == "initContainers" && !sidecar {
            return Err(format!(
                "{at}: Forbidden: may not be set for init containers without restartPolicy=Always"
            ));
        }
        handler_count(
            p.exec.is_some(),
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
            p.grpc.is_some(),
            false,
            &at,
        )?;
        for (f, v) in [
            ("initialDelaySeconds", p.initial_delay_seconds),
            ("timeoutSeconds", p.timeout_seconds),
            ("periodSeconds", p.period_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(format!(
                    "{at}.{f}: Invalid value: {}: must be greater than or equal to 0",
                    v.unwrap_or(0)
                ));
            }
        }
        if name != "readinessProbe" && p.success_threshold.is_some_and(|v| v != 1) {
            return Err(format!(
                "{at}.successThreshold: Invalid value: {}: must be 1",
                p.success_threshold.unwrap_or(0)
            ));
        }
        if name == "readinessProbe" && p.termination_grace_period_seconds.is_some() {
            return Err(format!(
                "{at}.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes"
            ));
        }
        if p.termination_grace_period_seconds.is_some_and(|v| v <= 0) {
            return Err(format!(
                "{at}.terminationGracePeriodSeconds: Invalid value: must be greater than 0"
            ));
        }
        if let Some(h) = &p.http_get {
            port_ok(&h.port, &format!("{at}.httpGet"))?;
        }
        if let Some(t) = &p.tcp_socket {
            port_ok(&t.port, &format!("{at}.tcpSocket"))?;
        }
        if let Some(g) = &p.grpc {
            port_ok(&IntOrString::Int(g.port), &format!("{at}.grpc"))?;
        }
    }
    if let Some(l) = &c.lifecycle {
        if field == "initContainers" && !sidecar {
            return Err(format!(
                "{path}.lifecycle: Forbidden: may not be set for init containers without restartPolicy=Always"
            ));
        }
        for (name, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
            let Some(h) = h else { continue };
            let at = format!("{path}.lifecycle.{name}");
            handler_count(
                h.exec.is_some(),
                h.http_get.is_some(),
                h.tcp_socket.is_some(),
                false,
                h.sleep.is_some(),
                &at,
            )?;
            if let Some(g) = &h.http_get {
                port_ok(&g.port, &format!("{at}.httpGet"))?;
            }
            if let Some(s) = &h.sleep
                && s.seconds < 0
            {
                return Err(format!(
                    "{at}.sleep.seconds: Invalid value: {}: must be greater than or equal to 0",
                    s.seconds
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("a..b"));
    }

    fn load(y: &str) -> Result<Pod, String> {
        let mut p = crate::source::decode(y)?;
        crate::source::apply_defaults(&mut p, std::path::Path::new("/m/a.yaml"), "n")?;
        pod(&p)?;
        Ok(p)
    }

    #[test]
    fn probes_and_hooks_are_checked() {
        let check = |extra: &str| {
            let y = format!(
                "kind: Pod\napiVersion: v1\nmetadata: {{name: a}}\nspec:\n  containers:\n  - name: c\n    image: i\n{extra}"
            );
            load(&y)
        };
        check("    livenessProbe: {exec: {command: [\"true\"]}, periodSeconds: 1}\n")
            .expect("valid");
        check("    lifecycle: {preStop: {sleep: {seconds: 1}}}\n").expect("valid");
        let e = check("    livenessProbe: {exec: {command: [\"true\"]}, successThreshold: 2}\n")
            .expect_err("successThreshold");
        assert!(e.contains("livenessProbe.successThreshold"), "{e}");
        let e = check("    readinessProbe: {periodSeconds: 1}\n").expect_err("no handler");
        assert!(e.contains("must specify a handler type"), "{e}");
        let e = check("    startupProbe: {exec: {command: [\"true\"]}, tcpSocket: {port: 80}}\n")
            .expect_err("two handlers");
        assert!(
            e.contains("may not specify more than 1 handler type"),
            "{e}"
        );
        let e = check("    readinessProbe: {httpGet: {port: Bad_Name}}\n").expect_err("port");
        assert!(e.contains("readinessProbe.httpGet.port"), "{e}");
        let e = check("    lifecycle: {postStart: {sleep: {seconds: -1}}}\n").expect_err("sleep");
        assert!(e.contains("sleep.seconds"), "{e}");
        let init = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec:\n  initContainers:\n  - name: i\n    image: i\n    livenessProbe: {exec: {command: [\"true\"]}}\n  containers:\n  - {name: c, image: i}\n";
        let e = load(init).expect_err("init probe");
        assert!(e.contains("restartPolicy=Always"), "{e}");
        let sidecar = init.replace(
            "    livenessProbe",
            "    restartPolicy: Always\n    livenessProbe",
        );
        load(&sidecar).expect("sidecar with probes");
        let bad = init.replace(
            "    livenessProbe: {exec: {command: [\"true\"]}}\n",
            "    restartPolicy: OnFailure\n",
        );
        let e = load(&bad).expect_err("init restartPolicy");
        assert!(e.contains("restartPolicy: Unsupported value"), "{e}");
    }

    #[test]
    fn pod_security_context_values_are_checked() {
        let pod = |sc: &str| {
            format!(
                "kind: Pod\napiVersion: v1\nmetadata: {{name: a}}\nspec:\n  securityContext: {sc}\n  containers:\n  - {{name: c, image: i}}\n"
            )
        };
        load(&pod(
            "{fsGroup: 1234, supplementalGroupsPolicy: Strict, fsGroupChangePolicy: Always}",
        ))
        .expect("valid");
        let e = load(&pod("{supplementalGroupsPolicy: Loose}")).expect_err("policy");
        assert!(
            e.contains(
                "spec.securityContext.supplementalGroupsPolicy: Unsupported value: \"Loose\""
            ),
            "{e}"
        );
        let e = load(&pod("{fsGroupChangePolicy: Never}")).expect_err("change policy");
        assert!(e.contains("fsGroupChangePolicy: Unsupported value"), "{e}");
        let e = load(&pod("{fsGroup: -1}")).expect_err("negative");
        assert!(
            e.contains("spec.securityContext.fsGroup: Invalid value: -1"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let v: Value = serde_json::json!({"kind":"Pod","apiVersion":"v1","metadata":{"name":"x"},
            "spec":{"containers":[{"name":"c","image":"i","imagePullPolicy":"Always","bogus":1}]}});
        let e = known_fields(&v).expect_err("bogus");
        assert!(e.contains("spec.containers[0].bogus"), "{e}");
        let ok: Value = serde_json::json!({"kind":"Pod","apiVersion":"v1","metadata":{"name":"x","labels":{"a":"b"}},
            "spec":{"containers":[{"name":"c","image":"i","env":[],"resources":{"limits":{"cpu":"1"}}}]}});
        known_fields(&ok).expect("known");
    }
}
