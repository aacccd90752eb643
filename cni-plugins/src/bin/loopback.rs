//! The `loopback` CNI plugin.

fn main() {
    keelson_cni::skel::main(&keelson_cni::loopback::Loopback)
}
