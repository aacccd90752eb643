//! `cni`: ADD and DEL latency of keelson's CNI plugins against the reference plugins
//! (/usr/lib/cni), run in alternation in the same process: bridge + host-local, loopback, and a
//! bridge + host-local + portmap conflist. Prints medians, ratios and binary sizes; see
//! `bench/README.md`. Every run happens in throwaway network namespaces.

// Shared with the other benches; this one uses part of it.
#[allow(dead_code)]
mod sys;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use keelson_tests::Netns;
use keelson_tests::cni::{Invocation, Plugins, TestNet, enter_netns, invoke_here};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "cni",
    about = "CNI plugin ADD/DEL latency of keelson vs the reference plugins"
)]
struct Args {
    /// Measured ADD+DEL cycles per implementation and scenario
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Unmeasured cycles run first
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// keelson's plugin directory [default: release/ of the CARGO_TARGET_DIR this bench was
    /// built with, else <workspace>/target/release]
    #[arg(long)]
    keelson: Option<PathBuf>,
    /// The reference plugin directory
    #[arg(long, default_value = keelson_tests::cni::REFERENCE_DIR)]
    reference: PathBuf,
}

fn keelson_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if let Some(dir) = option_env!("CARGO_TARGET_DIR") {
        let d = workspace.join(dir).join("release");
        if d.join("bridge").is_file() {
            return d;
        }
    }
    workspace.join("target/release")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Bridge,
    Loopback,
    Portmap,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Bridge => "bridge+host-local",
            Scenario::Loopback => "loopback",
            Scenario::Portmap => "bridge+host-local+portmap",
        }
    }
}

struct Env {
    plugins: Plugins,
    net: TestNet,
    container: Netns,
}

fn run(
    plugins: &Plugins,
    net: &TestNet,
    c: &Netns,
    inv: &Invocation,
    plugin: &str,
    conf: &Value,
) -> Result<(Value, Duration)> {
    let out = invoke_here(plugins, plugin, inv, conf)?;
    if !out.success {
        bail!(
            "{} {plugin} {} failed: {} {}",
            plugins.label,
            inv.command,
            out.stdout,
            out.stderr
        );
    }
    let _ = (net, c);
    Ok((out.json(), out.elapsed))
}

/// One ADD and one DEL of `scenario`; returns their durations.
fn cycle(env: &Env, scenario: Scenario, n: u64) -> Result<(Duration, Duration)> {
    let (p, net, c) = (&env.plugins, &env.net, &env.container);
    let id = format!("bench-{n}");
    match scenario {
        Scenario::Loopback => {
            let conf = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
            let inv = Invocation::new("ADD", &id, c, "lo");
            let (_, add) = run(p, net, c, &inv, "loopback", &conf)?;
            let (_, del) = run(p, net, c, &inv.with_command("DEL"), "loopback", &conf)?;
            Ok((add, del))
        }
        Scenario::Bridge => {
            let conf = net.bridge_conf("1.0.0");
            let inv = Invocation::new("ADD", &id, c, "eth0");
            let (res, add) = run(p, net, c, &inv, "bridge", &conf)?;
            let mut dconf = conf.clone();
            dconf["prevResult"] = res;
            let (_, del) = run(p, net, c, &inv.with_command("DEL"), "bridge", &dconf)?;
            Ok((add, del))
        }
        Scenario::Portmap => {
            let conf = net.bridge_conf("1.0.0");
            let inv = Invocation::new("ADD", &id, c, "eth0");
            let (res, add1) = run(p, net, c, &inv, "bridge", &conf)?;
            let pm = json!({
                "cniVersion": "1.0.0", "name": net.name, "type": "portmap",
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 18443, "containerPort": 443, "protocol": "tcp"}]},
                "prevResult": res,
            });
            let (res2, add2) = run(p, net, c, &inv, "portmap", &pm)?;
            let del = inv.with_command("DEL");
            let (_, del1) = run(p, net, c, &del, "portmap", &pm)?;
            let mut dconf = conf.clone();
            dconf["prevResult"] = res2;
            let (_, del2) = run(p, net, c, &del, "bridge", &dconf)?;
            Ok((add1 + add2, del1 + del2))
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn size(dir: &Path, name: &str) -> String {
    std::fs::metadata(dir.join(name))
        .map(|m| format!("{:.1} MiB", m.len() as f64 / 1048576.0))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Dropped last, after every namespace of the run is gone.
    let _netns_dir = sys::NetnsDirGuard::new();
    let ours = Plugins {
        dir: keelson_dir(args.keelson.clone()),
        label: "keelson",
    };
    let reference = Plugins {
        dir: args.reference.clone(),
        label: "reference",
    };
    for p in [&ours, &reference] {
        for b in ["bridge", "host-local", "loopback", "portmap"] {
            if !p.bin(b).is_file() {
                bail!(
                    "{} plugin {} missing (build with `cargo build --release -p keelson-cni-plugins`)",
                    p.label,
                    p.bin(b).display()
                );
            }
        }
    }
    println!("keelson:   {}", ours.dir.display());
    println!("reference: {}", reference.dir.display());
    println!(
        "iterations: {} (+{} warm-up) per implementation and scenario, alternating\n",
        args.iterations, args.warmup
    );
    let envs: Vec<Env> = [ours.clone(), reference.clone()]
        .into_iter()
        .map(|plugins| -> Result<Env> {
            Ok(Env {
                net: TestNet::new(&format!("b{}", plugins.label)).context("test host netns")?,
                container: Netns::new("bench").context("container netns")?,
                plugins,
            })
        })
        .collect::<Result<_>>()?;
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "scenario", "keelson ADD", "ref ADD", "keelson DEL", "ref DEL", "ADD ratio", "DEL ratio"
    );
    let mut n = 0u64;
    for scenario in [Scenario::Bridge, Scenario::Loopback, Scenario::Portmap] {
        let mut adds = [Vec::new(), Vec::new()];
        let mut dels = [Vec::new(), Vec::new()];
        for i in 0..(args.warmup + args.iterations) {
            for (k, env) in envs.iter().enumerate() {
                n += 1;
                // Each cycle runs on a thread that joined the environment's host netns, so the
                // plugins start with posix_spawn from there (no fork of this process).
                let (a, d) = std::thread::scope(|s| {
                    s.spawn(|| {
                        enter_netns(&env.net.host).context("join the test host netns")?;
                        cycle(env, scenario, n)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("bench thread panicked")))
                })?;
                if i >= args.warmup {
                    adds[k].push(a);
                    dels[k].push(d);
                }
            }
        }
        let (a0, a1) = (median(&mut adds[0]), median(&mut adds[1]));
        let (d0, d1) = (median(&mut dels[0]), median(&mut dels[1]));
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>12} {:>9.2} {:>9.2}",
            scenario.label(),
            ms(a0),
            ms(a1),
            ms(d0),
            ms(d1),
            a0.as_secs_f64() / a1.as_secs_f64(),
            d0.as_secs_f64() / d1.as_secs_f64()
        );
    }
    println!("\n(ratio = keelson / reference; medians; each call timed from spawn to exit)\n");
    println!("{:<12} {:>10} {:>10}", "binary", "keelson", "reference");
    for b in ["bridge", "host-local", "loopback", "portmap"] {
        println!(
            "{:<12} {:>10} {:>10}",
            b,
            size(&ours.dir, b),
            size(&reference.dir, b)
        );
    }
    Ok(())
}
