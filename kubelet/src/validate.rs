//! Checks a static pod must pass before the kubelet runs it (a subset of upstream's
//! `ValidatePodCreate`), and strict decoding (no unknown fields).

use k8s_openapi::api::core::v1::Pod;
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
        if let Some(rp) = c.restart_policy.as_deref() {
            if field != "initContainers" || rp != "Always" {
                return Err(format!(
                    "spec.{field}[{i}].restartPolicy: Unsupported value: {rp:?}"
                ));
            }
            return Err(format!(
                "spec.{field}[{i}].restartPolicy: sidecar containers (restartPolicy \"Always\" on an init container) are not supported by this kubelet yet"
            ));
        }
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
