//! `stats`: two samples of ListContainerStats, CPU % from the difference, as crictl shows.

use super::cli::{StatsArgs, StatspArgs};
use super::display::{Table, human_size, pretty, truncate_id};
use super::protojson::{PROTOJSON, to_json};
use super::{Ctl, Output, out, output_format, parse_labels};
use anyhow::{Context, Result, anyhow, bail};
use keelson_proto::runtime::v1 as pb;
use std::time::Duration;

async fn container_stats(
    ctl: &Ctl,
    filter: &pb::ContainerStatsFilter,
) -> Result<Vec<pb::ContainerStats>> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ListContainerStatsRequest {
        filter: Some(filter.clone()),
    };
    let mut r = ctl
        .call(
            "ListContainerStats",
            t,
            c.list_container_stats(ctl.req("ListContainerStats", msg, t)),
        )
        .await?
        .stats;
    let id = |s: &pb::ContainerStats| {
        s.attributes
            .as_ref()
            .map(|a| a.id.clone())
            .unwrap_or_default()
    };
    r.sort_by_key(id);
    Ok(r)
}

pub async fn stats(ctl: &Ctl, a: &StatsArgs) -> Result<()> {
    let format = output_format(&a.output)?;
    let filter = pb::ContainerStatsFilter {
        id: a
            .id
            .clone()
            .or_else(|| a.container.clone())
            .unwrap_or_default(),
        pod_sandbox_id: a.pod.clone().unwrap_or_default(),
        label_selector: parse_labels(&a.label)?,
    };
    let first = container_stats(ctl, &filter)
        .await
        .context("get container stats")?;
    if format == Output::Json {
        let v = to_json(
            &pb::ListContainerStatsResponse { stats: first },
            "runtime.v1.ListContainerStatsResponse",
            PROTOJSON,
        )
        .map_err(|e| anyhow!(e))?;
        return out(&format!("{}\n", pretty(&v)));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let second = container_stats(ctl, &filter)
        .await
        .context("get container stats")?;
    let mut table = Table::new();
    table.row([
        "CONTAINER",
        "NAME",
        "CPU %",
        "MEM",
        "DISK",
        "INODES",
        "SWAP",
    ]);
    for s in &second {
        let attrs = s.attributes.clone().unwrap_or_default();
        let cpu = s
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value);
        let mem = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let layer = s.writable_layer.clone().unwrap_or_default();
        let disk = layer.used_bytes.map_or(0, |v| v.value);
        let inodes = layer.inodes_used.map_or(0, |v| v.value);
        let swap = s
            .swap
            .as_ref()
            .and_then(|w| w.swap_usage_bytes.as_ref())
            .map_or(0, |v| v.value);
        if !a.all && cpu == 0 && mem == 0 {
            continue;
        }
        let Some(old) = first
            .iter()
            .find(|o| o.attributes.as_ref().is_some_and(|x| x.id == attrs.id))
        else {
            continue;
        };
        let mut percent = 0.0;
        if cpu != 0 {
            let now = s.cpu.as_ref().map_or(0, |c| c.timestamp);
            let then = old.cpu.as_ref().map_or(0, |c| c.timestamp);
            let old_cpu = old
                .cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .map_or(0, |v| v.value);
            if now == then {
                bail!("cpu stat is not updated during sample");
            }
            percent = cpu.saturating_sub(old_cpu) as f64 / (now - then) as f64 * 100.0;
        }
        table.row([
            truncate_id(&attrs.id, ""),
            attrs.metadata.map(|m| m.name).unwrap_or_default(),
            format!("{percent:.2}"),
            human_size(mem as f64),
            human_size(disk as f64),
            inodes.to_string(),
            human_size(swap as f64),
        ]);
    }
    out(&table.render())
}

async fn pod_stats(
    ctl: &Ctl,
    filter: &pb::PodSandboxStatsFilter,
) -> Result<Vec<pb::PodSandboxStats>> {
    let t = Some(ctl.timeout);
    let mut c = ctl.runtime().await?;
    let msg = pb::ListPodSandboxStatsRequest {
        filter: Some(filter.clone()),
    };
    Ok(ctl
        .call(
            "ListPodSandboxStats",
            t,
            c.list_pod_sandbox_stats(ctl.req("ListPodSandboxStats", msg, t)),
        )
        .await?
        .stats)
}

fn pod_cpu(s: &pb::PodSandboxStats) -> (u64, i64) {
    s.linux
        .as_ref()
        .and_then(|l| l.cpu.as_ref())
        .map_or((0, 0), |c| {
            (
                c.usage_core_nano_seconds.as_ref().map_or(0, |v| v.value),
                c.timestamp,
            )
        })
}

/// `statsp`: two samples of ListPodSandboxStats, crictl's POD, POD ID, CPU %, MEM table.
pub async fn statsp(ctl: &Ctl, a: &StatspArgs) -> Result<()> {
    let format = output_format(&a.output)?;
    let filter = pb::PodSandboxStatsFilter {
        id: a.id.clone().or_else(|| a.pod.clone()).unwrap_or_default(),
        label_selector: parse_labels(&a.label)?,
    };
    let first = pod_stats(ctl, &filter).await.context("get pod stats")?;
    if format == Output::Json {
        let v = to_json(
            &pb::ListPodSandboxStatsResponse { stats: first },
            "runtime.v1.ListPodSandboxStatsResponse",
            PROTOJSON,
        )
        .map_err(|e| anyhow!(e))?;
        return out(&format!("{}\n", pretty(&v)));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let second = pod_stats(ctl, &filter).await.context("get pod stats")?;
    let mut table = Table::new();
    table.row(["POD", "POD ID", "CPU %", "MEM"]);
    for s in &second {
        let attrs = s.attributes.clone().unwrap_or_default();
        let (cpu, now) = pod_cpu(s);
        let mem = s
            .linux
            .as_ref()
            .and_then(|l| l.memory.as_ref())
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let mut percent = 0.0;
        if cpu != 0
            && let Some(old) = first
                .iter()
                .find(|o| o.attributes.as_ref().is_some_and(|x| x.id == attrs.id))
        {
            let (old_cpu, then) = pod_cpu(old);
            if now == then {
                bail!("cpu stat is not updated during sample");
            }
            percent = cpu.saturating_sub(old_cpu) as f64 / (now - then) as f64 * 100.0;
        }
        table.row([
            attrs.metadata.map(|m| m.name).unwrap_or_default(),
            truncate_id(&attrs.id, ""),
            format!("{percent:.2}"),
            human_size(mem as f64),
        ]);
    }
    out(&table.render())
}
