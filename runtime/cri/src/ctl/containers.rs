//! Container commands: `create`, `run`, `start`, `ps`, `inspect`, `stop`, `rm`.

use super::cli::{
    ContainerFilterArgs, CreateArgs, IdsArgs, InspectArgs, PsArgs, PullFlags, RmArgs, RunArgs,
    StopArgs,
};
use super::display::{Pattern, Table, ZERO_TIME, ago, pretty, rfc3339, truncate_id};
use super::images::{get_auth, image_status, pull_image};
use super::pods::{each, run_pod_sandbox};
use super::protojson::{PROTOJSON, to_json};
use super::status::{StatusData, render_statuses};
use super::{Ctl, Output, config, out, output_format, parse_labels};
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use std::time::Duration;

const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// crictl's word for a container state.
pub fn container_state(state: i32) -> &'static str {
    match pb::ContainerState::try_from(state) {
        Ok(pb::ContainerState::ContainerCreated) => "Created",
        Ok(pb::ContainerState::ContainerRunning) => "Running",
        Ok(pb::ContainerState::ContainerExited) => "Exited",
        _ => "Unknown",
    }
}

fn label<'a>(labels: &'a std::collections::HashMap<String, String>, key: &str) -> &'a str {
    labels.get(key).map_or("unknown", String::as_str)
}

/// Creates a container from config files (pulling its image first with `--with-pull`).
async fn create_container(
    ctl: &Ctl,
    pod: &str,
    container_config: &std::path::Path,
    pod_config: &std::path::Path,
    pull: &PullFlags,
    with_pull: bool,
) -> Result<String> {
    let mut cfg = config::load_container_config(container_config)?;
    let pod_cfg = config::load_pod_config(pod_config)?;
    let image = cfg.image.clone().unwrap_or_default();
    if image.user_specified_image.is_empty()
        && let Some(i) = cfg.image.as_mut()
    {
        i.user_specified_image = i.image.clone();
    }
    if with_pull {
        let auth = get_auth(pull.creds.as_deref(), pull.auth.as_deref())?;
        pull_image(
            ctl,
            &image.image,
            auth,
            Some(pod_cfg.clone()),
            image.annotations.clone(),
            None,
        )
        .await?;
    }
    let t = Some(pull.cancel_timeout.unwrap_or(ctl.timeout));
    let mut c = ctl.runtime().await?;
    let msg = pb::CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg),
    };
    let r = ctl
        .call(
            "CreateContainer",
            t,
            c.create_container(ctl.req("CreateContainer", msg, t)),
        )
        .await?;
    Ok(r.container_id)
}

pub async fn create(ctl: &Ctl, a: &CreateArgs) -> Result<()> {
    let id = create_container(
        ctl,
        &a.pod,
        &a.container_config,
        &a.pod_config,
        &a.pull,
        a.pull.with_pull,
    )
    .await
    .context("creating container")?;
    out(&format!("{id}\n"))
}

async fn start_container(ctl: &Ctl, id: &str) -> Result<()> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::StartContainerRequest {
        container_id: id.to_string(),
    };
    ctl.call(
        "StartContainer",
        t,
        c.start_container(ctl.req("StartContainer", msg, t)),
    )
    .await?;
    out(&format!("{id}\n"))
}

pub async fn run(ctl: &Ctl, a: &RunArgs) -> Result<()> {
    let pod_cfg = config::load_pod_config(&a.pod_config).context("load podSandboxConfig")?;
    let pod = run_pod_sandbox(ctl, pod_cfg, &a.runtime, None)
        .await
        .context("run pod sandbox")?;
    let id = create_container(
        ctl,
        &pod,
        &a.container_config,
        &a.pod_config,
        &a.pull,
        !a.pull.no_pull,
    )
    .await
    .context("creating container failed")?;
    start_container(ctl, &id)
        .await
        .with_context(|| format!("starting the container {id:?}"))
}

pub async fn start(ctl: &Ctl, a: &IdsArgs) -> Result<()> {
    for id in &a.ids {
        start_container(ctl, id)
            .await
            .with_context(|| format!("starting the container {id:?}"))?;
    }
    Ok(())
}

