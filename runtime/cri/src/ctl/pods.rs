//! Pod commands: `runp`, `pods`, `inspectp`, `stopp`, `rmp`.

use super::cli::{IdsArgs, InspectpArgs, PodFilterArgs, PodsArgs, RmpArgs, RunpArgs};
use super::display::{Pattern, Table, ago, pretty, rfc3339, truncate_id};
use super::protojson::{PROTOJSON, to_json};
use super::status::{StatusData, render_statuses};
use super::{Ctl, Output, config, out, output_format, parse_labels};
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use std::time::Duration;

/// crictl's word for a pod state.
pub fn pod_state(state: i32) -> &'static str {
    match pb::PodSandboxState::try_from(state) {
        Ok(pb::PodSandboxState::SandboxReady) => "Ready",
        Ok(pb::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

/// Runs a pod; the deadline is `cancel` or twice the global timeout (as the kubelet's
/// CRI client gives sandbox requests).
pub async fn run_pod_sandbox(
    ctl: &Ctl,
    config: pb::PodSandboxConfig,
    runtime_handler: &str,
    cancel: Option<Duration>,
) -> Result<String> {
    let t = Some(cancel.unwrap_or(ctl.timeout * 2));
    let mut c = ctl.runtime().await?;
    let msg = pb::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: runtime_handler.to_string(),
    };
    let r = ctl
        .call(
            "RunPodSandbox",
            t,
            c.run_pod_sandbox(ctl.req("RunPodSandbox", msg, t)),
        )
        .await?;
    Ok(r.pod_sandbox_id)
}

pub async fn runp(ctl: &Ctl, a: &RunpArgs) -> Result<()> {
    let cfg = config::load_pod_config(&a.config).context("load podSandboxConfig")?;
    let id = run_pod_sandbox(ctl, cfg, &a.runtime, a.cancel_timeout)
        .await
        .context("run pod sandbox")?;
    out(&format!("{id}\n"))
}

/// Lists pods: the runtime filters by ID, state and labels; names and namespaces are
/// matched here; newest first, cut by `--latest`/`--last`.
pub async fn list_pods(
    ctl: &Ctl,
    id: Option<&str>,
    f: &PodFilterArgs,
) -> Result<Vec<pb::PodSandbox>> {
    let name = f
        .name
        .as_deref()
        .map(Pattern::new)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let namespace = f
        .namespace
        .as_deref()
        .map(Pattern::new)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let state = match f.state.as_deref().map(str::to_lowercase).as_deref() {
        None => None,
        Some("ready") => Some(pb::PodSandboxState::SandboxReady),
        Some("notready") => Some(pb::PodSandboxState::SandboxNotready),
        Some(s) => bail!("--state should be ready or notready, not {s:?}"),
    };
    let filter = pb::PodSandboxFilter {
        id: id.unwrap_or_default().to_string(),
        state: state.map(|s| pb::PodSandboxStateValue { state: s as i32 }),
        label_selector: parse_labels(&f.label)?,
    };
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ListPodSandboxRequest {
        filter: Some(filter),
    };
    let r = ctl
        .call(
            "ListPodSandbox",
            t,
            c.list_pod_sandbox(ctl.req("ListPodSandbox", msg, t)),
        )
        .await
        .context("call list sandboxes RPC")?;
    let mut pods: Vec<pb::PodSandbox> = r
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.as_ref().is_some_and(|m| {
                name.as_ref().is_none_or(|n| n.is_match(&m.name))
                    && namespace.as_ref().is_none_or(|n| n.is_match(&m.namespace))
            })
        })
        .collect();
    pods.sort_by_key(|p| std::cmp::Reverse(p.created_at));
    let mut n = pods.len();
    if f.latest {
        n = 1;
    }
    if f.last > 0 {
        n = f.last;
    }
    pods.truncate(n);
    Ok(pods)
}

fn runtime_handler(p: &pb::PodSandbox) -> &str {
    if p.runtime_handler.is_empty() {
        "(default)"
    } else {
        &p.runtime_handler
    }
}

