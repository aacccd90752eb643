//! `events`: resource statistics and OOM notifications, in runc's JSON shapes.

use crate::state::State;
use serde_json::{Map, Value, json};
use std::fs;
use std::path::Path;

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_flat(p: &Path) -> Map<String, Value> {
    let mut m = Map::new();
    if let Ok(t) = fs::read_to_string(p) {
        for l in t.lines() {
            if let Some((k, v)) = l.split_once(' ') {
                if let Ok(n) = v.trim().parse::<u64>() {
                    m.insert(k.to_string(), json!(n));
                }
            }
        }
    }
    m
}

/// Statistics of the container's cgroups (`events --stats` data).
pub fn stats(state: &State) -> Value {
    let cg = &state.cgroups;
    let mut cpu = json!({"usage": {}, "throttling": {}});
    let mut memory = json!({});
    let mut pids = json!({});
    for d in &cg.dirs {
        let has = |c: &str| d.controllers.iter().any(|x| x == c);
        if cg.unified && d.v2 {
            let st = read_flat(&d.path.join("cpu.stat"));
            let us = |k: &str| st.get(k).and_then(Value::as_u64).unwrap_or(0) * 1000;
            cpu = json!({
                "usage": {"total": us("usage_usec"), "kernel": us("system_usec"), "user": us("user_usec")},
                "throttling": {"periods": st.get("nr_periods"), "throttled_periods": st.get("nr_throttled"),
                                "throttled_time": us("throttled_usec")}
            });
            memory = json!({
                "usage": {"usage": read_u64(&d.path.join("memory.current")),
                          "limit": read_u64(&d.path.join("memory.max")).unwrap_or(u64::MAX),
                          "max": read_u64(&d.path.join("memory.peak"))},
                "raw": read_flat(&d.path.join("memory.stat"))
            });
            pids = json!({"current": read_u64(&d.path.join("pids.current")),
                          "limit": read_u64(&d.path.join("pids.max")).unwrap_or(0)});
        } else if !d.v2 {
            if has("cpuacct") {
                let st = read_flat(&d.path.join("cpuacct.stat"));
                let tick = 1_000_000_000 / 100u64;
                cpu["usage"] = json!({
                    "total": read_u64(&d.path.join("cpuacct.usage")),
                    "kernel": st.get("system").and_then(Value::as_u64).unwrap_or(0) * tick,
                    "user": st.get("user").and_then(Value::as_u64).unwrap_or(0) * tick,
                });
            }
            if has("cpu") {
                let st = read_flat(&d.path.join("cpu.stat"));
                cpu["throttling"] = json!({"periods": st.get("nr_periods"),
                    "throttled_periods": st.get("nr_throttled"), "throttled_time": st.get("throttled_time")});
            }
            if has("memory") {
                let f = |n: &str| read_u64(&d.path.join(n));
                memory = json!({
                    "usage": {"usage": f("memory.usage_in_bytes"), "max": f("memory.max_usage_in_bytes"),
                              "failcnt": f("memory.failcnt"), "limit": f("memory.limit_in_bytes")},
                    "swap": {"usage": f("memory.memsw.usage_in_bytes"), "max": f("memory.memsw.max_usage_in_bytes"),
                             "failcnt": f("memory.memsw.failcnt"), "limit": f("memory.memsw.limit_in_bytes")},
                    "raw": read_flat(&d.path.join("memory.stat"))
                });
            }
            if has("pids") {
                let limit = fs::read_to_string(d.path.join("pids.max"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                pids = json!({"current": read_u64(&d.path.join("pids.current")), "limit": limit});
            }
        }
    }
    json!({"cpu": cpu, "memory": memory, "pids": pids})
}

/// OOM kills so far in the container's memory cgroup.
pub fn oom_kills(state: &State) -> u64 {
    state.cgroups.oom_kill_count().unwrap_or(0)
}

/// One line of `events` output, fields in runc's order.
#[derive(serde::Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        f.write_str(&s)
    }
}

pub fn stats_event(state: &State) -> Event {
    Event {
        kind: "stats",
        id: state.id.clone(),
        data: Some(stats(state)),
    }
}

pub fn oom_event(state: &State) -> Event {
    Event {
        kind: "oom",
        id: state.id.clone(),
        data: None,
    }
}
