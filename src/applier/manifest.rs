//! Reading stacks from disk: which stack directories exist, their manifest
//! files, and the Kubernetes objects in each (multi-document YAML).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{valid_stack_name, ApplierError};

/// A manifest file bigger than this is refused (an object must fit in etcd's
/// 1.5 MiB request limit anyway).
pub const MAX_MANIFEST_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One manifest file as read during a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// The manifests directory at one moment.
#[derive(Debug, Default)]
pub struct Scan {
    /// Stack name → its manifest files (sorted by name; empty when the
    /// directory holds no `*.yaml`/`*.yml`).
    pub stacks: BTreeMap<String, Vec<SourceFile>>,
    /// Directories whose names cannot be stacks.
    pub invalid: Vec<String>,
    /// Files that could not be read, per stack (the stack must not be pruned).
    pub unreadable: BTreeMap<String, Vec<ApplierError>>,
}

impl Scan {
    /// Stacks that hold at least one manifest file (or an unreadable one).
    pub fn non_empty(&self) -> impl Iterator<Item = &str> {
        self.stacks
            .iter()
            .filter(|(name, files)| !files.is_empty() || self.unreadable.contains_key(*name))
            .map(|(n, _)| n.as_str())
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ApplierError {
    ApplierError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lists `<dir>/<stack>/*.yaml|*.yml` and reads them. A missing `dir` is an
/// empty scan. Hidden entries (temp files of atomic writers) are skipped.
pub fn scan(dir: &Path) -> Result<Scan, ApplierError> {
    let mut out = Scan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: operators link stacks in from elsewhere.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        if !valid_stack_name(&name) {
            out.invalid.push(name);
            continue;
        }
        let (files, errors) = read_stack_dir(&path)?;
        if !errors.is_empty() {
            out.unreadable.insert(name.clone(), errors);
        }
        out.stacks.insert(name, files);
    }
    out.invalid.sort();
    Ok(out)
}

fn read_stack_dir(dir: &Path) -> Result<(Vec<SourceFile>, Vec<ApplierError>), ApplierError> {
    let mut paths = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Removed between the two readdirs: it is simply empty now.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        paths.push(entry.path());
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => continue,
            Ok(m) if m.len() > MAX_MANIFEST_FILE_BYTES => {
                errors.push(ApplierError::Parse {
                    file: path.clone(),
                    index: 0,
                    line: 1,
                    message: format!(
                        "file is {} bytes, more than the {MAX_MANIFEST_FILE_BYTES} allowed",
                        m.len()
                    ),
                });
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(io_err(&path, e));
                continue;
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) => files.push(SourceFile { path, bytes }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => errors.push(io_err(&path, e)),
        }
    }
    Ok((files, errors))
}

/// One Kubernetes object from a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub file: PathBuf,
    /// 0-based index among the non-empty documents of the file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub object: Map<String, Value>,
}

impl Manifest {
    /// API group ("" for core) from `apiVersion`.
    pub fn group(&self) -> &str {
        match self.api_version.rsplit_once('/') {
            Some((g, _)) => g,
            None => "",
        }
    }

    pub fn version(&self) -> &str {
        match self.api_version.rsplit_once('/') {
            Some((_, v)) => v,
            None => &self.api_version,
        }
    }

    /// `Kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// A YAML document of a file: its text and the line it starts on.
struct RawDoc<'a> {
    text: &'a str,
    line: usize,
}

/// Splits a YAML stream at document markers. A `---` or `...` at column 0
/// always is a marker (block scalars are indented, so their content can
/// never start at column 0), which lets every document be parsed on its own
/// and errors name the document they are in.
fn split_documents(input: &str) -> Vec<RawDoc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in input.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "..." || bare.starts_with("... ");
        if is_start || is_end {
            docs.push(RawDoc {
                text: &input[start..offset],
                line: start_line,
            });
            if is_start && bare.len() > 3 {
                // Content after the marker on the same line belongs to the new document.
                start = offset + 3;
            } else {
                start = offset + line.len();
            }
            start_line = i + if is_start && bare.len() > 3 { 1 } else { 2 };
        }
        offset += line.len();
    }
    docs.push(RawDoc {
        text: &input[start..],
        line: start_line,
    });
    docs
}

/// True when a document holds nothing but blanks, comments and directives.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || l.starts_with('%')
    })
}

