//! Upstream's API defaults for the pod fields the kubelet reads (`SetDefaults_Pod` and friends).

use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The image pull policy upstream defaults to: `Always` for `:latest` or no tag, else
/// `IfNotPresent` (a digest counts as a tag).
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Container) {
    if c.image_pull_policy.as_deref().is_none_or(str::is_empty) {
        c.image_pull_policy = Some(image_pull_policy(c.image.as_deref().unwrap_or("")).into());
    }
    if c.termination_message_path
        .as_deref()
        .is_none_or(str::is_empty)
    {
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    if c.termination_message_policy
        .as_deref()
        .is_none_or(str::is_empty)
    {
        c.termination_message_policy = Some("File".into());
    }
    for p in c.ports.iter_mut().flatten() {
        if p.protocol.as_deref().is_none_or(str::is_empty) {
            p.protocol = Some("TCP".into());
        }
    }
}

pub fn pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.as_deref().is_none_or(str::is_empty) {
        spec.restart_policy = Some("Always".into());
    }
    if spec.dns_policy.as_deref().is_none_or(str::is_empty) {
        spec.dns_policy = Some("ClusterFirst".into());
    }
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(30);
    }
    if spec.scheduler_name.as_deref().is_none_or(str::is_empty) {
        spec.scheduler_name = Some("default-scheduler".into());
    }
    if spec.enable_service_links.is_none() {
        spec.enable_service_links = Some(true);
    }
    if spec.security_context.is_none() {
        spec.security_context = Some(Default::default());
    }
    spec.containers.iter_mut().for_each(container);
    spec.init_containers
        .iter_mut()
        .flatten()
        .for_each(container);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy() {
        assert_eq!(image_pull_policy("busybox"), "Always");
        assert_eq!(image_pull_policy("busybox:latest"), "Always");
        assert_eq!(image_pull_policy("127.0.0.1:5000/kt/busybox"), "Always");
        assert_eq!(
            image_pull_policy("127.0.0.1:5000/kt/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(image_pull_policy("busybox@sha256:00"), "IfNotPresent");
    }
}
