//! `image-pull`: pull + unpack of a ~200 MB multi-layer image from a local registry with
//! `keelson-image`, with `skopeo copy` to an OCI layout followed by `umoci unpack`, and with
//! containerd's `ctr images pull` (a private containerd started here per run). Prints median
//! wall time, CPU time and peak RSS of each, and the ratios against keelson. Not a test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use keelson_tests::images::{Compression, ImageSpec, LayerBuilder, Layout};
use keelson_tests::registry::Registry;

#[derive(Parser, Debug)]
#[command(
    name = "image-pull",
    about = "Image pull + unpack: keelson-image vs skopeo+umoci vs containerd"
)]
struct Args {
    /// Measured pulls per tool
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Layers of the image (the first is busybox)
    #[arg(long, default_value_t = 8)]
    layers: u32,
    /// Uncompressed MiB per layer
    #[arg(long, default_value_t = 28)]
    layer_mib: usize,
    /// The keelson-image binary (default: next to this bench)
    #[arg(long)]
    keelson_image: Option<PathBuf>,
    /// Skip containerd
    #[arg(long)]
    no_containerd: bool,
    /// Internal: build the image and push it to this registry, print its uncompressed size.
    /// Done in a child process so the bench's own memory stays small: a child's `ru_maxrss`
    /// starts from its parent's RSS at fork.
    #[arg(long, hide = true)]
    push_to: Option<String>,
}

/// One measured pull.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
    peak_rss_kib: i64,
}

/// Runs a command to completion; returns wall, CPU (user + system, with its reaped children)
/// and `ru_maxrss`.
fn measure(cmd: &mut Command) -> Result<Sample> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid and writable for the whole call.
        let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if got == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4 {cmd:?}: {err}");
        }
    }
    let wall = start.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed (status {status:#x}): {err}");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok(Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss_kib: usage.ru_maxrss,
    })
}

fn combine(a: Sample, b: Sample) -> Sample {
    Sample {
        wall: a.wall + b.wall,
        cpu: a.cpu + b.cpu,
        peak_rss_kib: a.peak_rss_kib.max(b.peak_rss_kib),
    }
}

/// Semi-compressible bytes: runs of noise and of repeated text, about 2:1 with gzip.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    let text = b"keelson image bench: the quick brown fox jumps over the lazy dog 0123456789\n";
    while out.len() < len {
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        for _ in 0..54 {
            out.extend_from_slice(text);
        }
    }
    out.truncate(len);
    out
}

fn build_image(addr: &str, layers: u32, layer_mib: usize) -> Result<u64> {
    let mut spec_layers = vec![(LayerBuilder::busybox_base()?.finish(), Compression::Gzip)];
    for i in 1..layers {
        let mut b = LayerBuilder::new().dir(&format!("layer{i}"));
        for f in 0..layer_mib {
            let data = content(u64::from(i) * 1000 + f as u64, 1 << 20);
            b = b.file(&format!("layer{i}/f{f}"), &data);
        }
        spec_layers.push((b.finish(), Compression::Gzip));
    }
    let uncompressed: u64 = spec_layers.iter().map(|(l, _)| l.len() as u64).sum();
    let mut layout = Layout::new()?;
    layout.add_tagged(&ImageSpec::new(spec_layers), "v1")?;
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.path().display()))
        .arg(format!("docker://{addr}/bench/big:v1"))
        .output()?;
    if !out.status.success() {
        bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(uncompressed)
}

