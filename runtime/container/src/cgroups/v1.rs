//! cgroup v1: one hierarchy per controller (or a few co-mounted ones).

use super::{CgroupDir, DeviceRule, cg_err, write_file};
use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A new cpuset cgroup starts with empty cpus/mems and refuses tasks: like runc, fill every
/// level from the hierarchy's root down to the container's cgroup whose sets are still empty
/// with its parent's.
pub(super) fn init_cpuset(dir: &CgroupDir) -> Result<()> {
    let Ok(rel) = dir.path.strip_prefix(&dir.mount_point) else {
        return Ok(());
    };
    let mut parent = dir.mount_point.clone();
    for comp in rel.components() {
        let level = parent.join(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read(&level, file)?.trim().is_empty() {
                let from_parent = read(&parent, file)?;
                write_file(&level, file, from_parent.trim())?;
            }
        }
        parent = level;
    }
    Ok(())
}

fn read(dir: &Path, file: &str) -> Result<String> {
    let p = dir.join(file);
    fs::read_to_string(&p).map_err(|e| cg_err(&p, e.to_string()))
}

fn missing(dir: &CgroupDir, what: &str) -> Error {
    cg_err(
        &dir.path,
        format!("{what} requested but the host has no such cgroup v1 controller file"),
    )
}

