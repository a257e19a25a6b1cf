//! `mkectl version`.

/// Prints the mkectl version.
pub fn run() -> anyhow::Result<()> {
    println!("mkectl {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
