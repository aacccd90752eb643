//! Generates the CRI `runtime.v1` messages, clients and servers without a
//! system `protoc`: `protox` parses `cri/api.proto` into a
//! `FileDescriptorSet`, `tonic-prost-build` turns that into Rust, and the
//! encoded set is written next to it for `FILE_DESCRIPTOR_SET`.

use std::{env, fs, path::PathBuf};

const PROTO: &str = "cri/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Source info is kept so generated code gets the .proto comments as docs
    // and reflection clients can show them.
    let mut compiler = protox::Compiler::new([&manifest_dir])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files([PROTO])?;
    // Encoded by protox itself rather than through prost-types, whose
    // FieldOptions has no `debug_redact` and would drop it.
    fs::write(
        out_dir.join("cri_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Its secrets are `debug_redact`: src/lib.rs has a redacting Debug.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_fds(fds)?;
    Ok(())
}
