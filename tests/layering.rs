//! The import direction of docs/design.md "Layout", checked on the source so
//! a shortcut back up the layers fails here rather than in review:
//! `commands` → `node` (and `ops`) → `components` → domain libraries.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module path of a file under src/ (`src/node/worker.rs` → `node`
/// top, `worker` sub).
fn top_module(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Lines of `file` that name `crate::<module>` outside comments.
fn uses(file: &Path, module: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let needle = format!("crate::{module}");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| {
            l.match_indices(&needle).any(|(i, _)| {
                let next = l[i + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|l| format!("{}: {}", file.display(), l.trim()))
        .collect()
}

#[test]
fn config_imports_nothing_above_it() {
    let above = [
        "commands",
        "node",
        "ops",
        "components",
        "applier",
        "join",
        "konnectivity",
        "pki",
        "etcd",
        "images",
        "bundle",
        "apilb",
        "expose",
    ];
    let bad: Vec<String> = rust_files(&src().join("config"))
        .iter()
        .flat_map(|f| above.iter().flat_map(|m| uses(f, m)))
        .collect();
    assert!(
        bad.is_empty(),
        "config/ imports upward:\n{}",
        bad.join("\n")
    );
}

#[test]
fn nothing_below_node_imports_components_or_node() {
    // The layers allowed to use components/: themselves, node/, commands/,
    // the ops server beside node/, and main's exit-code mapping.
    let allowed = [
        "components",
        "node",
        "commands",
        "ops",
        "main",
        "lib",
        "cli",
    ];
    let mut bad = Vec::new();
    for f in rust_files(&src()) {
        let top = top_module(&f);
        if allowed.contains(&top.as_str()) {
            continue;
        }
        bad.extend(uses(&f, "components"));
        bad.extend(uses(&f, "node"));
        bad.extend(uses(&f, "commands"));
    }
    assert!(
        bad.is_empty(),
        "domain modules import components/, node/ or commands/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn node_and_components_never_import_commands() {
    let mut bad = Vec::new();
    for dir in ["node", "components", "ops"] {
        for f in rust_files(&src().join(dir)) {
            bad.extend(uses(&f, "commands"));
        }
    }
    assert!(bad.is_empty(), "imports of commands/:\n{}", bad.join("\n"));
}

#[test]
fn subcommand_files_do_not_import_each_other() {
    let dir = src().join("commands");
    let files = rust_files(&dir);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "mod" && n != "shared")
        .collect();
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for other in &names {
            for pat in [
                format!("super::{other}::"),
                format!("crate::commands::{other}::"),
            ] {
                if text.contains(&pat) {
                    bad.push(format!("{} uses {pat}", f.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "subcommands share through commands/shared.rs or node/, not each other:\n{}",
        bad.join("\n")
    );
}
