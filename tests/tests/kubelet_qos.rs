//! The kubelet's QoS cgroups, end to end: the `kubepods` hierarchy it makes at start (node
//! allocatable), one `pod<uid>` cgroup per pod below its QoS class with the values upstream
//! derives from requests and limits, the Burstable class's shares following the pods, and pod
//! cgroups going with their pods (removed, finished, or orphaned). Values are read from the
//! cgroup files below the fixture's cgroup root, on cgroup v1 (this host) or v2 (the guest).

use keelson_tests::cgroup::{CgroupVersion, Hierarchy, hierarchies};
use keelson_tests::kubelet::{Stack, phase, uid};
use serde_json::Value;
use std::path::PathBuf;

/// The fixture's cgroup tree as the kubelet and the runtime resolve it.
struct Cg {
    v2: bool,
    root: String,
    hs: Vec<Hierarchy>,
}

impl Cg {
    fn of(s: &Stack) -> Cg {
        let hs = hierarchies().expect("hierarchies");
        let v1 = hs.iter().any(|h| {
            h.version == CgroupVersion::V1
                && h.controllers.iter().any(|c| c == "cpu" || c == "memory")
        });
        Cg {
            v2: !v1,
            root: s.kl.cgroup_root().expect("fixture cgroup root").to_string(),
            hs,
        }
    }

    /// The directory of `rel` (below the cgroup root) in the hierarchy of `controller`.
    fn dir(&self, controller: &str, rel: &str) -> PathBuf {
        let h = self
            .hs
            .iter()
            .find(|h| {
                if self.v2 {
                    h.version == CgroupVersion::V2
                } else {
                    h.controllers.iter().any(|c| c == controller)
                }
            })
            .unwrap_or_else(|| panic!("no hierarchy for {controller}"));
        h.own_dir.join(&self.root).join(rel)
    }