/// Lists containers: running ones unless `--all`/`--state` (any state with
/// `--latest`/`--last`), then name, namespace and image matched here, newest first.
pub async fn list_containers(
    ctl: &Ctl,
    id: Option<&str>,
    f: &ContainerFilterArgs,
) -> Result<Vec<pb::Container>> {
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
    let mut state = match f.state.as_deref().map(str::to_lowercase).as_deref() {
        None if f.all => None,
        None => Some(pb::ContainerState::ContainerRunning),
        Some("created") => Some(pb::ContainerState::ContainerCreated),
        Some("running") => Some(pb::ContainerState::ContainerRunning),
        Some("exited") => Some(pb::ContainerState::ContainerExited),
        Some("unknown") => Some(pb::ContainerState::ContainerUnknown),
        Some(s) => bail!("--state should be one of created, running, exited or unknown, not {s:?}"),
    };
    if f.latest || f.last > 0 {
        state = None;
    }
    let filter = pb::ContainerFilter {
        id: id.unwrap_or_default().to_string(),
        state: state.map(|s| pb::ContainerStateValue { state: s as i32 }),
        pod_sandbox_id: f.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&f.label)?,
    };
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ListContainersRequest {
        filter: Some(filter),
    };
    let r = ctl
        .call(
            "ListContainers",
            t,
            c.list_containers(ctl.req("ListContainers", msg, t)),
        )
        .await
        .context("call list containers RPC")?;
    let want_image = match &f.image {
        Some(i) => Some(image_status(ctl, i, false).await?.image.map(|i| i.id)),
        None => None,
    };
    let mut out = Vec::new();
    for c in r.containers {
        let Some(m) = &c.metadata else { continue };
        if !name.as_ref().is_none_or(|n| n.is_match(&m.name))
            || !namespace
                .as_ref()
                .is_none_or(|n| n.is_match(label(&c.labels, POD_NAMESPACE_LABEL)))
        {
            continue;
        }
        if let Some(want) = &want_image {
            let image = c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            let have = image_status(ctl, &image, false).await?.image.map(|i| i.id);
            if want.is_none() || have != *want {
                continue;
            }
        }
        out.push(c);
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let mut n = out.len();
    if f.latest {
        n = 1;
    }
    if f.last > 0 {
        n = f.last;
    }
    out.truncate(n);
    Ok(out)
}

/// `sha256:<64 hex>` shortened as crictl shortens an image ID; names stay.
fn short_image(image: &str) -> String {
    match image.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            truncate_id(image, "sha256:")
        }
        _ => image.to_string(),
    }
}

pub async fn ps(ctl: &Ctl, a: &PsArgs) -> Result<()> {
    let format = output_format(&a.output)?;
    let list = list_containers(ctl, a.id.as_deref(), &a.filter)
        .await
        .context("listing containers")?;
    if format == Output::Json {
        let v = to_json(
            &pb::ListContainersResponse { containers: list },
            "runtime.v1.ListContainersResponse",
            PROTOJSON,
        )
        .map_err(|e| anyhow!(e))?;
        return out(&format!("{}\n", pretty(&v)));
    }
    let mut table = Table::new();
    let mut text = String::new();
    if !a.verbose && !a.quiet {
        table.row([
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD",
            "NAMESPACE",
        ]);
    }
    for c in &list {
        if a.quiet {
            text.push_str(&format!("{}\n", c.id));
            continue;
        }
        let m = c.metadata.clone().unwrap_or_default();
        let image = c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let namespace = label(&c.labels, POD_NAMESPACE_LABEL);
        if !a.verbose {
            let (id, pod, image) = if a.no_trunc {
                (c.id.clone(), c.pod_sandbox_id.clone(), image)
            } else {
                (
                    truncate_id(&c.id, ""),
                    truncate_id(&c.pod_sandbox_id, ""),
                    short_image(&image),
                )
            };
            table.row([
                id,
                image,
                ago(c.created_at),
                container_state(c.state).to_string(),
                m.name,
                m.attempt.to_string(),
                pod,
                label(&c.labels, POD_NAME_LABEL).to_string(),
                namespace.to_string(),
            ]);
            continue;
        }
        text.push_str(&format!(
            "ID: {}\nPodID: {}\nNamespace: {namespace}\n",
            c.id, c.pod_sandbox_id
        ));
        if !m.name.is_empty() {
            text.push_str(&format!("Name: {}\n", m.name));
        }
        text.push_str(&format!("Attempt: {}\n", m.attempt));
        text.push_str(&format!("State: {}\n", container_state(c.state)));
        text.push_str(&format!("Image: {image}\n"));
        text.push_str(&format!("Created: {}\n", ago(c.created_at)));
        for (title, map) in [("Labels", &c.labels), ("Annotations", &c.annotations)] {
            if map.is_empty() {
                continue;
            }
            text.push_str(&format!("{title}:\n"));
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                text.push_str(&format!("\t{k} -> {}\n", map[k]));
            }
        }
        text.push('\n');
    }
    out(&text)?;
    out(&table.render())
}

