//! Figures from the samples and the table printed at the end.

use std::time::Duration;

use crate::Subject;
use crate::stats::{ms, quantile};

/// One measured lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From spawning `create` to `delete` having exited.
    pub wall: Duration,
    /// User + system CPU of every process of the lifecycle, the container included.
    pub cpu: Duration,
    /// The largest `ru_maxrss` among the lifecycle's processes.
    pub peak_rss_kib: i64,
    /// Spawn of `create` to its exit.
    pub create: Duration,
    /// `start`, spawn to exit.
    pub start: Duration,
    /// From `start` having exited to the container process having exited.
    pub exit_wait: Duration,
    /// `delete`, spawn to exit.
    pub delete: Duration,
}

fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The figures of one runtime.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    wall_median: Option<f64>,
    wall_p90: Option<f64>,
    cpu_median: Option<f64>,
    rss_median: Option<f64>,
}

impl Figures {
    /// (label, value) of each figure, in table order.
    fn rows(&self) -> [(&'static str, Option<f64>); 4] {
        [
            ("wall median", self.wall_median),
            ("wall p90", self.wall_p90),
            ("cpu median", self.cpu_median),
            ("peak RSS median", self.rss_median),
        ]
    }

    fn of(samples: &[Sample]) -> Figures {
        let col = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
        let wall = col(&|s| ms(s.wall));
        Figures {
            wall_median: median(&wall),
            wall_p90: quantile(&wall, 0.9),
            cpu_median: median(&col(&|s| ms(s.cpu))),
            rss_median: median(&col(&|s| s.peak_rss_kib as f64)),
        }
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_string(),
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_string(),
    }
}

/// Prints the main table, the ratios, the per-step medians and what went wrong.
pub fn print(subjects: &[Subject], skipped: &[(&str, String)]) {
    println!(
        "{:<8} {:>5} {:>12} {:>12} {:>11} {:>14}",
        "runtime", "n", "wall med ms", "wall p90 ms", "cpu med ms", "peak RSS KiB"
    );
    for s in subjects {
        let f = Figures::of(&s.samples);
        println!(
            "{:<8} {:>5} {:>12} {:>12} {:>11} {:>14}",
            s.name,
            s.samples.len(),
            cell(f.wall_median, 2),
            cell(f.wall_p90, 2),
            cell(f.cpu_median, 2),
            cell(f.rss_median, 0),
        );
    }
    for (name, _) in skipped {
        println!(
            "{:<8} {:>5} {:>12} {:>12} {:>11} {:>14}",
            name, "-", "-", "-", "-", "-"
        );
    }

    let keelson = subjects.iter().find(|s| s.name == "keelson");
    let peers: Vec<&Subject> = subjects.iter().filter(|s| s.name != "keelson").collect();
    if let Some(k) = keelson.filter(|_| !peers.is_empty()) {
        let ours = Figures::of(&k.samples).rows();
        let theirs: Vec<_> = peers
            .iter()
            .map(|p| Figures::of(&p.samples).rows())
            .collect();
        println!();
        println!("keelson / peer (below 1.00x: keelson takes less)");
        print!("{:<16}", "figure");
        for p in &peers {
            print!(" {:>12}", format!("/{}", p.name));
        }
        println!();
        for (i, (label, value)) in ours.iter().enumerate() {
            print!("{label:<16}");
            for peer in &theirs {
                print!(" {:>12}", ratio(*value, peer[i].1));
            }
            println!();
        }
    }

    println!();
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10}   (median ms per step)",
        "runtime", "create", "start", "exit wait", "delete"
    );
    for s in subjects {
        let col = |f: &dyn Fn(&Sample) -> Duration| {
            median(&s.samples.iter().map(|x| ms(f(x))).collect::<Vec<f64>>())
        };
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>10}",
            s.name,
            cell(col(&|x| x.create), 2),
            cell(col(&|x| x.start), 2),
            cell(col(&|x| x.exit_wait), 2),
            cell(col(&|x| x.delete), 2),
        );
    }

    let mut remarks = Vec::new();
    for (name, why) in skipped {
        remarks.push(format!("{name}: not run: {why}"));
    }
    for s in subjects {
        if let Some(why) = &s.failure {
            remarks.push(format!("{}: {why}", s.name));
        }
        for (what, count) in &s.notes {
            remarks.push(format!("{}: {what} (x{count})", s.name));
        }
    }
    println!();
    if remarks.is_empty() {
        println!("no failures, no leftovers (state in --root, cgroups, processes) after delete");
    } else {
        println!("remarks:");
        for r in remarks {
            println!("  {r}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&v), Some(5.5));
        assert_eq!(quantile(&v, 0.9), Some(9.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(quantile(&[7.0], 0.9), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn ratio_cells() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25x");
        assert_eq!(ratio(Some(1.0), None), "n/a");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "n/a");
    }
}
