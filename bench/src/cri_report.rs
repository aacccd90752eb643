//! The `cri` bench's printed figures: the header, the tables, the ratios and the targets.

use std::path::Path;
use std::time::Duration;

use keelson_tests::cni::Plugins;

use crate::stats::{ms, quantile};
use crate::{Args, CONTAINER_COMMAND, PodStart, Subject, sys};
use keelson_tests::cri_memory::{Memory, Usage};
use keelson_tests::cri_stack::{Images, Kind, PAUSE_ENTRYPOINT};
use keelson_tests::placement::Placement;

/// The targets: keelsond at most this fraction of containerd.
const LATENCY_TARGET: f64 = 0.5;
const MEMORY_TARGET: f64 = 1.0 / 3.0;

pub fn print_header(
    args: &Args,
    plugins: &Plugins,
    subjects: &[Subject],
    placement: &Placement,
    images: &Images,
) {
    println!(
        "CRI pod start and memory: {} pods per runtime, container {:?} from {}",
        args.pods, CONTAINER_COMMAND, images.busybox
    );
    for s in subjects {
        let d = &s.daemon;
        println!(
            "  {:<10} {}  ({}; CRI Version: {})",
            d.kind.name(),
            d.bin.display(),
            sys::version_line(&d.bin, "--version"),
            d.version
        );
    }
    println!(
        "  runc       {}  ({})",
        args.runc.display(),
        sys::version_line(&args.runc, "--version")
    );
    println!(
        "  shim       {}",
        sys::version_line(Path::new("containerd-shim-runc-v2"), "-v")
    );
    println!(
        "  containerd sandbox image {} (entrypoint {:?})",
        images.pause, PAUSE_ENTRYPOINT
    );
    println!(
        "  CNI: {} plugins from {} (bridge + host-local, portmap; loopback), each runtime on \
         its own bridge in its own test host netns",
        plugins.label,
        plugins.dir.display()
    );
    println!(
        "  cgroup_parent: {}/<runtime>; seccomp: {:?}",
        placement.cgroups_path, args.seccomp
    );
    println!();
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn col(pods: &[PodStart], f: impl Fn(&PodStart) -> Duration) -> Vec<f64> {
    pods.iter().map(|p| ms(f(p))).collect()
}

fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

fn p99(v: &[f64]) -> Option<f64> {
    quantile(v, 0.99)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn usage_cell(u: Option<&Usage>) -> String {
    match u {
        Some(u) => format!("{:>8} {:>8} {:>5}", mib(u.pss_kib), mib(u.rss_kib), u.procs),
        None => format!("{:>8} {:>8} {:>5}", "-", "-", "-"),
    }
}

pub fn print_results(subjects: &[Subject], skipped: &[(&str, String)], pods: usize, settle: u64) {
    println!(
        "pod start one at a time (RunPodSandbox + CreateContainer + StartContainer until \
         ContainerStatus RUNNING), ms"
    );
    println!(
        "{:<11} {:>4} {:>8} {:>8}  | medians: {:>8} {:>8} {:>8} {:>8}",
        "runtime", "n", "median", "p99", "run pod", "create", "start", "running"
    );
    for s in subjects {
        let p = &s.sequential;
        let total = col(p, |x| x.total);
        println!(
            "{:<11} {:>4} {:>8} {:>8}  |          {:>8} {:>8} {:>8} {:>8}",
            s.name(),
            p.len(),
            cell(median(&total), 2),
            cell(p99(&total), 2),
            cell(median(&col(p, |x| x.run_sandbox)), 2),
            cell(median(&col(p, |x| x.create)), 2),
            cell(median(&col(p, |x| x.start)), 2),
            cell(median(&col(p, |x| x.running)), 2),
        );
    }
    println!();
    println!("{pods} pods started at once (each pod: the same calls), ms");
    println!(
        "{:<11} {:>4} {:>6} {:>9} {:>12} {:>9}",
        "runtime", "ok", "failed", "wall", "per-pod med", "p99"
    );
    for s in subjects {
        match &s.concurrent {
            Some(b) => {
                let total = col(&b.pods, |x| x.total);
                println!(
                    "{:<11} {:>4} {:>6} {:>9.1} {:>12} {:>9}",
                    s.name(),
                    b.pods.len(),
                    b.failed,
                    ms(b.wall),
                    cell(median(&total), 2),
                    cell(p99(&total), 2),
                );
            }
            None => println!(
                "{:<11} {:>4} {:>6} {:>9} {:>12} {:>9}",
                s.name(),
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
    println!();
    println!(
        "memory of each runtime's own processes with {pods} pods running ({settle} s after the \
         last start): MiB PSS, MiB RSS, processes"
    );
    println!(
        "{:<22} {}",
        "",
        subjects_line(subjects, "PSS      RSS procs")
    );
    type Pick = fn(&Memory) -> Usage;
    let rows: [(&str, Pick); 4] = [
        ("daemon", |m| m.daemon.clone()),
        ("shims / monitors", |m| m.helpers.clone()),
        ("infra (pause)", |m| m.infra.clone()),
        ("total", |m| m.total()),
    ];
    for (label, pick) in rows {
        print!("{label:<22}");
        for s in subjects {
            print!("  {:<24}", usage_cell(s.loaded.as_ref().map(pick).as_ref()));
        }
        println!();
    }
    print!("{:<22}", "idle, before any pod");
    for s in subjects {
        print!(
            "  {:<24}",
            usage_cell(s.idle.as_ref().map(Memory::total).as_ref())
        );
    }
    println!();
    print!("{:<22}", "per pod (KiB PSS)");
    for s in subjects {
        let per = match (&s.loaded, &s.idle) {
            (Some(l), Some(i)) if !s.sequential.is_empty() => Some(
                (l.total().pss_kib as f64 - i.total().pss_kib as f64) / s.sequential.len() as f64,
            ),
            _ => None,
        };
        print!("  {:<24}", format!("{:>8}", cell(per, 0)));
    }
    println!();
    for s in subjects {
        if let Some(m) = &s.loaded {
            let names: Vec<String> = m
                .total()
                .names
                .iter()
                .map(|(n, c)| format!("{n} x{c}"))
                .collect();
            println!("  {} counted: {}", s.name(), names.join(", "));
        }
    }
    println!();
    println!("pod removal one at a time (StopPodSandbox + RemovePodSandbox), ms");
    for s in subjects {
        let v: Vec<f64> = s.removal.iter().map(|d| ms(*d)).collect();
        println!(
            "{:<11} n {:>3}  median {:>8}  p99 {:>8}",
            s.name(),
            v.len(),
            cell(median(&v), 2),
            cell(p99(&v), 2)
        );
    }

    print_ratios(subjects);

    let mut remarks: Vec<String> = skipped
        .iter()
        .map(|(n, why)| format!("{n}: not run: {why}"))
        .collect();
    for s in subjects {
        if let Some(f) = &s.failure {
            remarks.push(format!("{}: {f}", s.name()));
        }
        if let Some(b) = &s.concurrent
            && let Some(e) = &b.first_error
        {
            remarks.push(format!(
                "{}: {} concurrent pods failed, first: {e}",
                s.name(),
                b.failed
            ));
        }
    }
    if sys::interrupted() {
        remarks.push("interrupted: the figures are partial".into());
    }
    println!();
    if remarks.is_empty() {
        println!("no failures");
    } else {
        println!("remarks:");
        for r in remarks {
            println!("  {r}");
        }
    }
}

fn subjects_line(subjects: &[Subject], what: &str) -> String {
    subjects
        .iter()
        .map(|s| format!("{:<24}", format!("{} ({what})", s.name())))
        .collect::<Vec<_>>()
        .join("  ")
}

fn print_ratios(subjects: &[Subject]) {
    let find = |k: Kind| subjects.iter().find(|s| s.daemon.kind == k);
    let (Some(k), Some(c)) = (find(Kind::Keelsond), find(Kind::Containerd)) else {
        return;
    };
    let seq = |s: &Subject, q: f64| quantile(&col(&s.sequential, |x| x.total), q);
    let conc_wall = |s: &Subject| s.concurrent.as_ref().map(|b| ms(b.wall));
    let conc = |s: &Subject, q: f64| {
        s.concurrent
            .as_ref()
            .and_then(|b| quantile(&col(&b.pods, |x| x.total), q))
    };
    let mem = |s: &Subject, pss: bool| {
        s.loaded.as_ref().map(|m| {
            let t = m.total();
            (if pss { t.pss_kib } else { t.rss_kib }) as f64
        })
    };
    println!();
    println!("keelsond / containerd (below 1.00x: keelsond takes less)");
    let rows = [
        ("start median", ratio(seq(k, 0.5), seq(c, 0.5))),
        ("start p99", ratio(seq(k, 0.99), seq(c, 0.99))),
        ("concurrent wall", ratio(conc_wall(k), conc_wall(c))),
        ("concurrent median", ratio(conc(k, 0.5), conc(c, 0.5))),
        ("concurrent p99", ratio(conc(k, 0.99), conc(c, 0.99))),
        ("memory PSS", ratio(mem(k, true), mem(c, true))),
        ("memory RSS", ratio(mem(k, false), mem(c, false))),
    ];
    // A batch with failed pods is faster or slower for it: say so next to its ratios.
    let failed: Vec<String> = [k, c]
        .iter()
        .filter_map(|s| {
            let b = s.concurrent.as_ref()?;
            (b.failed > 0).then(|| {
                format!(
                    "{} of {} failed for {}",
                    b.failed,
                    b.failed + b.pods.len(),
                    s.name()
                )
            })
        })
        .collect();
    for (label, r) in rows {
        let note = if label.starts_with("concurrent") && !failed.is_empty() {
            format!("  (not comparable: {})", failed.join(", "))
        } else {
            String::new()
        };
        println!("  {label:<18} {:>8}{note}", ratio_cell(r));
    }
    let verdict = |r: Option<f64>, target: f64| match r {
        Some(r) if r <= target => "met",
        Some(_) => "not met",
        None => "not measured",
    };
    let start = ratio(seq(k, 0.5), seq(c, 0.5));
    let memory = ratio(mem(k, true), mem(c, true));
    println!(
        "target: start latency at most half of containerd's (median, one at a time): {} ({})",
        verdict(start, LATENCY_TARGET),
        ratio_cell(start)
    );
    println!(
        "target: memory at most a third of containerd's (PSS total, {} pods): {} ({})",
        k.sequential.len(),
        verdict(memory, MEMORY_TARGET),
        ratio_cell(memory)
    );
}
