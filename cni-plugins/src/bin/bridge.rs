//! The `bridge` CNI plugin.

fn main() {
    keelson_cni::skel::main(&keelson_cni::bridge::Bridge)
}