    fn read(&self, controller: &str, rel: &str, file: &str) -> String {
        let p = self.dir(controller, rel).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// Whether `rel` exists in any hierarchy.
    fn exists_anywhere(&self, rel: &str) -> bool {
        self.hs
            .iter()
            .any(|h| h.own_dir.join(&self.root).join(rel).is_dir())
    }

    /// cpu shares (v1), or the cpu.weight they convert to (v2).
    fn assert_shares(&self, rel: &str, shares: u64) {
        if self.v2 {
            let weight = 1 + (shares - 2) * 9999 / 262_142;
            assert_eq!(
                self.read("cpu", rel, "cpu.weight"),
                weight.to_string(),
                "{rel}"
            );
        } else {
            assert_eq!(
                self.read("cpu", rel, "cpu.shares"),
                shares.to_string(),
                "{rel}"
            );
        }
    }

    /// The CFS quota and period; None is no quota.
    fn assert_quota(&self, rel: &str, quota: Option<i64>) {
        if self.v2 {
            let want = match quota {
                Some(q) => format!("{q} 100000"),
                None => "max 100000".into(),
            };
            assert_eq!(self.read("cpu", rel, "cpu.max"), want, "{rel}");
        } else {
            let want = quota.unwrap_or(-1).to_string();
            assert_eq!(self.read("cpu", rel, "cpu.cfs_quota_us"), want, "{rel}");
            assert_eq!(
                self.read("cpu", rel, "cpu.cfs_period_us"),
                "100000",
                "{rel}"
            );
        }
    }

    /// The memory limit in bytes (page-rounded as the kernel keeps it); None is no limit.
    fn memory(&self, rel: &str) -> Option<u64> {
        let v = if self.v2 {
            self.read("memory", rel, "memory.max")
        } else {
            self.read("memory", rel, "memory.limit_in_bytes")
        };
        match v.parse::<u64>() {
            Ok(n) if n < (1u64 << 62) => Some(n),
            _ => None,
        }
    }

    fn pids(&self, rel: &str) -> String {
        self.read("pids", rel, "pids.max")
    }

    /// Processes in `rel` and below, in the memory hierarchy.
    fn tasks_below(&self, rel: &str) -> usize {
        let mut n = 0;
        let mut stack = vec![self.dir("memory", rel)];
        while let Some(d) = stack.pop() {
            n += std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count();
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        n
    }
}

fn pod(s: &Stack, name: &str, policy: &str, script: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  \
         terminationGracePeriodSeconds: 2\n  hostNetwork: true\n  containers:\n  - name: main\n    \
         image: {image}\n    command: [/bin/sh, -c, {script:?}]\n    resources: {resources}\n",
        image = s.image
    )
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .expect("MemTotal")
        * 1024
}

fn running(p: &Value) -> bool {
    phase(p) == "Running"
}

#[test]
fn qos_cgroups_follow_requests_and_limits() {
    let s = Stack::start_with(
        "kl-qos",
        "podPidsLimit: 1000\nsystemReserved: {memory: 100Mi}\nkubeReserved: {cpu: 100m}\n",
    );
    let cg = Cg::of(&s);

    // Node allocatable on kubepods: capacity minus the reservations.
    let cpus = std::thread::available_parallelism().expect("cpus").get() as u64;
    cg.assert_shares("kubepods", (cpus * 1000 - 100) * 1024 / 1000);
    let page = 4096;
    assert_eq!(
        cg.memory("kubepods"),
        Some((mem_total() - (100 << 20)) / page * page)
    );
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("pid_max");
    assert_eq!(cg.pids("kubepods"), pid_max.trim());
    cg.assert_shares("kubepods/besteffort", 2);
    assert!(cg.exists_anywhere("kubepods/burstable"));

    let sleep = "exec /bin/busybox sleep 1000";
    s.kl.write_manifest(
        "g.yaml",
        &pod(
            &s,
            "g",
            "Always",
            sleep,
            "{limits: {cpu: 250m, memory: 64Mi}}",
        ),
    )
    .expect("manifest");
    s.kl.write_manifest(
        "b.yaml",
        &pod(
            &s,
            "b",
            "Always",
            sleep,
            "{requests: {cpu: 100m}, limits: {cpu: 500m}}",
        ),
    )
    .expect("manifest");
    s.kl.write_manifest("be.yaml", &pod(&s, "be", "Always", sleep, "{}"))
        .expect("manifest");
    let g = uid(&s.wait("g", "g running", running));
    let b = uid(&s.wait("b", "b running", running));
    let be = uid(&s.wait("be", "be running", running));
    assert_eq!(
        s.kl.pod("g").expect("g")["status"]["qosClass"],
        "Guaranteed"
    );

    // Guaranteed: directly below kubepods, shares from the request, quota and memory from
    // the limits, the pids limit from podPidsLimit.
    let gp = format!("kubepods/pod{g}");
    cg.assert_shares(&gp, 256);
    cg.assert_quota(&gp, Some(25_000));
    assert_eq!(cg.memory(&gp), Some(64 << 20));
    assert_eq!(cg.pids(&gp), "1000");
    // Burstable: every container has a cpu limit (quota), none a memory limit.
    let bp = format!("kubepods/burstable/pod{b}");
    cg.assert_shares(&bp, 102);
    cg.assert_quota(&bp, Some(50_000));
    assert_eq!(cg.memory(&bp), None);
    cg.assert_shares("kubepods/burstable", 102);
    // BestEffort: 2 shares, nothing else.
    let bep = format!("kubepods/besteffort/pod{be}");
    cg.assert_shares(&bep, 2);
    cg.assert_quota(&bep, None);
    assert_eq!(cg.memory(&bep), None);
    // The runtime runs each pod's sandbox and containers below its pod cgroup.
    for p in [&gp, &bp, &bep] {
        assert!(
            cg.tasks_below(p) >= 2,
            "{p}: no sandbox and container below"
        );
    }

    // A pod that goes: its cgroup goes (every hierarchy), and the Burstable class's shares
    // fall back to the minimum.
    s.kl.remove_manifest("b.yaml").expect("rm");
    s.wait_until(
        "b's pod cgroup removed and burstable back to 2 shares",
        || {
            !cg.exists_anywhere(&bp)
                && if cg.v2 {
                    cg.read("cpu", "kubepods/burstable", "cpu.weight") == "1"
                } else {
                    cg.read("cpu", "kubepods/burstable", "cpu.shares") == "2"
                }
        },
    );

    // A pod that finishes: its cgroup goes once it has Succeeded.
    s.kl.write_manifest("done.yaml", &pod(&s, "done", "Never", "exit 0", "{}"))
        .expect("manifest");
    let done = uid(&s.wait("done", "done succeeded", |p| phase(p) == "Succeeded"));
    let donep = format!("kubepods/besteffort/pod{done}");
    s.wait_until("the finished pod's cgroup removed", || {
        !cg.exists_anywhere(&donep)
    });

    // An orphaned pod cgroup (no pod of that UID): housekeeping kills and removes it.
    let orphan = "kubepods/besteffort/pod00000000-0000-0000-0000-0000000000aa";
    for h in &cg.hs {
        std::fs::create_dir_all(h.own_dir.join(&cg.root).join(orphan)).expect("orphan");
    }
    s.wait_until("the orphaned pod cgroup removed", || {
        !cg.exists_anywhere(orphan)
    });

    // The others are untouched.
    assert!(cg.exists_anywhere(&gp) && cg.exists_anywhere(&bep));
    assert!(running(&s.kl.pod("g").expect("g")));
}

#[test]
fn without_cgroups_per_qos_pods_run_below_the_cgroup_root() {
    let s = Stack::start_with(
        "kl-noqos",
        "cgroupsPerQOS: false\nenforceNodeAllocatable: []\n",
    );
    let cg = Cg::of(&s);
    s.kl.write_manifest(
        "p.yaml",
        &pod(&s, "p", "Always", "exec /bin/busybox sleep 1000", "{}"),
    )
    .expect("manifest");
    let p = s.wait("p", "p running", running);
    assert!(!cg.exists_anywhere("kubepods"));
    let sandbox = s.sandboxes_of(&uid(&p)).pop().expect("sandbox").id;
    assert!(
        cg.tasks_below(&sandbox) >= 1,
        "the sandbox runs in <root>/<id>"
    );
}