/// The status of one container (an unknown ID is the runtime's NotFound).
pub async fn container_status(
    ctl: &Ctl,
    id: &str,
    verbose: bool,
) -> Result<pb::ContainerStatusResponse> {
    if id.is_empty() {
        bail!("ID cannot be empty");
    }
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ContainerStatusRequest {
        container_id: id.to_string(),
        verbose,
    };
    ctl.call(
        "ContainerStatus",
        t,
        c.container_status(ctl.req("ContainerStatus", msg, t)),
    )
    .await
}

/// A container status as crictl prints it: protojson with the three times as RFC 3339
/// (Go's zero time for one that has not happened).
fn status_json(st: &pb::ContainerStatus) -> Result<serde_json::Value> {
    let mut v = to_json(st, "runtime.v1.ContainerStatus", PROTOJSON).map_err(|e| anyhow!(e))?;
    let state =
        pb::ContainerState::try_from(st.state).unwrap_or(pb::ContainerState::ContainerUnknown);
    v["createdAt"] = rfc3339(st.created_at).into();
    v["startedAt"] = if state != pb::ContainerState::ContainerCreated {
        rfc3339(st.started_at)
    } else {
        ZERO_TIME.to_string()
    }
    .into();
    let finished = state == pb::ContainerState::ContainerExited
        || (state == pb::ContainerState::ContainerUnknown && st.finished_at > 0);
    v["finishedAt"] = if finished {
        rfc3339(st.finished_at)
    } else {
        ZERO_TIME.to_string()
    }
    .into();
    Ok(v)
}

pub async fn inspect(ctl: &Ctl, a: &InspectArgs) -> Result<()> {
    let format = output_format(a.output.as_deref().unwrap_or("json"))?;
    let mut ids = a.ids.clone();
    if ids.is_empty() {
        ids = list_containers(ctl, None, &a.filter)
            .await
            .context("listing containers")?
            .into_iter()
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            bail!("no IDs provided or nothing found per filter");
        }
    }
    let verbose = !a.quiet;
    let mut statuses = Vec::new();
    let mut text = String::new();
    for id in &ids {
        let r = container_status(ctl, id, verbose)
            .await
            .context("get the status of containers")?;
        let st = r.status.clone().unwrap_or_default();
        if format == Output::Table {
            let m = st.metadata.clone().unwrap_or_default();
            text.push_str(&format!("ID: {}\n", st.id));
            if !m.name.is_empty() {
                text.push_str(&format!("Name: {}\n", m.name));
            }
            if m.attempt != 0 {
                text.push_str(&format!("Attempt: {}\n", m.attempt));
            }
            let state = pb::ContainerState::try_from(st.state)
                .unwrap_or(pb::ContainerState::ContainerUnknown);
            text.push_str(&format!("State: {}\n", state.as_str_name()));
            text.push_str(&format!("Created: {}\n", ago(st.created_at)));
            if state != pb::ContainerState::ContainerCreated {
                text.push_str(&format!("Started: {}\n", ago(st.started_at)));
            }
            if state == pb::ContainerState::ContainerExited {
                if st.finished_at > 0 {
                    text.push_str(&format!("Finished: {}\n", ago(st.finished_at)));
                }
                text.push_str(&format!("Exit Code: {}\n", st.exit_code));
            }
            for (title, map) in [("Labels", &st.labels), ("Annotations", &st.annotations)] {
                if map.is_empty() {
                    continue;
                }
                text.push_str(&format!("{title}:\n"));
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                for k in keys {
                    text.push_str(&format!("\t{k} -> {}\n", map[k]));
                }
            }
            if verbose {
                text.push_str(&format!("Info: {:?}\n", r.info));
            }
            continue;
        }
        statuses.push(StatusData {
            status: Some(status_json(&st)?),
            info: r.info,
            ..Default::default()
        });
    }
    if format == Output::Table {
        return out(&text);
    }
    out(&render_statuses(statuses)?)
}

