//! Packing an image from local files, with no daemon and no registry: one
//! layer holding the given files, a config, a manifest, written as an OCI
//! image layout tar (what `ctr images import` and `docker load` read) or as
//! a docker archive (`docker save`'s format).
//!
//! # Deterministic
//!
//! The same inputs give the same bytes, so the same digests, on every run
//! and every machine: layer entries are sorted by path, every timestamp is
//! [`FIXED_MTIME`], owners are 0:0 without names, modes are the ones given,
//! JSON is written from structs in a fixed field order, gzip headers carry
//! no name or time. That is what lets the importer see that an image packed
//! again at the next start is already present and skip it.
//!
//! # OCI layout written
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion":"1.0.0"}
//! index.json                 one manifest; annotated with the image name
//! blobs/sha256/<config>      architecture, os, Entrypoint/Cmd/Env, rootfs.diff_ids
//! blobs/sha256/<layer>       gzip'd tar of the files
//! blobs/sha256/<manifest>
//! ```
//!
//! `oci-layout` and `index.json` come first so a streaming reader knows the
//! layout before the blobs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde::Serialize;

use super::reference;
use super::spec::{
    self, ContainerConfig, Descriptor, DockerArchiveEntry, History, ImageConfig, ImageLayout,
    Index, Platform, RootFs, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME,
};
use super::ImagesError;

/// Every timestamp in a packed image (the epoch): no build time leaks in.
pub const FIXED_MTIME: u64 = 0;
/// Mode of the directories the layer creates for the files' parents.
pub const DIR_MODE: u32 = 0o755;
/// `PATH` in the image config unless `--env PATH=...` is given (the usual
/// Linux default, as container runtimes use it).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Layers up to this size are kept in memory while packing, bigger ones
/// spill to a temporary file.
const SPOOL_IN_MEMORY: usize = 16 << 20;
/// gzip level of layers and of a gzip'd archive.
const GZIP_LEVEL: u32 = 6;
/// Recorded in the config's history.
const CREATED_BY: &str = "mkectl images pack";

/// The archive format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// OCI image layout (gzip'd layer).
    #[default]
    Oci,
    /// Docker archive, as `docker save` writes it (uncompressed layer).
    Docker,
}

/// One file of the image: `source` on this host, `dest` (absolute) in the
/// image, with `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub source: PathBuf,
    pub dest: String,
    pub mode: u32,
}

/// A `--file` value that is not `SRC:DEST[:MODE]`, or whose source cannot
/// be looked at.
#[derive(Debug, thiserror::Error)]
pub enum FileSpecError {
    #[error("{spec:?}: expected SRC:DEST or SRC:DEST:MODE")]
    Syntax { spec: String },
    #[error("{spec:?}: empty source path")]
    EmptySource { spec: String },
    #[error("{spec:?}: mode {mode:?} is not octal")]
    ModeNotOctal { spec: String, mode: String },
    #[error("{spec:?}: mode {mode} is larger than 7777")]
    ModeTooLarge { spec: String, mode: String },
    #[error("{}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file's destination inside the image that is not an absolute,
/// normalised path.
#[derive(Debug, thiserror::Error)]
pub enum LayerPathError {
    #[error("destination {dest:?} is not absolute")]
    NotAbsolute { dest: String },
    #[error("destination {dest:?} names no file")]
    NoFile { dest: String },
    #[error("destination {dest:?} is not a normalised path")]
    NotNormalised { dest: String },
    #[error("destination {dest:?} holds control characters")]
    ControlCharacters { dest: String },
}

impl FileSpec {
    /// Parses `SRC:DEST[:MODE]` (MODE in octal). Without MODE a file any
    /// user may execute gets 0755, any other 0644: the source's other bits
    /// (umask accidents) do not reach the image.
    pub fn parse(s: &str) -> Result<Self, FileSpecError> {
        let spec = || s.to_string();
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dest, mode) = match parts[..] {
            [src, dest] => (src, dest, None),
            [src, dest, mode] => (src, dest, Some(mode)),
            _ => return Err(FileSpecError::Syntax { spec: spec() }),
        };
        if src.is_empty() {
            return Err(FileSpecError::EmptySource { spec: spec() });
        }
        let mode = match mode {
            Some(m) => {
                let v = u32::from_str_radix(m, 8).map_err(|_| FileSpecError::ModeNotOctal {
                    spec: spec(),
                    mode: m.to_string(),
                })?;
                if v > 0o7777 {
                    return Err(FileSpecError::ModeTooLarge {
                        spec: spec(),
                        mode: m.to_string(),
                    });
                }
                Some(v)
            }
            None => None,
        };
        let source = PathBuf::from(src);
        let mode = match mode {
            Some(m) => m,
            None => {
                let meta = fs::metadata(&source).map_err(|e| FileSpecError::Stat {
                    path: source.clone(),
                    source: e,
                })?;
                if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                }
            }
        };
        Ok(Self {
            source,
            dest: dest.to_string(),
            mode,
        })
    }
}

