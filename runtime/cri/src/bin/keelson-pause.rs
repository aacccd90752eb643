//! `keelson-pause`: the infra process of a keelsond pod sandbox (see keelson_cri::pause).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(keelson_cri::pause::main_with(&args));
}
