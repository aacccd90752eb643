//! cgroup v2: one unified hierarchy, controllers enabled per level through subtree_control.

use super::{CgroupDir, DeviceRule, cg_err, write_file};
use crate::error::{Error, Result};
use oci_spec::runtime::LinuxResources;
use std::fs;

/// Enables the available controllers along the path, from the hierarchy's root down to the
/// container's parent, as runc's v2 driver does: a controller reaches a cgroup only when every
/// ancestor delegates it. Levels that already delegate a controller are not written.
pub(super) fn enable_controllers(dir: &CgroupDir, mount_point: &std::path::Path) -> Result<()> {
    let Ok(rel) = dir.path.strip_prefix(mount_point) else {
        return Ok(());
    };
    let mut level = mount_point.to_path_buf();
    for comp in rel.components() {
        let avail_file = level.join("cgroup.controllers");
        let avail =
            fs::read_to_string(&avail_file).map_err(|e| cg_err(&avail_file, e.to_string()))?;
        let enabled = fs::read_to_string(level.join("cgroup.subtree_control")).unwrap_or_default();
        let want: Vec<String> = avail
            .split_whitespace()
            .filter(|c| {
                [
                    "cpu", "cpuset", "memory", "pids", "io", "hugetlb", "rdma", "misc",
                ]
                .contains(c)
            })
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !want.is_empty() {
            write_file(&level, "cgroup.subtree_control", &want.join(" "))?;
        }
        level.push(comp);
    }
    Ok(())
}

/// cpu.shares (2..262144) to cpu.weight (1..10000), the conversion every runtime uses.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + ((shares.saturating_sub(2)) * 9999) / 262142
}

/// blkio weight (10..1000) to io.weight (1..10000).
pub fn blkio_weight_to_io(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

pub(super) fn apply(dir: &CgroupDir, res: &LinuxResources, devices: &[DeviceRule]) -> Result<()> {
    let p = &dir.path;
    if let Some(cpu) = res.cpu() {
        if let Some(s) = cpu.shares().filter(|s| *s != 0) {
            write_file(p, "cpu.weight", &shares_to_weight(s).to_string())?;
        }
        let quota = cpu.quota().filter(|q| *q != 0);
        let period = cpu.period().filter(|q| *q != 0);
        if quota.is_some() || period.is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            let per = period.unwrap_or(100_000);
            write_file(p, "cpu.max", &format!("{q} {per}"))?;
        }
        if let Some(b) = cpu.burst() {
            write_file(p, "cpu.max.burst", &b.to_string())?;
        }
        if let Some(i) = cpu.idle() {
            write_file(p, "cpu.idle", &i.to_string())?;
        }
        if cpu.realtime_runtime().is_some_and(|v| v != 0)
            || cpu.realtime_period().is_some_and(|v| v != 0)
        {
            return Err(Error::Config(
                "realtime cpu limits are not supported on cgroup v2".into(),
            ));
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            write_file(p, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            write_file(p, "cpuset.mems", mems)?;
        }
    }
    if let Some(m) = res.memory() {
        let limit = m.limit().filter(|v| *v != 0);
        if let Some(l) = limit {
            write_file(p, "memory.max", &max_or(l))?;
        }
        if let Some(swap) = m.swap().filter(|v| *v != 0) {
            // OCI's swap is memory+swap; v2's memory.swap.max is swap alone.
            let v = match (swap, limit) {
                (-1, _) => "max".to_string(),
                (s, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(Error::Config(format!(
                            "memory.swap {s} must not be below memory.limit {l}"
                        )));
                    }
                    (s - l).to_string()
                }
                _ => {
                    return Err(Error::Config(
                        "memory.swap needs memory.limit on cgroup v2".into(),
                    ));
                }
            };
            write_file(p, "memory.swap.max", &v)?;
        }
        if let Some(r) = m.reservation().filter(|v| *v != 0) {
            write_file(p, "memory.low", &max_or(r))?;
        }
        if m.disable_oom_killer() == Some(true) {
            return Err(Error::Config(
                "memory.disableOOMKiller is not supported on cgroup v2".into(),
            ));
        }
    }
    if let Some(pids) = res.pids() {
        write_file(p, "pids.max", &max_or(pids.limit()))?;
    }
    if let Some(b) = res.block_io() {
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            write_file(p, "io.weight", &blkio_weight_to_io(w).to_string())?;
        }
        for wd in b.weight_device().iter().flatten() {
            if let Some(w) = wd.weight() {
                write_file(
                    p,
                    "io.weight",
                    &format!("{}:{} {}", wd.major(), wd.minor(), blkio_weight_to_io(w)),
                )?;
            }
        }
        let limits = [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ];
        for (key, list) in limits {
            for t in list.iter().flatten() {
                write_file(
                    p,
                    "io.max",
                    &format!("{}:{} {}={}", t.major(), t.minor(), key, t.rate()),
                )?;
            }
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        write_file(
            p,
            &format!("hugetlb.{}.max", h.page_size()),
            &h.limit().to_string(),
        )?;
    }
    for (k, v) in res.unified().iter().flatten() {
        if k.contains('/') || k.starts_with('.') {
            return Err(Error::Config(format!(
                "linux.resources.unified key {k:?} is not a cgroup file name"
            )));
        }
        write_file(p, k, v)?;
    }
    if !devices.is_empty() {
        super::devices_bpf::attach(p, devices)?;
    }
    Ok(())
}

fn max_or(v: i64) -> String {
    if v < 0 { "max".into() } else { v.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn conversions() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10000);
    }
}