/// What to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSpec {
    /// The image name, fully qualified (see [`reference::normalize`]).
    pub name: String,
    pub files: Vec<FileSpec>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`; [`DEFAULT_PATH_ENV`] is added unless a `PATH=` is given.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Platform architecture (`amd64`, `arm64`, ...).
    pub arch: String,
    pub format: Format,
    /// gzip the whole archive (`.tar.gz`).
    pub gzip: bool,
}

impl PackSpec {
    /// An OCI image for this host's architecture with `name` and `files`.
    pub fn new(name: &str, files: Vec<FileSpec>) -> Self {
        Self {
            name: name.to_string(),
            files,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            workdir: None,
            user: None,
            arch: crate::bundle::host_arch().to_string(),
            format: Format::Oci,
            gzip: false,
        }
    }

    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<(), ImagesError> {
        let bad = |field: &'static str, detail: String| ImagesError::Spec { field, detail };
        if !reference::is_normalized(&self.name) {
            return Err(bad(
                "name",
                match reference::normalize(&self.name) {
                    Ok(n) => format!("{:?} is not fully qualified; use {n:?}", self.name),
                    Err(e) => e.to_string(),
                },
            ));
        }
        if self.format == Format::Docker && self.name.contains('@') {
            return Err(bad(
                "name",
                format!(
                    "{:?}: a docker archive names images by tag, not digest",
                    self.name
                ),
            ));
        }
        if self.files.is_empty() {
            return Err(bad("file", "an image needs at least one file".into()));
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            let rel = layer_path(&f.dest).map_err(|e| bad("file", e.to_string()))?;
            if !seen.insert(rel.clone()) {
                return Err(bad("file", format!("{} is given twice", f.dest)));
            }
        }
        // A file may not also be the parent directory of another.
        for f in &seen {
            let prefix = format!("{f}/");
            if seen.iter().any(|g| g.starts_with(&prefix)) {
                return Err(bad("file", format!("/{f} is a file and a directory")));
            }
        }
        if self.entrypoint.is_empty() && self.cmd.is_empty() {
            return Err(bad(
                "entrypoint",
                "give --entrypoint and/or --cmd: the image must say what it runs".into(),
            ));
        }
        for e in &self.env {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
                _ => return Err(bad("env", format!("{e:?} is not KEY=value"))),
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return Err(bad("workdir", format!("{w:?} is not absolute")));
            }
        }
        if self.arch.is_empty() || !self.arch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad(
                "arch",
                format!("{:?} is not an architecture", self.arch),
            ));
        }
        Ok(())
    }
}

/// What was packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub name: String,
    pub format: Format,
    /// Digest of the manifest (OCI only: containerd computes a docker
    /// archive's manifest itself at import).
    pub manifest_digest: Option<String>,
    /// Digest of the config: the image ID CRI reports.
    pub config_digest: String,
    /// Digest of the uncompressed layer (`rootfs.diff_ids[0]`).
    pub diff_id: String,
    /// Bytes written.
    pub archive_size: u64,
}

/// `dest` as a layer entry path (relative, normalised), or why not.
fn layer_path(dest: &str) -> Result<String, LayerPathError> {
    let dest_ = || dest.to_string();
    let Some(rel) = dest.strip_prefix('/') else {
        return Err(LayerPathError::NotAbsolute { dest: dest_() });
    };
    if rel.is_empty() || rel.ends_with('/') {
        return Err(LayerPathError::NoFile { dest: dest_() });
    }
    for c in rel.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(LayerPathError::NotNormalised { dest: dest_() });
        }
    }
    if dest.chars().any(char::is_control) {
        return Err(LayerPathError::ControlCharacters { dest: dest_() });
    }
    Ok(rel.to_string())
}

/// Packs `spec` into `path`: written to a temporary file beside it and
/// renamed, so a failure leaves no partial archive.
pub fn pack_to_file(spec: &PackSpec, path: &Path) -> Result<Packed, ImagesError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let werr = |source| ImagesError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".mkectl-pack-")
        .tempfile_in(&dir)
        .map_err(werr)?;
    let packed = {
        let mut out = io::BufWriter::new(tmp.as_file_mut());
        let packed = pack(spec, &mut out)?;
        out.flush().map_err(werr)?;
        packed
    };
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(packed)
}

/// Packs `spec` into `out`.
pub fn pack(spec: &PackSpec, out: &mut impl Write) -> Result<Packed, ImagesError> {
    spec.validate()?;
    let mut layer = build_layer(spec)?;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH_ENV.to_string());
    }
    let config = ImageConfig {
        architecture: spec.arch.clone(),
        os: "linux".into(),
        config: ContainerConfig {
            user: spec.user.clone(),
            env,
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            working_dir: spec.workdir.clone(),
        },
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.diff_id.clone()],
        },
        history: vec![History {
            created_by: CREATED_BY.into(),
        }],
    };
    let config_json = to_json(&config);
    let config_digest = spec::sha256_digest(&config_json);

    let counting = CountingWriter { inner: out, n: 0 };
    let (manifest_digest, counting) = if spec.gzip {
        let gz = gzip_writer(counting);
        let (d, gz) = write_archive(spec, gz, &mut layer, &config_json, &config_digest)?;
        let counting = gz.finish().map_err(|e| archive_write_err(spec, e))?;
        (d, counting)
    } else {
        write_archive(spec, counting, &mut layer, &config_json, &config_digest)?
    };
    Ok(Packed {
        name: spec.name.clone(),
        format: spec.format,
        manifest_digest,
        config_digest,
        diff_id: layer.diff_id,
        archive_size: counting.n,
    })
}

fn archive_write_err(spec: &PackSpec, source: io::Error) -> ImagesError {
    ImagesError::Pack {
        name: spec.name.clone(),
        source,
    }
}

/// Writes the archive's entries; returns the manifest digest (OCI) and the
/// writer.
fn write_archive<W: Write>(
    spec: &PackSpec,
    out: W,
    layer: &mut Layer,
    config_json: &[u8],
    config_digest: &str,
) -> Result<(Option<String>, W), ImagesError> {
    let err = |e| archive_write_err(spec, e);
    let mut tar = tar::Builder::new(out);
    let manifest_digest = match spec.format {
        Format::Oci => {
            let config_desc = descriptor(spec::MEDIA_OCI_CONFIG, config_digest, config_json.len());
            let layer_desc = Descriptor {
                media_type: spec::MEDIA_OCI_LAYER_GZIP.into(),
                digest: layer.blob_digest.clone(),
                size: layer.blob_size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            let manifest = spec::Manifest {
                schema_version: 2,
                media_type: spec::MEDIA_OCI_MANIFEST.into(),
                config: config_desc,
                layers: vec![layer_desc],
            };
            let manifest_json = to_json(&manifest);
            let manifest_digest = spec::sha256_digest(&manifest_json);
            let mut manifest_desc = descriptor(
                spec::MEDIA_OCI_MANIFEST,
                &manifest_digest,
                manifest_json.len(),
            );
            manifest_desc.platform = Some(Platform {
                architecture: spec.arch.clone(),
                os: "linux".into(),
            });
            manifest_desc
                .annotations
                .insert(ANNOTATION_CONTAINERD_NAME.into(), spec.name.clone());
            manifest_desc
                .annotations
                .insert(ANNOTATION_REF_NAME.into(), spec.name.clone());
            let index = Index {
                schema_version: 2,
                media_type: spec::MEDIA_OCI_INDEX.into(),
                manifests: vec![manifest_desc],
            };
            let layout = ImageLayout {
                image_layout_version: spec::OCI_LAYOUT_VERSION.into(),
            };
            append_bytes(&mut tar, spec::OCI_LAYOUT_FILE, &to_json(&layout)).map_err(err)?;
            append_bytes(&mut tar, spec::INDEX_FILE, &to_json(&index)).map_err(err)?;
            append_dir(&mut tar, "blobs/").map_err(err)?;
            append_dir(&mut tar, "blobs/sha256/").map_err(err)?;
            // Blobs in digest order.
            let mut blobs: Vec<(String, Blob<'_>)> = vec![
                (config_digest.to_string(), Blob::Bytes(config_json)),
                (manifest_digest.clone(), Blob::Bytes(&manifest_json)),
                (layer.blob_digest.clone(), Blob::Layer),
            ];
            blobs.sort_by(|a, b| a.0.cmp(&b.0));
            for (digest, blob) in blobs {
                let path = spec::blob_path(&digest)
                    .ok_or_else(|| err(io::Error::other(format!("bad digest {digest}"))))?;
                match blob {
                    Blob::Bytes(b) => append_bytes(&mut tar, &path, b).map_err(err)?,
                    Blob::Dir => append_dir(&mut tar, &path).map_err(err)?,
                    Blob::Layer => append_layer(&mut tar, &path, layer).map_err(err)?,
                }
            }
            Some(manifest_digest)
        }
        Format::Docker => {
            let config_hex = config_digest.trim_start_matches("sha256:");
            let layer_hex = layer.diff_id.trim_start_matches("sha256:");
            let config_name = format!("{config_hex}.json");
            let layer_dir = format!("{layer_hex}/");
            let layer_name = format!("{layer_hex}/layer.tar");
            let manifest = vec![DockerArchiveEntry {
                config: config_name.clone(),
                repo_tags: vec![spec.name.clone()],
                layers: vec![layer_name.clone()],
            }];
            // manifest.json first (streaming readers), then in name order.
            append_bytes(&mut tar, spec::DOCKER_MANIFEST_FILE, &to_json(&manifest)).map_err(err)?;
            let mut rest: Vec<(String, Blob<'_>)> = vec![
                (config_name, Blob::Bytes(config_json)),
                (layer_dir, Blob::Dir),
                (layer_name, Blob::Layer),
            ];
            rest.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, blob) in rest {
                match blob {
                    Blob::Bytes(b) => append_bytes(&mut tar, &name, b).map_err(err)?,
                    Blob::Dir => append_dir(&mut tar, &name).map_err(err)?,
                    Blob::Layer => append_layer(&mut tar, &name, layer).map_err(err)?,
                }
            }
            None
        }
    };
    let out = tar.into_inner().map_err(err)?;
    Ok((manifest_digest, out))
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    Dir,
    Layer,
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size: size as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// Compact JSON of one of the spec structs. Serialising these structs
/// (strings, numbers, string maps) cannot fail.
fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// gzip without a file name and with a zero timestamp (deterministic).
fn gzip_writer<W: Write>(w: W) -> GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .write(w, Compression::new(GZIP_LEVEL))
}

/// A header with everything fixed but path, size, mode and type.
fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(FIXED_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
    tar.append_data(&mut h, path, bytes)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0, DIR_MODE);
    tar.append_data(&mut h, path, io::empty())
}

fn append_layer<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    layer: &mut Layer,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, layer.blob_size, 0o644);
    layer.spool.seek(SeekFrom::Start(0))?;
    let reader = (&mut layer.spool).take(layer.blob_size);
    tar.append_data(&mut h, path, reader)
}

/// The layer blob as it goes into the archive (gzip'd for OCI, plain for a
/// docker archive), spooled, with its digests.
struct Layer {
    spool: tempfile::SpooledTempFile,
    blob_digest: String,
    blob_size: u64,
    diff_id: String,
}

/// Writes the layer tar: parent directories and files, sorted by path.
fn build_layer(spec: &PackSpec) -> Result<Layer, ImagesError> {
    let mut entries: BTreeMap<String, Option<&FileSpec>> = BTreeMap::new();
    for f in &spec.files {
        // validate() checked every destination.
        let rel = layer_path(&f.dest).map_err(|e| ImagesError::Spec {
            field: "file",
            detail: e.to_string(),
        })?;
        let mut parent = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            parent.push_str(c);
            parent.push('/');
            entries.entry(parent.clone()).or_insert(None);
        }
        entries.insert(rel, Some(f));
    }

    let pack_err = |e| archive_write_err(spec, e);
    let spool = tempfile::SpooledTempFile::new(SPOOL_IN_MEMORY);
    // Blob bytes are hashed as they reach the spool; the uncompressed tar
    // (the diff ID) before compression.
    let blob = Hashing::new(spool);
    let (blob, diff) = match spec.format {
        Format::Oci => {
            let tar_hash = Hashing::new(gzip_writer(blob));
            let tar_hash = write_layer_entries(tar_hash, &entries)?;
            let (gz, diff) = tar_hash.finish();
            let blob = gz.finish().map_err(pack_err)?;
            (blob, diff)
        }
        Format::Docker => {
            let blob = write_layer_entries(blob, &entries)?;
            let diff = blob.digest();
            (blob, diff)
        }
    };
    let (mut spool, (blob_digest, blob_size)) = blob.finish();
    spool.flush().map_err(pack_err)?;
    Ok(Layer {
        spool,
        blob_digest,
        blob_size,
        diff_id: diff.0,
    })
}

fn write_layer_entries<W: Write>(
    out: W,
    entries: &BTreeMap<String, Option<&FileSpec>>,
) -> Result<W, ImagesError> {
    let mut tar = tar::Builder::new(out);
    for (path, file) in entries {
        match file {
            None => append_dir(&mut tar, path).map_err(|source| ImagesError::Write {
                path: PathBuf::from(path),
                source,
            })?,
            Some(f) => {
                let rerr = |source| ImagesError::Read {
                    path: f.source.clone(),
                    source,
                };
                let src = fs::File::open(&f.source).map_err(rerr)?;
                let meta = src.metadata().map_err(rerr)?;
                if !meta.is_file() {
                    return Err(ImagesError::Spec {
                        field: "file",
                        detail: format!("{} is not a regular file", f.source.display()),
                    });
                }
                let mut h = header(tar::EntryType::Regular, meta.len(), f.mode);
                tar.append_data(&mut h, path, io::BufReader::new(src))
                    .map_err(rerr)?;
            }
        }
    }
    tar.into_inner().map_err(|source| ImagesError::Write {
        path: PathBuf::from("<layer>"),
        source,
    })
}

/// Hashes (SHA-256) and counts what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    ctx: ring::digest::Context,
    n: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            n: 0,
        }
    }
    fn digest(&self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.ctx.clone().finish().as_ref())),
            self.n,
        )
    }
    fn finish(self) -> (W, (String, u64)) {
        let d = self.digest();
        (self.inner, d)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(dir: &Path, format: Format) -> PackSpec {
        let bin = dir.join("prog");
        fs::write(&bin, b"#!/bin/true\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o700)).unwrap();
        let data = dir.join("data");
        fs::write(&data, b"hello").unwrap();
        let mut s = PackSpec::new(
            "registry.example/test/app:v1",
            vec![
                FileSpec::parse(&format!("{}:/usr/bin/prog", bin.display())).unwrap(),
                FileSpec::parse(&format!("{}:/etc/app/data:0600", data.display())).unwrap(),
            ],
        );
        s.entrypoint = vec!["/usr/bin/prog".into()];
        s.format = format;
        s
    }

    fn entries(archive: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    body,
                )
            })
            .collect()
    }

    #[test]
    fn file_specs() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        fs::write(&f, b"").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        let s = FileSpec::parse(&format!("{}:/x", f.display())).unwrap();
        assert_eq!(s.mode, 0o644);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            FileSpec::parse(&format!("{}:/x", f.display()))
                .unwrap()
                .mode,
            0o755
        );
        assert_eq!(FileSpec::parse("/nope:/x:0750").unwrap().mode, 0o750);
        for bad in ["/a", "/a:/b:9", "/a:/b:1:2", ":/b:0755", "/a:/b:77777"] {
            assert!(FileSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oci_layout_is_complete_and_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let spec = spec_with(d.path(), Format::Oci);
        let mut a = Vec::new();
        let p1 = pack(&spec, &mut a).unwrap();
        let mut b = Vec::new();
        let p2 = pack(&spec, &mut b).unwrap();
        assert_eq!(a, b, "same inputs, same bytes");
        assert_eq!(p1, p2);
        assert_eq!(p1.archive_size, a.len() as u64);

        let e = entries(&a);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            &names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(names.len(), 7);
        assert!(e.iter().all(|x| x.2 == FIXED_MTIME));
        // Every blob's name is its digest.
        for (name, _, _, body) in &e[4..] {
            let hex = name.strip_prefix("blobs/sha256/").unwrap();
            assert_eq!(spec::sha256_digest(body), format!("sha256:{hex}"));
        }
        let index: serde_json::Value = serde_json::from_slice(&e[1].3).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], p1.manifest_digest.clone().unwrap());
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], spec.name);
        assert_eq!(m["annotations"][ANNOTATION_CONTAINERD_NAME], spec.name);
        assert_eq!(m["platform"]["os"], "linux");

        let blob = |digest: &str| -> Vec<u8> {
            let path = spec::blob_path(digest).unwrap();
            e.iter().find(|x| x.0 == path).unwrap().3.clone()
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
        assert_eq!(manifest["config"]["digest"], p1.config_digest);
        let config: serde_json::Value = serde_json::from_slice(&blob(&p1.config_digest)).unwrap();
        assert_eq!(config["architecture"], crate::bundle::host_arch());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/prog");
        assert_eq!(config["config"]["Env"][0], DEFAULT_PATH_ENV);
        assert_eq!(config["rootfs"]["diff_ids"][0], p1.diff_id);

        // The layer: gzip'd, sorted, parents created, modes as given.
        let layer_gz = blob(manifest["layers"][0]["digest"].as_str().unwrap());
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(&layer_gz[..])
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(spec::sha256_digest(&layer), p1.diff_id);
        let le = entries(&layer);
        let got: Vec<(&str, u32)> = le.iter().map(|x| (x.0.as_str(), x.1)).collect();
        assert_eq!(
            got,
            [
                ("etc/", 0o755),
                ("etc/app/", 0o755),
                ("etc/app/data", 0o600),
                ("usr/", 0o755),
                ("usr/bin/", 0o755),
                ("usr/bin/prog", 0o755),
            ]
        );
        assert_eq!(le[2].3, b"hello");
    }

    #[test]
    fn docker_archive_and_gzip() {
        let d = tempfile::tempdir().unwrap();
        let mut spec = spec_with(d.path(), Format::Docker);
        let mut plain = Vec::new();
        let p = pack(&spec, &mut plain).unwrap();
        assert_eq!(p.manifest_digest, None);
        let e = entries(&plain);
        assert_eq!(e[0].0, "manifest.json");
        let m: Vec<DockerArchiveEntry> = serde_json::from_slice(&e[0].3).unwrap();
        assert_eq!(m[0].repo_tags, [spec.name.clone()]);
        let config = e.iter().find(|x| x.0 == m[0].config).unwrap();
        assert_eq!(spec::sha256_digest(&config.3), p.config_digest);
        let layer = e.iter().find(|x| x.0 == m[0].layers[0]).unwrap();
        assert_eq!(spec::sha256_digest(&layer.3), p.diff_id);

        spec.gzip = true;
        let mut gz = Vec::new();
        let pg = pack(&spec, &mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, plain);
        assert_eq!(pg.config_digest, p.config_digest);
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let base = spec_with(d.path(), Format::Oci);
        let cases: Vec<(PackSpec, &str)> = vec![
            (
                PackSpec {
                    name: "busybox".into(),
                    ..base.clone()
                },
                "docker.io/library/busybox:latest",
            ),
            (
                PackSpec {
                    entrypoint: vec![],
                    ..base.clone()
                },
                "entrypoint",
            ),
            (
                PackSpec {
                    files: vec![FileSpec {
                        dest: "relative".into(),
                        ..base.files[0].clone()
                    }],
                    ..base.clone()
                },
                "not absolute",
            ),
            (
                PackSpec {
                    files: vec![base.files[0].clone(), base.files[0].clone()],
                    ..base.clone()
                },
                "twice",
            ),
            (
                PackSpec {
                    files: vec![
                        base.files[0].clone(),
                        FileSpec {
                            dest: "/usr/bin/prog/x".into(),
                            ..base.files[1].clone()
                        },
                    ],
                    ..base.clone()
                },
                "file and a directory",
            ),
            (
                PackSpec {
                    env: vec!["NOEQUALS".into()],
                    ..base.clone()
                },
                "KEY=value",
            ),
        ];
        for (s, want) in cases {
            let e = pack(&s, &mut Vec::new()).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        let missing = PackSpec {
            files: vec![FileSpec {
                source: d.path().join("absent"),
                dest: "/x".into(),
                mode: 0o644,
            }],
            ..base
        };
        let e = pack(&missing, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
    }
}