async fn stop_container(ctl: &Ctl, id: &str, timeout: i64) -> Result<()> {
    let t = Some(ctl.timeout + Duration::from_secs(timeout.max(0) as u64));
    let mut c = ctl.runtime().await?;
    let msg = pb::StopContainerRequest {
        container_id: id.to_string(),
        timeout,
    };
    ctl.call(
        "StopContainer",
        t,
        c.stop_container(ctl.req("StopContainer", msg, t)),
    )
    .await?;
    out(&format!("{id}\n"))
}

pub async fn stop(ctl: &Ctl, a: &StopArgs) -> Result<()> {
    if a.all && !a.ids.is_empty() {
        bail!("cannot specify CONTAINER-ID(s) when using --all");
    }
    let ids: Vec<String> = if a.all {
        let running = ContainerFilterArgs {
            state: Some("running".into()),
            ..Default::default()
        };
        let ids: Vec<String> = list_containers(ctl, None, &running)
            .await
            .context("listing containers")?
            .into_iter()
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            return out("No running containers found.\n");
        }
        ids
    } else {
        if a.ids.is_empty() {
            bail!("you must specify at least one CONTAINER-ID or use --all");
        }
        a.ids.clone()
    };
    for id in &ids {
        let r: Result<()> = async {
            // keelsond stops an unknown container without complaint; say "not found".
            container_status(ctl, id, false).await?;
            stop_container(ctl, id, a.timeout).await
        }
        .await;
        r.with_context(|| format!("stopping the container {id:?}"))?;
    }
    Ok(())
}

/// Removes a log file and its rotations (`<path>.*`); what is not there is fine.
fn remove_logs(id: &str, path: &str) {
    let path = std::path::Path::new(path);
    let mut files = vec![path.to_path_buf()];
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    files.push(e.path());
                }
            }
        }
    }
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "keelsonctl: removing log file {} for container {id:?} failed: {e}",
                f.display()
            ),
        }
    }
}

pub async fn rm(ctl: &Ctl, a: &RmArgs) -> Result<()> {
    if a.all && !a.ids.is_empty() {
        bail!("cannot specify CONTAINER-ID(s) when using --all");
    }
    let ids: Vec<String> = if a.all {
        let every = ContainerFilterArgs {
            all: true,
            ..Default::default()
        };
        list_containers(ctl, None, &every)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        a.ids.clone()
    };
    if ids.is_empty() {
        if a.all {
            eprintln!("No containers to remove");
            return Ok(());
        }
        bail!("you must specify at least one CONTAINER-ID or use --all");
    }
    each(&ids, |id| async move {
        let st = container_status(ctl, &id, false)
            .await
            .with_context(|| format!("getting container status {id:?}"))?
            .status
            .unwrap_or_default();
        if st.state == pb::ContainerState::ContainerRunning as i32 {
            if !a.force {
                bail!("container {id:?} is running, please stop it first");
            }
            stop_container(ctl, &id, 0)
                .await
                .with_context(|| format!("stopping the container {id:?}"))?;
        }
        let t = Some(ctl.timeout);
        let mut c = ctl.runtime().await?;
        let msg = pb::RemoveContainerRequest {
            container_id: id.clone(),
        };
        ctl.call(
            "RemoveContainer",
            t,
            c.remove_container(ctl.req("RemoveContainer", msg, t)),
        )
        .await
        .with_context(|| format!("removing container {id:?}"))?;
        out(&format!("{id}\n"))?;
        if !a.keep_logs && !st.log_path.is_empty() {
            remove_logs(&id, &st.log_path);
        }
        Ok(())
    })
    .await
}
