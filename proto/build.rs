fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: no system protobuf compiler needed on a fresh machine.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("lth_v1_descriptor.bin"))
        .compile_protos(&["lth/v1/lth.proto"], &["."])?;
    println!("cargo:rerun-if-changed=lth/v1/lth.proto");
    Ok(())
}
