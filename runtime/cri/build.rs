//! Links `keelson-monitor` statically and not position-independent (why: "Memory" in
//! `src/monitor/mod.rs`); the other binaries stay as they are.
//!
//! Cargo has no per-binary `-C target-feature=+crt-static`, so the same result is asked of the
//! linker directly: `-static -no-pie`, and a directory searched before the system's in which
//! every library rustc names for the gnu target (`-lc -lm -lpthread -ldl -lrt -lutil`, and
//! `-lgcc_s` for unwinding) is a one-line linker script pointing at the static archive
//! (`libgcc_s` at `libgcc_eh.a` + `libgcc.a`, what rustc itself links with crt-static). The
//! archives come from `libc6-dev` and gcc, found with `cc -print-file-name`.

use std::path::PathBuf;
use std::process::Command;

const MONITOR_BIN: &str = "keelson-monitor";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        // musl targets link statically already; others keep the toolchain's default.
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("monitor-static-libs");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    // Every library any crate of keelson-cri's dependency graph asks for (openssl-sys: ssl and
    // crypto) must be here: a single shared library found instead makes the link dynamic, and
    // a `-static` binary with a dynamic section crashes at start (its ifuncs are never
    // resolved). The monitor test `the_monitor_binary_is_static` checks the result.
    let scripts: [(&str, &[&str]); 9] = [
        ("c", &["c"]),
        ("m", &["m"]),
        ("pthread", &["pthread"]),
        ("dl", &["dl"]),
        ("rt", &["rt"]),
        ("util", &["util"]),
        ("gcc_s", &["gcc_eh", "gcc"]),
        ("ssl", &["ssl"]),
        ("crypto", &["crypto"]),
    ];
    for (name, archives) in scripts {
        let paths: Vec<String> = archives
            .iter()
            .map(|a| static_archive(a).display().to_string())
            .collect();
        let script = format!("INPUT({})\n", paths.join(" "));
        let path = dir.join(format!("lib{name}.a"));
        if let Err(e) = std::fs::write(&path, script) {
            panic!("writing {}: {e}", path.display());
        }
    }
    for arg in [
        format!("-L{}", dir.display()),
        "-static".into(),
        "-no-pie".into(),
    ] {
        println!("cargo:rustc-link-arg-bin={MONITOR_BIN}={arg}");
    }
}

/// The path of `lib<name>.a` as the C compiler (rustc's linker driver) finds it.
fn static_archive(name: &str) -> PathBuf {
    let file = format!("lib{name}.a");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let found = Command::new(&cc)
        .arg(format!("-print-file-name={file}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found {
        // Not found, cc prints the bare name back.
        Some(p) if p.is_absolute() && p.exists() => p,
        _ => panic!(
            "{file} not found by `{cc} -print-file-name`: keelson-monitor links statically \
             against glibc and needs libc6-dev (and gcc's libgcc_eh.a)"
        ),
    }
}
