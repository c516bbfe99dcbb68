//! Generates the prost types for CRIU's image schemas in `proto/` and a serialized
//! `FileDescriptorSet` (`criu_descriptors.bin`) used for schema-driven (dynamic) decoding.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest.join("../../proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)
        .expect("read proto/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-env-changed=FERRY_PROTO_MINIMAL_DESCRIPTOR");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));

    // opts.proto extends google.protobuf.FieldOptions. Use the system's descriptor.proto when
    // libprotobuf-dev is installed; otherwise a minimal declaration of FieldOptions (all the
    // `(criu)` extension needs), so a bare protoc is enough.
    let mut includes = vec![proto_dir.clone()];
    let system = ["/usr/include", "/usr/local/include"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("google/protobuf/descriptor.proto").exists())
        .filter(|_| std::env::var_os("FERRY_PROTO_MINIMAL_DESCRIPTOR").is_none());
    match system {
        Some(p) => includes.push(p),
        None => {
            let dir = out.join("wkt/google/protobuf");
            std::fs::create_dir_all(&dir).expect("create wkt dir");
            std::fs::write(
                dir.join("descriptor.proto"),
                "syntax = \"proto2\";\npackage google.protobuf;\n\
                 message FieldOptions {\n  extensions 1000 to max;\n}\n",
            )
            .expect("write minimal descriptor.proto");
            includes.push(out.join("wkt"));
        }
    }

    let mut cfg = prost_build::Config::new();
    cfg.file_descriptor_set_path(out.join("criu_descriptors.bin"));
    cfg.compile_protos(&files, &includes)
        .expect("compile CRIU protos (protoc from Debian's protobuf-compiler is required)");
}
