//! `/stats/summary` (stats/v1alpha1 `Summary`) and `/metrics/resource`, like upstream's CRI
//! stats provider: containers from CRI ListContainerStats, pods from ListPodSandboxStats when
//! the runtime has it, else from the pod's cgroup (the parent of the sandbox's cgroup) and the
//! sandbox's network namespace (/proc/<pid>/net/dev); the node from the root cgroup and /proc.
//!
//! `usageNanoCores` needs two samples: the last cumulative figure of each container, pod and
//! the node is cached (as upstream's `cpuUsageCache`); the first request has none, later ones
//! the rate since the previous sample. A background sampler takes one every 10 s so that the
//! first request after a quiet period has a recent sample to compare with.

use crate::Shared;
use crate::cgroupstats::{self as cg, FsInfo, Usage};
use crate::cri::{LABEL_CONTAINER_NAME, LABEL_POD_UID};
use keelson_proto::runtime::v1 as pb;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// key → (sample time ns, cumulative CPU ns).
static CPU_CACHE: LazyLock<Mutex<HashMap<String, (i64, u64)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The rate since the cached sample, then caches this one.
fn nano_cores(key: &str, ts: i64, total: u64) -> Option<u64> {
    let mut c = CPU_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let prev = c.get(key).copied();
    let rate = match prev {
        Some((pts, ptotal)) if ts > pts && total >= ptotal => {
            Some(((total - ptotal) as f64 * 1e9 / (ts - pts) as f64) as u64)
        }
        _ => None,
    };
    // Keep the older sample when this one is too close to compute a stable rate from.
    if prev.is_none_or(|(pts, _)| ts - pts >= 1_000_000_000 || rate.is_none()) {
        c.insert(key.to_string(), (ts, total));
    }
    rate
}

fn time(ns: i64) -> Value {
    k8s_openapi::jiff::Timestamp::from_second(ns / 1_000_000_000)
        .map(|t| Value::String(t.to_string()))
        .unwrap_or(Value::Null)
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<u64>) {
    if let Some(v) = v {
        m.insert(k.into(), v.into());
    }
}

fn cpu_json(key: &str, ts: i64, total: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time(ts));
    if let Some(t) = total {
        put(&mut m, "usageNanoCores", nano_cores(key, ts, t));
        m.insert("usageCoreNanoSeconds".into(), t.into());
    }
    Value::Object(m)
}

fn memory_json(ts: i64, u: &Usage, available: Option<u64>) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), time(ts));
    put(&mut m, "availableBytes", available);
    put(&mut m, "usageBytes", u.memory);
    put(&mut m, "workingSetBytes", u.working_set);
    put(&mut m, "rssBytes", u.rss);
    put(&mut m, "pageFaults", u.page_faults);
    put(&mut m, "majorPageFaults", u.major_page_faults);
    Value::Object(m)
}

fn network_json(ts: i64, ifaces: &[cg::Iface]) -> Value {
    let list: Vec<Value> = ifaces
        .iter()
        .map(|(n, rx, rxe, tx, txe)| {
            json!({"name": n, "rxBytes": rx, "rxErrors": rxe, "txBytes": tx, "txErrors": txe})
        })
        .collect();
    // The default interface's figures inline (upstream: eth0, else the first).
    let mut m = Map::new();
    m.insert("time".into(), time(ts));
    if let Some(d) = ifaces
        .iter()
        .find(|i| i.0 == "eth0")
        .or_else(|| ifaces.first())
    {
        m.insert("name".into(), d.0.clone().into());
        m.insert("rxBytes".into(), d.1.into());
        m.insert("rxErrors".into(), d.2.into());
        m.insert("txBytes".into(), d.3.into());
        m.insert("txErrors".into(), d.4.into());
    }
    m.insert("interfaces".into(), list.into());
    Value::Object(m)
}

