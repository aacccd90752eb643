//! Links `keelson-monitor` and `keelson-pause` statically and not position-independent (why:
//! one of each runs per container or pod: "Memory" in `src/monitor/mod.rs`, and a static
//! non-PIE start skips the dynamic loader; how: `build-support/static-link`); the other
//! binaries stay as they are. openssl-sys in keelson-cri's dependency graph asks for `ssl` and
//! `crypto` too.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    keelson_static_link::static_no_pie(&["keelson-monitor", "keelson-pause"], &["ssl", "crypto"]);
}