fn sorted_map(m: &std::collections::HashMap<String, String>, title: &str, s: &mut String) {
    if m.is_empty() {
        return;
    }
    s.push_str(title);
    s.push_str(":\n");
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    for k in keys {
        s.push_str(&format!("\t{k} -> {}\n", m[k]));
    }
}

pub async fn pods(ctl: &Ctl, a: &PodsArgs) -> Result<()> {
    let format = output_format(&a.output)?;
    let pods = list_pods(ctl, a.id.as_deref(), &a.filter)
        .await
        .context("listing pod sandboxes")?;
    if format == Output::Json {
        let v = to_json(
            &pb::ListPodSandboxResponse { items: pods },
            "runtime.v1.ListPodSandboxResponse",
            PROTOJSON,
        )
        .map_err(|e| anyhow!(e))?;
        return out(&format!("{}\n", pretty(&v)));
    }
    let mut table = Table::new();
    let mut text = String::new();
    if !a.verbose && !a.quiet {
        table.row([
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME",
        ]);
    }
    for p in &pods {
        if a.quiet {
            text.push_str(&format!("{}\n", p.id));
            continue;
        }
        let m = p.metadata.clone().unwrap_or_default();
        if !a.verbose {
            let id = if a.no_trunc {
                p.id.clone()
            } else {
                truncate_id(&p.id, "")
            };
            table.row([
                id,
                ago(p.created_at),
                pod_state(p.state).to_string(),
                m.name,
                m.namespace,
                m.attempt.to_string(),
                runtime_handler(p).to_string(),
            ]);
            continue;
        }
        text.push_str(&format!("ID: {}\n", p.id));
        if !m.name.is_empty() {
            text.push_str(&format!("Name: {}\n", m.name));
        }
        if !m.uid.is_empty() {
            text.push_str(&format!("UID: {}\n", m.uid));
        }
        if !m.namespace.is_empty() {
            text.push_str(&format!("Namespace: {}\n", m.namespace));
        }
        if m.attempt != 0 {
            text.push_str(&format!("Attempt: {}\n", m.attempt));
        }
        text.push_str(&format!("Status: {}\n", pod_state(p.state)));
        text.push_str(&format!("Created: {}\n", rfc3339(p.created_at)));
        sorted_map(&p.labels, "Labels", &mut text);
        sorted_map(&p.annotations, "Annotations", &mut text);
        text.push_str(&format!("Runtime: {}\n\n", runtime_handler(p)));
    }
    out(&text)?;
    out(&table.render())
}

/// The status of one pod (an unknown ID is the runtime's NotFound).
pub async fn pod_status(
    ctl: &Ctl,
    id: &str,
    verbose: bool,
) -> Result<pb::PodSandboxStatusResponse> {
    if id.is_empty() {
        bail!("ID cannot be empty");
    }
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::PodSandboxStatusRequest {
        pod_sandbox_id: id.to_string(),
        verbose,
    };
    ctl.call(
        "PodSandboxStatus",
        t,
        c.pod_sandbox_status(ctl.req("PodSandboxStatus", msg, t)),
    )
    .await
}