fn fs_json(ts: i64, f: &FsInfo, used: Option<u64>, inodes_used: Option<u64>) -> Value {
    json!({
        "time": time(ts),
        "availableBytes": f.available,
        "capacityBytes": f.capacity,
        "usedBytes": used.unwrap_or(f.used),
        "inodesFree": f.inodes_free,
        "inodes": f.inodes,
        "inodesUsed": inodes_used.unwrap_or(f.inodes.saturating_sub(f.inodes_free)),
    })
}

fn usage_of_cri(c: &pb::ContainerStats) -> Usage {
    let m = c.memory.as_ref();
    let v = |f: fn(&pb::MemoryUsage) -> Option<&pb::UInt64Value>| m.and_then(f).map(|x| x.value);
    Usage {
        cpu_ns: c
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map(|x| x.value),
        memory: v(|m| m.usage_bytes.as_ref()),
        working_set: v(|m| m.working_set_bytes.as_ref()),
        rss: v(|m| m.rss_bytes.as_ref()),
        page_faults: v(|m| m.page_faults.as_ref()),
        major_page_faults: v(|m| m.major_page_faults.as_ref()),
    }
}

/// Fills what the runtime left out from the cgroup's own files.
fn merge(mut a: Usage, b: &Usage) -> Usage {
    a.cpu_ns = a.cpu_ns.or(b.cpu_ns);
    a.memory = a.memory.or(b.memory);
    a.working_set = a.working_set.or(b.working_set);
    a.rss = a.rss.or(b.rss);
    a.page_faults = a.page_faults.or(b.page_faults);
    a.major_page_faults = a.major_page_faults.or(b.major_page_faults);
    a
}

fn node_json(sh: &Shared, only_cpu_mem: bool, image_fs: Option<(String, u64, u64)>) -> Value {
    let ts = crate::now_ns();
    let root = cg::root();
    let mut u = cg::usage(&root);
    let mi = cg::meminfo();
    let total = mi.get("MemTotal").copied();
    // The root cgroup of v1 counts everything; a v2 root has no memory.current: /proc/meminfo.
    if u.memory.is_none()
        && let Some(t) = total
    {
        let free = mi.get("MemFree").copied().unwrap_or(0);
        let used = t.saturating_sub(free);
        u.memory = Some(used);
        let inactive = mi.get("Inactive(file)").copied().unwrap_or(0);
        u.working_set = Some(used.saturating_sub(inactive));
    }
    if u.cpu_ns.is_none() {
        u.cpu_ns = cg::proc_stat_cpu_ns();
    }
    let available = total.map(|t| t.saturating_sub(u.working_set.unwrap_or(0)));
    let boot = cg::uptime().map(|up| ts - (up * 1e9) as i64);
    let mut m = Map::new();
    m.insert("nodeName".into(), sh.cfg.node_name.clone().into());
    if let Some(b) = boot {
        m.insert("startTime".into(), time(b));
    }
    m.insert("cpu".into(), cpu_json("node", ts, u.cpu_ns));
    m.insert("memory".into(), memory_json(ts, &u, available));
    if !only_cpu_mem {
        m.insert("network".into(), network_json(ts, &node_ifaces()));
        if let Some(f) = cg::statvfs(&sh.cfg.root_dir) {
            m.insert("fs".into(), fs_json(ts, &f, None, None));
        }
        if let Some((mount, used, inodes)) = image_fs
            && let Some(f) = cg::statvfs(Path::new(&mount))
        {
            m.insert(
                "runtime".into(),
                json!({"imageFs": fs_json(ts, &f, Some(used), Some(inodes))}),
            );
        }
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let procs = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count()
            })
            .unwrap_or(0);
        let mut r = Map::new();
        r.insert("time".into(), time(ts));
        put(&mut r, "maxpid", pid_max);
        r.insert("curproc".into(), procs.into());
        m.insert("rlimit".into(), Value::Object(r));
    }
    Value::Object(m)
}

/// Host interfaces, without loopback and the pods' veth ends (cAdvisor leaves those out).
fn node_ifaces() -> Vec<cg::Iface> {
    cg::net_of(None)
        .into_iter()
        .filter(|i| !i.0.starts_with("veth") && !i.0.starts_with("docker"))
        .collect()
}

