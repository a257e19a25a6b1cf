//! Compiles the konnectivity protocol (proto/*.proto) with tonic-prost-build.
//! The protos have no package, so prost writes `_.rs` in OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the system protoc unless the caller chose one.
    if std::env::var_os("PROTOC").is_none() && std::path::Path::new("/usr/bin/protoc").exists() {
        // Build scripts are single threaded, so setting the variable is sound.
        std::env::set_var("PROTOC", "/usr/bin/protoc");
    }
    tonic_prost_build::configure()
        // DATA payloads are relayed, never inspected: keep them as `Bytes`
        // so decoding slices the receive buffer instead of copying.
        .bytes(".Data.data")
        // The rpc `AgentService/Connect` would clash with the generated
        // `connect` constructor; channels are built by hand anyway.
        .build_transport(false)
        // The server side is ours (src/konnectivity/wire.rs); the generated
        // client stays as an independent encoder for tests.
        .build_server(false)
        // Small per-RPC buffers: one Proxy stream per tunnel (see
        // `TunnelCodec` in src/konnectivity/proto.rs).
        .codec_path("crate::konnectivity::proto::TunnelCodec")
        .compile_protos(&["proto/client.proto", "proto/agent.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
