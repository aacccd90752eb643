//! The `host-local` CNI plugin.

fn main() {
    keelson_cni::skel::main(&keelson_cni::hostlocal::HostLocal)
}