struct SandboxInfo {
    id: String,
    uid: String,
    created_at: i64,
    pid: Option<i64>,
}

/// The whole Summary.
pub async fn summary(sh: &Shared, only_cpu_mem: bool) -> Result<Value, tonic::Status> {
    let mut cri = sh.cri.clone();
    let mut pods: HashMap<String, (String, String)> = HashMap::new();
    let mut volumes: HashMap<String, Vec<(String, PathBuf, bool)>> = HashMap::new();
    for (uid, p) in sh.pods.read().unwrap_or_else(|p| p.into_inner()).iter() {
        pods.insert(
            uid.clone(),
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.namespace.clone().unwrap_or_default(),
            ),
        );
        if !only_cpu_mem {
            volumes.insert(
                uid.clone(),
                crate::volumes::measured_volumes(&sh.cfg.root_dir, p),
            );
        }
    }
    let image_fs = if only_cpu_mem {
        None
    } else {
        cri.images
            .image_fs_info(pb::ImageFsInfoRequest {})
            .await
            .ok()
            .and_then(|r| r.into_inner().image_filesystems.into_iter().next())
            .map(|f| {
                (
                    f.fs_id.map(|i| i.mountpoint).unwrap_or_default(),
                    f.used_bytes.map(|u| u.value).unwrap_or(0),
                    f.inodes_used.map(|u| u.value).unwrap_or(0),
                )
            })
    };
    let node = node_json(sh, only_cpu_mem, image_fs.clone());

    // Ready sandboxes of the pods we manage, newest per pod.
    let sbs = cri
        .runtime
        .list_pod_sandbox(pb::ListPodSandboxRequest {
            filter: Some(pb::PodSandboxFilter {
                state: Some(pb::PodSandboxStateValue {
                    state: pb::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    let mut sandboxes: HashMap<String, SandboxInfo> = HashMap::new();
    for s in sbs {
        let Some(uid) = s.labels.get(LABEL_POD_UID) else {
            continue;
        };
        if !pods.contains_key(uid)
            || sandboxes
                .get(uid)
                .is_some_and(|o| o.created_at > s.created_at)
        {
            continue;
        }
        let pid = cri
            .runtime
            .pod_sandbox_status(pb::PodSandboxStatusRequest {
                pod_sandbox_id: s.id.clone(),
                verbose: true,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().info.get("info").cloned())
            .and_then(|i| serde_json::from_str::<Value>(&i).ok())
            .and_then(|v| v["pid"].as_i64())
            .filter(|p| *p > 0);
        sandboxes.insert(
            uid.clone(),
            SandboxInfo {
                id: s.id,
                uid: uid.clone(),
                created_at: s.created_at,
                pid,
            },
        );
    }
    // Pod-level figures from the runtime, when it has them.
    let pod_stats: HashMap<String, pb::PodSandboxStats> = match cri
        .runtime
        .list_pod_sandbox_stats(pb::ListPodSandboxStatsRequest { filter: None })
        .await
    {
        Ok(r) => r
            .into_inner()
            .stats
            .into_iter()
            .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
            .collect(),
        Err(e) if e.code() == tonic::Code::Unimplemented => HashMap::new(),
        Err(e) => return Err(e),
    };
    let containers = cri
        .runtime
        .list_containers(pb::ListContainersRequest {
            filter: Some(pb::ContainerFilter {
                state: Some(pb::ContainerStateValue {
                    state: pb::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    let cstats: HashMap<String, pb::ContainerStats> = cri
        .runtime
        .list_container_stats(pb::ListContainerStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats
        .into_iter()
        .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
        .collect();

    let nodefs = cg::statvfs(&sh.cfg.pod_logs_dir);
    let imagefs = image_fs
        .as_ref()
        .and_then(|(m, _, _)| cg::statvfs(Path::new(m)));
    let mut out_pods = Vec::new();
    let mut uids: Vec<&String> = sandboxes.keys().collect();
    uids.sort();
    for uid in uids {
        let sb = &sandboxes[uid];
        let (name, ns) = &pods[&sb.uid];
        let ts = crate::now_ns();
        let pod_dirs = sb.pid.and_then(cg::of_pid).map(|d| d.parent());
        let mut ephemeral_used = 0u64;
        let mut ephemeral_inodes = 0u64;
        let mut cs = Vec::new();
        let mut mine: Vec<&pb::Container> = containers
            .iter()
            .filter(|c| c.pod_sandbox_id == sb.id)
            .collect();
        mine.sort_by(|a, b| {
            let n = |c: &pb::Container| c.metadata.as_ref().map(|m| m.name.clone());
            n(a).cmp(&n(b))
        });
        for c in mine {
            let cname = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .or_else(|| c.labels.get(LABEL_CONTAINER_NAME).cloned())
                .unwrap_or_default();
            let st = cstats.get(&c.id);
            let from_cg = pod_dirs
                .as_ref()
                .map(|d| cg::usage(&d.child(&c.id)))
                .unwrap_or_default();
            let u = merge(st.map(usage_of_cri).unwrap_or_default(), &from_cg);
            let mut cm = Map::new();
            cm.insert("name".into(), cname.clone().into());
            cm.insert("startTime".into(), time(c.created_at));
            cm.insert("cpu".into(), cpu_json(&c.id, ts, u.cpu_ns));
            cm.insert("memory".into(), memory_json(ts, &u, None));
            if !only_cpu_mem {
                let wl = st.and_then(|s| s.writable_layer.as_ref());
                let used = wl.and_then(|w| w.used_bytes.as_ref()).map(|v| v.value);
                let inodes = wl.and_then(|w| w.inodes_used.as_ref()).map(|v| v.value);
                if let Some(f) = &imagefs {
                    let mut r = Map::new();
                    r.insert("time".into(), time(ts));
                    r.insert("availableBytes".into(), f.available.into());
                    r.insert("capacityBytes".into(), f.capacity.into());
                    put(&mut r, "usedBytes", used);
                    r.insert("inodesFree".into(), f.inodes_free.into());
                    r.insert("inodes".into(), f.inodes.into());
                    put(&mut r, "inodesUsed", inodes);
                    cm.insert("rootfs".into(), Value::Object(r));
                }
                ephemeral_used += used.unwrap_or(0);
                ephemeral_inodes += inodes.unwrap_or(0);
                let log_dir = sh.cfg.pod_log_dir(ns, name, uid).join(&cname);
                let (lb, lf) = cg::du(&log_dir);
                ephemeral_used += lb;
                ephemeral_inodes += lf;
                if let Some(f) = &nodefs {
                    cm.insert("logs".into(), fs_json(ts, f, Some(lb), Some(lf)));
                }
            }
            cs.push(Value::Object(cm));
        }
        let runtime_pod = pod_stats.get(&sb.id).and_then(|s| s.linux.as_ref());
        let pod_u = {
            let from_rt = runtime_pod
                .map(|l| {
                    let mut u = Usage::default();
                    if let Some(c) = &l.cpu {
                        u.cpu_ns = c.usage_core_nano_seconds.as_ref().map(|v| v.value);
                    }
                    if let Some(m) = &l.memory {
                        u.memory = m.usage_bytes.as_ref().map(|v| v.value);
                        u.working_set = m.working_set_bytes.as_ref().map(|v| v.value);
                        u.rss = m.rss_bytes.as_ref().map(|v| v.value);
                        u.page_faults = m.page_faults.as_ref().map(|v| v.value);
                        u.major_page_faults = m.major_page_faults.as_ref().map(|v| v.value);
                    }
                    u
                })
                .unwrap_or_default();
            let from_cg = pod_dirs.as_ref().map(cg::usage).unwrap_or_default();
            merge(from_rt, &from_cg)
        };
        let mut pm = Map::new();
        pm.insert(
            "podRef".into(),
            json!({"name": name, "namespace": ns, "uid": uid}),
        );
        pm.insert("startTime".into(), time(sb.created_at));
        pm.insert("containers".into(), cs.into());
        pm.insert(
            "cpu".into(),
            cpu_json(&format!("pod/{uid}"), ts, pod_u.cpu_ns),
        );
        pm.insert("memory".into(), memory_json(ts, &pod_u, None));
        if !only_cpu_mem {
            let ifaces: Vec<cg::Iface> = match runtime_pod.and_then(|l| l.network.as_ref()) {
                Some(n) if !n.interfaces.is_empty() || n.default_interface.is_some() => n
                    .default_interface
                    .iter()
                    .chain(n.interfaces.iter())
                    .map(|i| {
                        let v =
                            |x: &Option<pb::UInt64Value>| x.as_ref().map(|v| v.value).unwrap_or(0);
                        (
                            i.name.clone(),
                            v(&i.rx_bytes),
                            v(&i.rx_errors),
                            v(&i.tx_bytes),
                            v(&i.tx_errors),
                        )
                    })
                    .fold(Vec::new(), |mut acc: Vec<cg::Iface>, i| {
                        if !acc.iter().any(|a| a.0 == i.0) {
                            acc.push(i);
                        }
                        acc
                    }),
                _ => cg::net_of(sb.pid),
            };
            pm.insert("network".into(), network_json(ts, &ifaces));
            // Volumes, as upstream's volume stat calculator measures them (du of the
            // directory; capacity of the filesystem holding it); a disk emptyDir and the
            // managed hosts file count towards the pod's ephemeral storage.
            let mut vols = Vec::new();
            for (vname, dir, ephemeral) in volumes.get(uid).into_iter().flatten() {
                let Some(f) = cg::statvfs(dir) else { continue };
                let (b, n) = cg::du(dir);
                if *ephemeral {
                    ephemeral_used += b;
                    ephemeral_inodes += n;
                }
                let mut v = fs_json(ts, &f, Some(b), Some(n));
                v["name"] = vname.clone().into();
                vols.push(v);
            }
            if !vols.is_empty() {
                pm.insert("volume".into(), vols.into());
            }
            if let Ok(m) = std::fs::metadata(crate::volumes::hosts_file(&sh.cfg.root_dir, uid)) {
                ephemeral_used += m.len();
                ephemeral_inodes += 1;
            }
            if let Some(f) = &nodefs {
                pm.insert(
                    "ephemeral-storage".into(),
                    fs_json(ts, f, Some(ephemeral_used), Some(ephemeral_inodes)),
                );
            }
            let procs = pod_dirs
                .as_ref()
                .and_then(|d| d.memory.clone().or(d.unified.clone()))
                .map(|d| count_procs(&d));
            if let Some(n) = procs {
                pm.insert("process_stats".into(), json!({"process_count": n}));
            }
        }
        out_pods.push(Value::Object(pm));
    }
    Ok(json!({"node": node, "pods": out_pods}))
}

/// Processes in a cgroup tree (cgroup.procs of it and its children).
fn count_procs(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        n += std::fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count() as u64)
            .unwrap_or(0);
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Takes a sample every 10 s so that usageNanoCores has a recent previous figure.
pub async fn sampler(sh: std::sync::Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = summary(&sh, true).await {
            tracing::debug!(error = %e.message(), "stats sample");
        }
    }
}

/// `/metrics/resource`: upstream's resource metrics (node, pod and container CPU and
/// memory) from the same figures, with millisecond timestamps.
pub fn resource_metrics(s: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let ms = |t: &Value| -> String {
        t.as_str()
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| format!(" {}", t.as_millisecond()))
            .unwrap_or_default()
    };
    let esc = crate::metrics::esc;
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} [STABLE] {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    let pods = s["pods"].as_array().cloned().unwrap_or_default();
    let cpu_secs = |v: &Value| v["usageCoreNanoSeconds"].as_f64().map(|n| n / 1e9);
    let node = &s["node"];
    head(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time of the node, in core-seconds.",
    );
    if let Some(c) = cpu_secs(&node["cpu"]) {
        let _ = writeln!(
            out,
            "node_cpu_usage_seconds_total {c}{}",
            ms(&node["cpu"]["time"])
        );
    }
    head(
        &mut out,
        "node_memory_working_set_bytes",
        "gauge",
        "Working set of the node, in bytes.",
    );
    if let Some(m) = node["memory"]["workingSetBytes"].as_u64() {
        let _ = writeln!(
            out,
            "node_memory_working_set_bytes {m}{}",
            ms(&node["memory"]["time"])
        );
    }
    head(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time of a pod, in core-seconds.",
    );
    for p in &pods {
        let l = format!(
            "namespace=\"{}\",pod=\"{}\"",
            esc(p["podRef"]["namespace"].as_str().unwrap_or("")),
            esc(p["podRef"]["name"].as_str().unwrap_or(""))
        );
        if let Some(c) = cpu_secs(&p["cpu"]) {
            let _ = writeln!(
                out,
                "pod_cpu_usage_seconds_total{{{l}}} {c}{}",
                ms(&p["cpu"]["time"])
            );
        }
    }
    head(
        &mut out,
        "pod_memory_working_set_bytes",
        "gauge",
        "Working set of a pod, in bytes.",
    );
    for p in &pods {
        let l = format!(
            "namespace=\"{}\",pod=\"{}\"",
            esc(p["podRef"]["namespace"].as_str().unwrap_or("")),
            esc(p["podRef"]["name"].as_str().unwrap_or(""))
        );
        if let Some(m) = p["memory"]["workingSetBytes"].as_u64() {
            let _ = writeln!(
                out,
                "pod_memory_working_set_bytes{{{l}}} {m}{}",
                ms(&p["memory"]["time"])
            );
        }
    }
    let each_container = |out: &mut String, f: &dyn Fn(&mut String, &str, &Value)| {
        for p in &pods {
            for c in p["containers"].as_array().into_iter().flatten() {
                let l = format!(
                    "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
                    esc(c["name"].as_str().unwrap_or("")),
                    esc(p["podRef"]["namespace"].as_str().unwrap_or("")),
                    esc(p["podRef"]["name"].as_str().unwrap_or(""))
                );
                f(out, &l, c);
            }
        }
    };
    head(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative CPU time of a container, in core-seconds.",
    );
    each_container(&mut out, &|out, l, c| {
        if let Some(v) = cpu_secs(&c["cpu"]) {
            let _ = writeln!(
                out,
                "container_cpu_usage_seconds_total{{{l}}} {v}{}",
                ms(&c["cpu"]["time"])
            );
        }
    });
    head(
        &mut out,
        "container_memory_working_set_bytes",
        "gauge",
        "Working set of a container, in bytes.",
    );
    each_container(&mut out, &|out, l, c| {
        if let Some(v) = c["memory"]["workingSetBytes"].as_u64() {
            let _ = writeln!(
                out,
                "container_memory_working_set_bytes{{{l}}} {v}{}",
                ms(&c["memory"]["time"])
            );
        }
    });
    head(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "When a container started, in Unix seconds.",
    );
    each_container(&mut out, &|out, l, c| {
        if let Some(t) = c["startTime"]
            .as_str()
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
        {
            let _ = writeln!(out, "container_start_time_seconds{{{l}}} {}", t.as_second());
        }
    });
    head(
        &mut out,
        "scrape_error",
        "gauge",
        "1 when the figures could not be gathered, else 0.",
    );
    let _ = writeln!(out, "scrape_error 0");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_from_two_samples() {
        let k = "test-key";
        assert_eq!(nano_cores(k, 1_000_000_000, 0), None);
        // Half a core over 2 s.
        assert_eq!(
            nano_cores(k, 3_000_000_000, 1_000_000_000),
            Some(500_000_000)
        );
    }
}
