//! Links the four plugin binaries statically and not position-independent (how:
//! `build-support/static-link`): a CNI plugin is one process start per call (bridge runs
//! host-local too), and the dynamic loader's work is about half of that start here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    keelson_static_link::static_no_pie(&["bridge", "host-local", "loopback", "portmap"], &[]);
}
