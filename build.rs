//! Compiles the konnectivity protocol (proto/*.proto) with tonic-prost-build.
//! The protos have no package, so prost writes `_.rs` in OUT_DIR.
//! Also records the git commit and whether the tree was dirty for
//! `mkectl version` (MKECTL_GIT_COMMIT, MKECTL_GIT_DIRTY); without git or
//! .git (a source tarball) the commit is "unknown" and the build goes on.

use std::path::Path;
use std::process::Command;

/// Runs git in the manifest dir; None when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_info() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let dir = dir.unwrap_or_else(|| ".".into());
    let commit = git(&dir, &["rev-parse", "HEAD"]).filter(|c| !c.is_empty());
    // Tracked files only: build outputs and scratch files do not count.
    let dirty = match commit {
        Some(_) => git(&dir, &["status", "--porcelain", "--untracked-files=no"]).map(|s| {
            if s.is_empty() {
                "false"
            } else {
                "true"
            }
        }),
        None => None,
    };
    println!(
        "cargo:rustc-env=MKECTL_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    // "unknown" when it cannot be told (no git); version.rs maps it to null.
    println!(
        "cargo:rustc-env=MKECTL_GIT_DIRTY={}",
        dirty.unwrap_or("unknown")
    );
    // Rerun when HEAD moves (checkout, commit) or the index changes (add,
    // commit). In a worktree .git is a file naming the real git dir.
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        for f in ["HEAD", "index"] {
            let p = git_dir.join(f);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            if let Some(common) = git(&dir, &["rev-parse", "--git-common-dir"]) {
                let common = dir.join(common);
                let p = common.join(&r);
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
                let packed = common.join("packed-refs");
                if packed.exists() {
                    println!("cargo:rerun-if-changed={}", packed.display());
                }
            }
        }
    }
}

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
    println!("cargo:rerun-if-changed=build.rs");
    git_info();
    Ok(())
}