/// Parses every file of a stack. All failures are returned (each naming its
/// file and document index), not just the first.
pub fn parse_stack(files: &[SourceFile]) -> Result<Vec<Manifest>, Vec<ApplierError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match parse_file(&f.path, &f.bytes) {
            Ok(mut m) => out.append(&mut m),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Parses one multi-document manifest file.
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<Manifest>, Vec<ApplierError>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
        Err(e) => {
            return Err(vec![ApplierError::Parse {
                file: path.to_path_buf(),
                index: 0,
                line: 1,
                message: format!("not UTF-8: {e}"),
            }])
        }
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut index = 0usize;
    for doc in split_documents(text) {
        if is_blank(doc.text) {
            continue;
        }
        let this = index;
        index += 1;
        let value: Value = match serde_saphyr::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ApplierError::Parse {
                    file: path.to_path_buf(),
                    index: this,
                    line: doc.line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        match to_manifest(path, this, doc.line, value) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn to_manifest(
    path: &Path,
    index: usize,
    line: usize,
    value: Value,
) -> Result<Option<Manifest>, ApplierError> {
    let bad = |message: &str| ApplierError::InvalidObject {
        file: path.to_path_buf(),
        index,
        line,
        message: message.to_string(),
    };
    let mut object = match value {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        _ => return Err(bad("document is not a mapping")),
    };
    let str_field = |obj: &Map<String, Value>, key: &str| -> Option<String> {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let api_version = str_field(&object, "apiVersion").ok_or_else(|| bad("missing apiVersion"))?;
    let kind = str_field(&object, "kind").ok_or_else(|| bad("missing kind"))?;
    if kind.ends_with("List") && object.contains_key("items") {
        return Err(bad(
            "List objects are not supported; write each item as its own document",
        ));
    }
    let meta = match object.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("metadata is not a mapping")),
        None => return Err(bad("missing metadata")),
    };
    for key in ["name", "namespace"] {
        if meta
            .get(key)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return Err(bad(&format!(
                "metadata.{key} is not a string (quote it: YAML reads y/n/yes/no/on/off/true/false as booleans and digits as numbers)"
            )));
        }
    }
    let name = str_field(meta, "name").ok_or_else(|| {
        if meta.contains_key("generateName") {
            bad("metadata.generateName cannot be applied; set metadata.name")
        } else {
            bad("missing metadata.name")
        }
    })?;
    let namespace = str_field(meta, "namespace");
    if let Some(labels) = meta.get("labels") {
        if !labels.is_object() && !labels.is_null() {
            return Err(bad("metadata.labels is not a mapping"));
        }
    }
    Ok(Some(Manifest {
        file: path.to_path_buf(),
        index,
        line,
        api_version,
        kind,
        name,
        namespace,
        object,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_counts_non_empty_ones() {
        let y = "---\n# c\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n\
                 apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\ndata:\n  x: |\n    ---\n    y\n...\n";
        let m = parse_file(Path::new("f.yaml"), y.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].index, m[0].name.as_str()), (0, "a"));
        assert_eq!((m[1].index, m[1].name.as_str(), m[1].line), (1, "b", 8));
        // The indented --- inside the block scalar is content, not a marker.
        assert_eq!(m[1].object["data"]["x"], "---\ny\n");
    }

    #[test]
    fn errors_name_file_index_and_line() {
        let y = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [unclosed\n---\nkind: X\n";
        let errs = parse_file(Path::new("/m/s/f.yaml"), y.as_bytes()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        let first = errs[0].to_string();
        assert!(
            first.starts_with("/m/s/f.yaml: document index 1 (line 5)"),
            "{first}"
        );
        let second = errs[1].to_string();
        assert!(
            second.contains("document index 2") && second.contains("missing apiVersion"),
            "{second}"
        );
    }

    #[test]
    fn same_line_content_after_marker() {
        let y = "--- {apiVersion: v1, kind: Namespace, metadata: {name: ns1}}\n";
        let m = parse_file(Path::new("f.yaml"), y.as_bytes()).unwrap();
        assert_eq!(m[0].name, "ns1");
        assert_eq!(m[0].group(), "");
        assert_eq!(m[0].version(), "v1");
    }

    #[test]
    fn scan_reads_yaml_only_and_flags_bad_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("good")).unwrap();
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        std::fs::create_dir_all(d.path().join("Bad_Name")).unwrap();
        std::fs::write(d.path().join("good/b.yml"), "x: 1").unwrap();
        std::fs::write(d.path().join("good/a.yaml"), "x: 1").unwrap();
        std::fs::write(d.path().join("good/.tmp.yaml"), "x: 1").unwrap();
        std::fs::write(d.path().join("good/readme.txt"), "x").unwrap();
        std::fs::write(d.path().join("top.yaml"), "x: 1").unwrap();
        let s = scan(d.path()).unwrap();
        let names: Vec<_> = s.stacks["good"]
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);
        assert!(s.stacks["empty"].is_empty());
        assert_eq!(s.non_empty().collect::<Vec<_>>(), ["good"]);
        assert_eq!(s.invalid, ["Bad_Name"]);
        assert!(scan(&d.path().join("missing")).unwrap().stacks.is_empty());
    }
}