/// A private containerd (own root, state and sockets), for one measured pull.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("kb-containerd-")
            .tempdir()?;
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            d.join("containerd.sock").display(),
            d.join("ttrpc.sock").display(),
        );
        fs::write(d.join("config.toml"), config)?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd")?;
        let me = Containerd { child, dir };
        let end = Instant::now() + Duration::from_secs(20);
        while !me.socket().exists() {
            if Instant::now() > end {
                bail!("containerd did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let its plugins settle before measuring.
        std::thread::sleep(Duration::from_millis(300));
        Ok(me)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// (user + system CPU, VmHWM in KiB) of the daemon so far.
    fn usage(&self) -> Result<(Duration, i64)> {
        let pid = self.child.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok((Duration::from_millis(ticks * 1000 / hz), hwm))
    }

    fn pull(&self, reference: &str) -> Result<Sample> {
        let (cpu0, _) = self.usage()?;
        let s = measure(Command::new("ctr").arg("-a").arg(self.socket()).args([
            "-n",
            "bench",
            "images",
            "pull",
            "--plain-http",
            reference,
        ]))?;
        let (cpu1, hwm) = self.usage()?;
        Ok(Sample {
            wall: s.wall,
            cpu: s.cpu + cpu1.saturating_sub(cpu0),
            // The client and the daemon run at once.
            peak_rss_kib: s.peak_rss_kib + hwm,
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = self.dir.path().to_path_buf();
        // Nothing is mounted after a pull, but be sure before the temp dir goes.
        if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
            for l in mi.lines() {
                if let Some(mp) = l.split_whitespace().nth(4)
                    && Path::new(mp).starts_with(&root)
                {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = &args.push_to {
        println!("{}", build_image(addr, args.layers, args.layer_mib)?);
        return Ok(());
    }
    let keelson = match &args.keelson_image {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("keelson-image"))
            .context("bench binary has no directory")?,
    };
    if !keelson.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p keelson-image` or pass --keelson-image",
            keelson.display()
        );
    }
    let reg = Registry::start().context("start docker-registry")?;
    eprintln!(
        "building and pushing the image ({} layers x {} MiB)...",
        args.layers, args.layer_mib
    );
    let out = Command::new(std::env::current_exe()?)
        .args(["--push-to", reg.addr()])
        .args(["--layers", &args.layers.to_string()])
        .args(["--layer-mib", &args.layer_mib.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("build the image")?;
    if !out.status.success() {
        bail!("building the image failed");
    }
    let uncompressed: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("size printed by the image builder")?;
    let reference = format!("{}/bench/big:v1", reg.addr());
    eprintln!("image {reference}: {} MiB uncompressed", uncompressed >> 20);

    let mut results: Vec<(&str, Vec<Sample>)> = vec![
        ("keelson-image", Vec::new()),
        ("skopeo+umoci", Vec::new()),
        ("containerd (ctr)", Vec::new()),
    ];
    for run in 0..args.runs {
        let work = tempfile::Builder::new().prefix("kb-image-").tempdir()?;
        let k = measure(
            Command::new(&keelson)
                .arg("--root")
                .arg(work.path().join("keelson"))
                .args(["pull", &reference]),
        )?;
        results[0].1.push(k);

        let layout = work.path().join("layout");
        let s = measure(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:v1", layout.display())),
        )?;
        let u = measure(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:v1", layout.display()))
                .arg(work.path().join("bundle")),
        )?;
        results[1].1.push(combine(s, u));

        if !args.no_containerd {
            let c = Containerd::start()?;
            results[2].1.push(c.pull(&reference)?);
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }

    println!(
        "image-pull: {} layers, {} MiB uncompressed, {} runs (medians)",
        args.layers,
        uncompressed >> 20,
        args.runs
    );
    println!(
        "{:<18} {:>10} {:>10} {:>12}   {:>8} {:>8} {:>8}",
        "tool", "wall ms", "cpu ms", "peak RSS MiB", "wall x", "cpu x", "rss x"
    );
    let fig = |s: &[Sample]| {
        (
            median(s.iter().map(|x| x.wall.as_secs_f64() * 1000.0).collect()),
            median(s.iter().map(|x| x.cpu.as_secs_f64() * 1000.0).collect()),
            median(s.iter().map(|x| x.peak_rss_kib as f64 / 1024.0).collect()),
        )
    };
    let base = fig(&results[0].1);
    for (name, samples) in &results {
        if samples.is_empty() {
            continue;
        }
        let f = fig(samples);
        println!(
            "{name:<18} {:>10.0} {:>10.0} {:>12.1}   {:>8.2} {:>8.2} {:>8.2}",
            f.0,
            f.1,
            f.2,
            f.0 / base.0,
            f.1 / base.1,
            f.2 / base.2
        );
    }
    println!("ratios are the tool's figure over keelson-image's (above 1: keelson is better)");
    println!(
        "containerd: CPU = ctr + daemon during the pull; peak RSS = ctr's + the daemon's high-water mark"
    );
    Ok(())
}
