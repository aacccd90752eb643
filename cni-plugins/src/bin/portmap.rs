//! The `portmap` CNI plugin.

fn main() {
    keelson_cni::skel::main(&keelson_cni::portmap::Portmap)
}
