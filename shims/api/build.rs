//! Generates the protobuf messages and the async ttrpc client and service
//! of proto/husk_shim.proto (pure Rust: no protoc).

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=proto/husk_shim.proto");
    Codegen::new()
        .inputs(["proto/husk_shim.proto"])
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generating the husk.shim.v1 bindings");
    // `include!` cannot take inner attributes (`#![...]`) or inner docs.
    for name in ["husk_shim.rs", "husk_shim_ttrpc.rs"] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path).expect("generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("rewriting the generated file");
    }
}