pub async fn inspectp(ctl: &Ctl, a: &InspectpArgs) -> Result<()> {
    let format = output_format(a.output.as_deref().unwrap_or("json"))?;
    let mut ids = a.ids.clone();
    if ids.is_empty() {
        ids = list_pods(ctl, None, &a.filter)
            .await
            .context("listing pod sandboxes")?
            .into_iter()
            .map(|p| p.id)
            .collect();
        if ids.is_empty() {
            bail!("no IDs provided or nothing found per filter");
        }
    }
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    let mut text = String::new();
    for id in &ids {
        let r = pod_status(ctl, id, verbose)
            .await
            .with_context(|| format!("getting the status of pod sandbox {id:?}"))?;
        let st = r.status.clone().unwrap_or_default();
        if format == Output::Table {
            let m = st.metadata.clone().unwrap_or_default();
            text.push_str(&format!("ID: {}\n", st.id));
            if !m.name.is_empty() {
                text.push_str(&format!("Name: {}\n", m.name));
            }
            if !m.uid.is_empty() {
                text.push_str(&format!("UID: {}\n", m.uid));
            }
            if !m.namespace.is_empty() {
                text.push_str(&format!("Namespace: {}\n", m.namespace));
            }
            text.push_str(&format!("Attempt: {}\n", m.attempt));
            text.push_str(&format!(
                "Status: {}\n",
                pb::PodSandboxState::try_from(st.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("UNKNOWN")
            ));
            text.push_str(&format!("Created: {}\n", rfc3339(st.created_at)));
            if let Some(n) = &st.network {
                text.push_str(&format!("IP Addresses: {}\n", n.ip));
                for ip in &n.additional_ips {
                    text.push_str(&format!("Additional IP: {}\n", ip.ip));
                }
            }
            sorted_map(&st.labels, "Labels", &mut text);
            sorted_map(&st.annotations, "Annotations", &mut text);
            if verbose {
                text.push_str(&format!("Info: {:?}\n", r.info));
            }
            continue;
        }
        let mut v =
            to_json(&st, "runtime.v1.PodSandboxStatus", PROTOJSON).map_err(|e| anyhow!(e))?;
        v["createdAt"] = rfc3339(st.created_at).into();
        statuses.push(StatusData {
            status: Some(v),
            info: r.info,
            ..Default::default()
        });
    }
    if format == Output::Table {
        return out(&text);
    }
    out(&render_statuses(statuses)?)
}

pub async fn stop_pod(ctl: &Ctl, id: &str) -> Result<()> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    ctl.call(
        "StopPodSandbox",
        t,
        c.stop_pod_sandbox(ctl.req("StopPodSandbox", msg, t)),
    )
    .await?;
    out(&format!("Stopped sandbox {id}\n"))
}

/// Runs `f` on every ID, going on after a failure; the failures are reported together.
pub async fn each<F, Fut>(ids: &[String], mut f: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut errors = Vec::new();
    for id in ids {
        if let Err(e) = f(id.clone()).await {
            errors.push(format!("{e:#}"));
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(anyhow!(errors.remove(0))),
        _ => Err(anyhow!("[{}]", errors.join(", "))),
    }
}

pub async fn stopp(ctl: &Ctl, a: &IdsArgs) -> Result<()> {
    each(&a.ids, |id| async move {
        // keelsond stops an unknown pod without complaint; a person wants to hear of a typo.
        let r: Result<()> = async {
            pod_status(ctl, &id, false).await?;
            stop_pod(ctl, &id).await
        }
        .await;
        r.with_context(|| format!("stopping the pod sandbox {id:?}"))
    })
    .await
}

pub async fn rmp(ctl: &Ctl, a: &RmpArgs) -> Result<()> {
    if a.all && !a.ids.is_empty() {
        bail!("cannot specify POD-ID(s) when using --all");
    }
    let ids: Vec<String> = if a.all {
        list_pods(ctl, None, &PodFilterArgs::default())
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect()
    } else {
        a.ids.clone()
    };
    if ids.is_empty() {
        if a.all {
            eprintln!("No pods to remove");
            return Ok(());
        }
        bail!("you must specify at least one POD-ID or use --all");
    }
    each(&ids, |id| async move {
        let st = pod_status(ctl, &id, false)
            .await
            .with_context(|| format!("getting sandbox status of pod {id:?}"))?;
        let ready = st
            .status
            .is_some_and(|s| s.state == pb::PodSandboxState::SandboxReady as i32);
        if ready {
            if !a.force {
                bail!("pod sandbox {id:?} is running, please stop it first");
            }
            stop_pod(ctl, &id)
                .await
                .with_context(|| format!("stopping the pod sandbox {id:?} failed"))?;
        }
        let t = Some(ctl.timeout);
        let mut c = ctl.runtime().await?;
        let msg = pb::RemovePodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        ctl.call(
            "RemovePodSandbox",
            t,
            c.remove_pod_sandbox(ctl.req("RemovePodSandbox", msg, t)),
        )
        .await
        .with_context(|| format!("removing the pod sandbox {id:?}"))?;
        out(&format!("Removed sandbox {id}\n"))
    })
    .await
}
