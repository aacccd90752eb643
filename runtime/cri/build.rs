//! Links `keelson-monitor` statically and not position-independent (why: "Memory" in
//! `src/monitor/mod.rs`; how: `build-support/static-link`); the other binaries stay as they
//! are. openssl-sys in keelson-cri's dependency graph asks for `ssl` and `crypto` too.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    keelson_static_link::static_no_pie(&["keelson-monitor"], &["ssl", "crypto"]);
}