/// Applies the resources that belong to the controllers of this hierarchy.
pub(super) fn apply(dir: &CgroupDir, res: &LinuxResources, devices: &[DeviceRule]) -> Result<()> {
    for c in &dir.controllers {
        match c.as_str() {
            "cpu" => {
                if let Some(cpu) = res.cpu() {
                    apply_cpu(dir, cpu)?;
                }
            }
            "cpuset" => {
                if let Some(cpu) = res.cpu() {
                    if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                        write_file(&dir.path, "cpuset.cpus", cpus)?;
                    }
                    if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                        write_file(&dir.path, "cpuset.mems", mems)?;
                    }
                }
            }
            "memory" => {
                if let Some(m) = res.memory() {
                    apply_memory(dir, m)?;
                }
            }
            "pids" => {
                if let Some(p) = res.pids() {
                    let v = if p.limit() <= 0 {
                        "max".to_string()
                    } else {
                        p.limit().to_string()
                    };
                    write_file(&dir.path, "pids.max", &v)?;
                }
            }
            "blkio" => {
                if let Some(b) = res.block_io() {
                    apply_blkio(dir, b)?;
                }
            }
            "devices" => apply_devices(dir, devices)?,
            "hugetlb" => {
                for h in res.hugepage_limits().iter().flatten() {
                    write_file(
                        &dir.path,
                        &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
                        &h.limit().to_string(),
                    )?;
                }
            }
            "net_cls" => {
                if let Some(id) = res.network().as_ref().and_then(|n| n.class_id()) {
                    write_file(&dir.path, "net_cls.classid", &id.to_string())?;
                }
            }
            "net_prio" => {
                for p in res
                    .network()
                    .as_ref()
                    .and_then(|n| n.priorities().clone())
                    .unwrap_or_default()
                {
                    write_file(
                        &dir.path,
                        "net_prio.ifpriomap",
                        &format!("{} {}", p.name(), p.priority()),
                    )?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Resources whose controller is not mounted at all must not be dropped silently.
pub(super) fn refuse_v2_only(res: &LinuxResources) -> Result<()> {
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(Error::Config(
            "linux.resources.unified requires cgroup v2, but the host uses cgroup v1".into(),
        ));
    }
    Ok(())
}

fn apply_cpu(dir: &CgroupDir, cpu: &LinuxCpu) -> Result<()> {
    let p = &dir.path;
    if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
        write_file(p, "cpu.shares", &shares.to_string())?;
    }
    if let Some(period) = cpu.period().filter(|v| *v != 0) {
        write_file(p, "cpu.cfs_period_us", &period.to_string())?;
    }
    if let Some(quota) = cpu.quota().filter(|v| *v != 0) {
        write_file(p, "cpu.cfs_quota_us", &quota.to_string())?;
    }
    if let Some(burst) = cpu.burst() {
        if !p.join("cpu.cfs_burst_us").exists() {
            return Err(missing(dir, "cpu.burst"));
        }
        write_file(p, "cpu.cfs_burst_us", &burst.to_string())?;
    }
    if let Some(idle) = cpu.idle() {
        if !p.join("cpu.idle").exists() {
            return Err(missing(dir, "cpu.idle"));
        }
        write_file(p, "cpu.idle", &idle.to_string())?;
    }
    if let Some(rp) = cpu.realtime_period().filter(|v| *v != 0) {
        write_file(p, "cpu.rt_period_us", &rp.to_string())?;
    }
    if let Some(rr) = cpu.realtime_runtime().filter(|v| *v != 0) {
        write_file(p, "cpu.rt_runtime_us", &rr.to_string())?;
    }
    Ok(())
}

fn apply_memory(dir: &CgroupDir, m: &LinuxMemory) -> Result<()> {
    let p = &dir.path;
    let limit = m.limit().filter(|v| *v != 0);
    let swap = m.swap().filter(|v| *v != 0);
    let memsw = p.join("memory.memsw.limit_in_bytes");
    match (limit, swap) {
        (Some(limit), Some(swap)) => {
            if !memsw.exists() {
                if swap != limit {
                    return Err(missing(dir, "memory.swap (swap accounting)"));
                }
                write_file(p, "memory.limit_in_bytes", &limit.to_string())?;
            } else {
                // memsw must stay >= limit at every step: order the two writes accordingly.
                let cur: i64 = read(p, "memory.limit_in_bytes")?
                    .trim()
                    .parse()
                    .unwrap_or(i64::MAX);
                if swap == -1 || cur < swap {
                    write_file(p, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                    write_file(p, "memory.limit_in_bytes", &limit.to_string())?;
                } else {
                    write_file(p, "memory.limit_in_bytes", &limit.to_string())?;
                    write_file(p, "memory.memsw.limit_in_bytes", &swap.to_string())?;
                }
            }
        }
        (Some(limit), None) => write_file(p, "memory.limit_in_bytes", &limit.to_string())?,
        (None, Some(swap)) => {
            if !memsw.exists() {
                return Err(missing(dir, "memory.swap (swap accounting)"));
            }
            write_file(p, "memory.memsw.limit_in_bytes", &swap.to_string())?;
        }
        (None, None) => {}
    }
    if let Some(r) = m.reservation().filter(|v| *v != 0) {
        write_file(p, "memory.soft_limit_in_bytes", &r.to_string())?;
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(Error::Config(format!(
                "linux.resources.memory.swappiness {s} is out of range 0..=100"
            )));
        }
        write_file(p, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        write_file(p, "memory.oom_control", "1")?;
    }
    if let Some(k) = m.kernel_tcp().filter(|v| *v != 0) {
        write_file(p, "memory.kmem.tcp.limit_in_bytes", &k.to_string())?;
    }
    Ok(())
}

fn apply_blkio(dir: &CgroupDir, b: &LinuxBlockIo) -> Result<()> {
    let p = &dir.path;
    let weight_file = if p.join("blkio.weight").exists() {
        Some("blkio.weight")
    } else if p.join("blkio.bfq.weight").exists() {
        Some("blkio.bfq.weight")
    } else {
        None
    };
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        let f = weight_file.ok_or_else(|| missing(dir, "blockIO.weight"))?;
        write_file(p, f, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
        if !p.join("blkio.leaf_weight").exists() {
            return Err(missing(dir, "blockIO.leafWeight"));
        }
        write_file(p, "blkio.leaf_weight", &w.to_string())?;
    }
    for wd in b.weight_device().iter().flatten() {
        if let Some(w) = wd.weight() {
            let f = if weight_file == Some("blkio.bfq.weight") {
                "blkio.bfq.weight_device"
            } else {
                "blkio.weight_device"
            };
            if !p.join(f).exists() {
                return Err(missing(dir, "blockIO.weightDevice"));
            }
            write_file(p, f, &format!("{}:{} {}", wd.major(), wd.minor(), w))?;
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    for (file, list) in throttles {
        for t in list.iter().flatten() {
            write_file(
                p,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
            )?;
        }
    }
    Ok(())
}

fn apply_devices(dir: &CgroupDir, rules: &[DeviceRule]) -> Result<()> {
    if rules.is_empty() {
        // No device rules in the config: the cgroup keeps the kernel's allow-all default.
        return Ok(());
    }
    // Start from deny-all, then replay the rules in order: the last matching rule wins,
    // which is what the spec asks for. Each write is one rule; the two files are opened
    // once (a pod's default rules are a dozen writes below a deep cgroup path).
    let open = |file: &str| {
        let p = dir.path.join(file);
        match fs::OpenOptions::new().write(true).open(&p) {
            Ok(f) => Ok((f, p)),
            Err(e) => Err(cg_err(&p, format!("opening: {e}"))),
        }
    };
    let mut allow = open("devices.allow")?;
    let mut deny = open("devices.deny")?;
    let put = |(f, p): &mut (fs::File, PathBuf), rule: &str| {
        f.write_all(rule.as_bytes())
            .map_err(|e| cg_err(p, format!("writing {rule:?}: {e}")))
    };
    put(&mut deny, "a")?;
    for r in rules {
        let rule = r.to_v1();
        if r.allow {
            put(&mut allow, &rule)?;
        } else {
            put(&mut deny, &rule)?;
        }
    }
    Ok(())
}
