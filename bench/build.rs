//! Links `netns-exec` statically and not position-independent (how:
//! `build-support/static-link`): it runs before every CNI plugin call of the benches'
//! runtimes, and the dynamic loader's work would be most of its start-up.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    keelson_static_link::static_no_pie(&["netns-exec"], &[]);
}
