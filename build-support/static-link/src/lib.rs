//! Links chosen binaries of a crate statically and not position-independent, from its build
//! script. Used for the processes whose start-up cost or resident set matters: the per-container
//! `keelson-monitor` (resident set, see `runtime/cri/src/monitor/mod.rs`) and the CNI plugins
//! (every ADD/DEL is one or two process starts; a static non-PIE binary skips the dynamic
//! loader and its relocations, about half of a small Rust program's start-up CPU here).
//!
//! Cargo has no per-binary `-C target-feature=+crt-static`, so the same result is asked of the
//! linker directly: `-static -no-pie`, and a directory searched before the system's in which
//! every library rustc names for the gnu target (`-lc -lm -lpthread -ldl -lrt -lutil`, and
//! `-lgcc_s` for unwinding) is a one-line linker script pointing at the static archive
//! (`libgcc_s` at `libgcc_eh.a` + `libgcc.a`, what rustc itself links with crt-static). The
//! archives come from `libc6-dev` and gcc, found with `cc -print-file-name`.
//!
//! Every library any crate of the binary's dependency graph asks for must be covered (pass
//! the extra ones, e.g. openssl's `ssl` and `crypto`): a single shared library found instead
//! makes the link dynamic, and a `-static` binary with a dynamic section crashes at start (its
//! ifuncs are never resolved). Each user has a test that checks its binaries are static.
//!
//! Build scripts fail by panicking; the messages name what is missing.

use std::path::PathBuf;
use std::process::Command;

/// The libraries rustc links for `x86_64-unknown-linux-gnu` std, and their static archives.
const BASE: [(&str, &[&str]); 7] = [
    ("c", &["c"]),
    ("m", &["m"]),
    ("pthread", &["pthread"]),
    ("dl", &["dl"]),
    ("rt", &["rt"]),
    ("util", &["util"]),
    ("gcc_s", &["gcc_eh", "gcc"]),
];

/// Emits the `cargo:rustc-link-arg-bin` lines that link each of `bins` statically and not
/// position-independent; `extra` names further libraries (`-l<name>`) of the dependency graph
/// to take from their static archives. Does nothing for targets other than linux-gnu (musl
/// links statically already).
pub fn static_no_pie(bins: &[&str], extra: &[&str]) {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = out.join("static-libs");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    let extra: Vec<(&str, Vec<&str>)> = extra.iter().map(|l| (*l, vec![*l])).collect();
    let all = BASE.iter().map(|(n, a)| (*n, a.to_vec())).chain(extra);
    for (name, archives) in all {
        let paths: Vec<String> = archives
            .iter()
            .map(|a| static_archive(a, bins).display().to_string())
            .collect();
        let script = format!("INPUT({})\n", paths.join(" "));
        let path = dir.join(format!("lib{name}.a"));
        if let Err(e) = std::fs::write(&path, script) {
            panic!("writing {}: {e}", path.display());
        }
    }
    for bin in bins {
        for arg in [
            format!("-L{}", dir.display()),
            "-static".into(),
            "-no-pie".into(),
        ] {
            println!("cargo:rustc-link-arg-bin={bin}={arg}");
        }
    }
}

/// The path of `lib<name>.a` as the C compiler (rustc's linker driver) finds it.
fn static_archive(name: &str, bins: &[&str]) -> PathBuf {
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
            "{file} not found by `{cc} -print-file-name`: {} link statically against glibc \
             and need libc6-dev (and gcc's libgcc_eh.a)",
            bins.join(", ")
        ),
    }
}

/// Checks that the ELF file at `path` is what [`static_no_pie`] makes: type `ET_EXEC` (not
/// position-independent) with neither a `PT_INTERP` nor a `PT_DYNAMIC` program header. For
/// the tests of the crates that use it; the error says what is wrong.
pub fn check_static_no_pie(path: &std::path::Path) -> Result<(), String> {
    const ET_EXEC: u16 = 2;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if data.len() < 64 || data[..4] != *b"\x7fELF" || (data[4], data[5]) != (2, 1) {
        return Err(format!(
            "{}: not a 64-bit little-endian ELF file",
            path.display()
        ));
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let short = || format!("{}: truncated ELF header", path.display());
    let phoff = data
        .get(32..40)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a) as usize
        })
        .ok_or_else(short)?;
    let phentsize = u16_at(54).ok_or_else(short)? as usize;
    let phnum = u16_at(56).ok_or_else(short)? as usize;
    let kind = u16_at(16).ok_or_else(short)?;
    let segments = (0..phnum)
        .map(|i| u32_at(phoff + i * phentsize).ok_or_else(short))
        .collect::<Result<Vec<u32>, String>>()?;
    if kind != ET_EXEC {
        return Err(format!(
            "{} is position-independent (ELF type {kind})",
            path.display()
        ));
    }
    if segments.contains(&PT_INTERP) || segments.contains(&PT_DYNAMIC) {
        return Err(format!(
            "{} is dynamically linked (program headers {segments:?}): a library the build \
             script has no static archive for was linked",
            path.display()
        ));
    }
    Ok(())
}
