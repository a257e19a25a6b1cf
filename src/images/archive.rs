//! Reading an image archive before it is imported: which format it is, the
//! images it names with their digests, and whether it is whole.
//!
//! Two formats, told apart the way containerd's importer does: a tar with an
//! `oci-layout` file is an OCI image layout (`index.json` lists the images;
//! each entry's digest is what containerd's image will point to); otherwise a
//! tar with `manifest.json` is a docker archive (`docker save`: config and
//! layer paths plus `RepoTags`; containerd writes the manifest itself at
//! import, so the identity compared is the config digest, the image ID).
//! Either may be gzip'd (`.tar.gz`, `.tgz`): the first bytes decide.
//!
//! The whole archive is read once and every regular file hashed, so a
//! truncated or corrupted archive (bad gzip, short tar, a blob whose bytes
//! do not match its digest, a missing blob, unparsable JSON) is refused
//! here, naming the file, before `ctr` sees it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::reference;
use super::spec::{
    self, Descriptor, DockerArchiveEntry, ImageLayout, Index, DOCKER_MANIFEST_FILE, INDEX_FILE,
    OCI_LAYOUT_FILE, OCI_LAYOUT_VERSION,
};
use super::ImagesError;

/// Files up to this size are kept in memory during the scan (manifests,
/// configs, index blobs are a few KiB).
const KEEP_MAX: u64 = 1 << 20;
/// Bound on everything kept in memory for one archive.
const KEEP_TOTAL_MAX: u64 = 64 << 20;
/// How deep nested indexes are followed.
const MAX_INDEX_DEPTH: usize = 4;
/// How many symlinks one path may pass through.
const MAX_SYMLINKS: usize = 8;

/// The two archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    OciLayout,
    DockerArchive,
}

impl std::fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveFormat::OciLayout => "OCI image layout",
            ArchiveFormat::DockerArchive => "docker archive",
        })
    }
}

/// One image an archive carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// The name containerd will give it (fully qualified for a docker
    /// archive's `RepoTags`; as annotated for an OCI layout), if any.
    pub name: Option<String>,
    /// OCI layout: the index entry's digest, which becomes containerd's
    /// image target.
    pub digest: Option<String>,
    /// The config digest (image ID), when the entry is a single manifest.
    pub config_digest: Option<String>,
}

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub format: ArchiveFormat,
    pub gzip: bool,
    pub images: Vec<ArchiveImage>,
    /// Size of the (uncompressed) tar stream.
    pub tar_bytes: u64,
}

impl ArchiveInfo {
    /// Every name the archive gives, in order.
    pub fn names(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter_map(|i| i.name.as_deref())
            .collect()
    }
}

/// True when the file starts with the gzip magic.
pub fn is_gzip(path: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = File::open(path)?;
    let mut got = 0;
    while got < 2 {
        match f.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == 2 && magic == [0x1f, 0x8b])
}

/// The archive's tar stream: the file itself, or decompressed when gzip'd.
pub fn open_tar_stream(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let gzip = is_gzip(path)?;
    let f = BufReader::with_capacity(1 << 16, File::open(path)?);
    Ok(if gzip {
        Box::new(MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

/// One regular file seen in the tar.
struct Seen {
    digest: String,
    size: u64,
    body: Option<Vec<u8>>,
}

/// Reads the archive at `path` completely and says what it holds; any
/// defect is an [`ImagesError::Archive`] naming the file.
pub fn inspect(path: &Path) -> Result<ArchiveInfo, ImagesError> {
    let corrupt = |source: ArchiveError| ImagesError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let gzip = is_gzip(path).map_err(|source| ImagesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let stream = open_tar_stream(path).map_err(|source| ImagesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut counted = CountingReader {
        inner: stream,
        n: 0,
    };
    let (files, links) = scan(&mut counted).map_err(corrupt)?;
    let (format, images) = interpret(&files, &links).map_err(corrupt)?;
    Ok(ArchiveInfo {
        format,
        gzip,
        images,
        tar_bytes: counted.n,
    })
}

/// What is wrong with an image archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a tar archive")]
    NotTar(#[source] io::Error),
    #[error("reading the tar")]
    ReadTar(#[source] io::Error),
    #[error("unreadable entry name")]
    EntryName(#[source] io::Error),
    #[error("unsafe entry name {0:?}")]
    UnsafeName(PathBuf),
    #[error("{name}: unreadable link target")]
    LinkTarget {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name}: symlink without a target")]
    NoLinkTarget { name: String },
    #[error("{name} is {size} bytes, too large for an index")]
    IndexTooLarge { name: String, size: u64 },
    #[error("reading {name}")]
    ReadEntry {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name}: {total} bytes where the tar says {size}")]
    SizeMismatch { name: String, total: u64, size: u64 },
    #[error("reading the archive")]
    ReadRest(#[source] io::Error),
    #[error("unsafe path {0:?}")]
    UnsafePath(String),
    #[error("{0} is missing")]
    Missing(String),
    #[error("{0}: link leaves the archive")]
    LinkEscapes(String),
    #[error("{0}: too many symlinks")]
    SymlinkLoop(String),
    #[error("{OCI_LAYOUT_FILE}: layout version {0:?} (containerd imports {OCI_LAYOUT_VERSION})")]
    LayoutVersion(String),
    #[error("{OCI_LAYOUT_FILE} but no {INDEX_FILE}")]
    NoIndex,
    #[error("{INDEX_FILE} lists no images")]
    EmptyIndex,
    #[error("{INDEX_FILE}: image name {0:?} is not a reference")]
    IndexImageName(String),
    #[error("{DOCKER_MANIFEST_FILE} lists no images")]
    EmptyManifest,
    #[error("{DOCKER_MANIFEST_FILE}: config")]
    DockerConfig(#[source] Box<ArchiveError>),
    #[error("config {name}: not a JSON object")]
    ConfigNotObject {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{DOCKER_MANIFEST_FILE}: an image without layers")]
    NoLayers,
    #[error("{DOCKER_MANIFEST_FILE}: layer")]
    DockerLayer(#[source] Box<ArchiveError>),
    #[error("{DOCKER_MANIFEST_FILE}: RepoTags")]
    RepoTag(#[source] reference::ReferenceError),
    #[error("neither an OCI image layout (no {OCI_LAYOUT_FILE}) nor a docker archive (no {DOCKER_MANIFEST_FILE})")]
    UnknownFormat,
    #[error("{0} is too large to be read")]
    TooLargeToRead(String),
    #[error("{name}")]
    Json {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("config of {digest}")]
    ManifestConfig {
        digest: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("layer of {digest}")]
    ManifestLayer {
        digest: String,
        #[source]
        source: Box<ArchiveError>,
    },
    #[error("indexes nested deeper than {MAX_INDEX_DEPTH}")]
    IndexDepth,
    #[error("blob digest")]
    Digest(#[source] reference::BadDigest),
    #[error("bad digest {0:?}")]
    BadDigest(String),
    #[error("blob {0} is missing")]
    BlobMissing(String),
    #[error("blob {digest} is corrupt: its bytes hash to {actual}")]
    BlobCorrupt { digest: String, actual: String },
    #[error("blob {digest} is {size} bytes, its descriptor says {expected}")]
    BlobSize {
        digest: String,
        size: u64,
        expected: u64,
    },
}

type Files = BTreeMap<String, Seen>;
type Links = BTreeMap<String, String>;

/// Reads every entry: regular files hashed (small ones kept), symlinks
/// recorded, everything else skipped as containerd's importer does.
fn scan(r: &mut impl Read) -> Result<(Files, Links), ArchiveError> {
    let mut archive = tar::Archive::new(r);
    let mut files = Files::new();
    let mut links = Links::new();
    let mut kept = 0u64;
    let entries = archive.entries().map_err(ArchiveError::NotTar)?;
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::ReadTar)?;
        let raw = entry.path().map_err(ArchiveError::EntryName)?.into_owned();
        let Some(name) = clean_name(&raw) else {
            return Err(ArchiveError::UnsafeName(raw));
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|source| ArchiveError::LinkTarget {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| ArchiveError::NoLinkTarget { name: name.clone() })?;
            links.insert(name, target.to_string_lossy().into_owned());
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        let keep = matches!(
            name.as_str(),
            OCI_LAYOUT_FILE | INDEX_FILE | DOCKER_MANIFEST_FILE
        ) || (size <= KEEP_MAX && kept + size <= KEEP_TOTAL_MAX);
        if keep && size > KEEP_MAX * 4 {
            return Err(ArchiveError::IndexTooLarge { name, size });
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut body = keep.then(|| Vec::with_capacity(size as usize));
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ArchiveError::ReadEntry { name, source }),
            };
            ctx.update(&buf[..n]);
            if let Some(b) = body.as_mut() {
                b.extend_from_slice(&buf[..n]);
            }
            total += n as u64;
        }
        if total != size {
            return Err(ArchiveError::SizeMismatch { name, total, size });
        }
        if keep {
            kept += size;
        }
        files.insert(
            name,
            Seen {
                digest: format!("sha256:{}", hex::encode(ctx.finish().as_ref())),
                size,
                body,
            },
        );
    }
    // Reading to the end also catches a truncated gzip stream after the
    // tar's end-of-archive marker.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ArchiveError::ReadRest)?;
    Ok((files, links))
}

/// `raw` as a relative path without `.` components, or None when it is
/// absolute or climbs out with `..`.
fn clean_name(raw: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Follows symlinks (relative to the link's directory) to a regular file.
fn resolve<'a>(files: &'a Files, links: &Links, name: &str) -> Result<&'a Seen, ArchiveError> {
    let mut cur =
        clean_name(Path::new(name)).ok_or_else(|| ArchiveError::UnsafePath(name.to_string()))?;
    for _ in 0..=MAX_SYMLINKS {
        if let Some(f) = files.get(&cur) {
            return Ok(f);
        }
        let Some(target) = links.get(&cur) else {
            return Err(ArchiveError::Missing(name.to_string()));
        };
        let base = Path::new(&cur).parent().unwrap_or(Path::new(""));
        let joined: PathBuf = base.join(target);
        cur = normalize_path(&joined).ok_or_else(|| ArchiveError::LinkEscapes(name.to_string()))?;
    }
    Err(ArchiveError::SymlinkLoop(name.to_string()))
}

/// Resolves `..` lexically; None when it climbs above the root.
fn normalize_path(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

fn interpret(
    files: &Files,
    links: &Links,
) -> Result<(ArchiveFormat, Vec<ArchiveImage>), ArchiveError> {
    if let Some(layout) = files.get(OCI_LAYOUT_FILE) {
        let layout: ImageLayout = parse_json(OCI_LAYOUT_FILE, layout)?;
        if layout.image_layout_version != OCI_LAYOUT_VERSION {
            return Err(ArchiveError::LayoutVersion(layout.image_layout_version));
        }
        let index_file = files.get(INDEX_FILE).ok_or(ArchiveError::NoIndex)?;
        let index: Index = parse_json(INDEX_FILE, index_file)?;
        if index.manifests.is_empty() {
            return Err(ArchiveError::EmptyIndex);
        }
        let mut images = Vec::new();
        for d in &index.manifests {
            let config_digest = check_descriptor(files, d, 0)?;
            if let Some(name) = d.image_name() {
                if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(ArchiveError::IndexImageName(name.to_string()));
                }
            }
            images.push(ArchiveImage {
                name: d.image_name().map(str::to_string),
                digest: Some(d.digest.clone()),
                config_digest,
            });
        }
        return Ok((ArchiveFormat::OciLayout, images));
    }
    if let Some(m) = files.get(DOCKER_MANIFEST_FILE) {
        let entries: Vec<DockerArchiveEntry> = parse_json(DOCKER_MANIFEST_FILE, m)?;
        if entries.is_empty() {
            return Err(ArchiveError::EmptyManifest);
        }
        let mut images = Vec::new();
        for e in &entries {
            let config = resolve(files, links, &e.config)
                .map_err(|e| ArchiveError::DockerConfig(Box::new(e)))?;
            if let Some(body) = &config.body {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
                    .map_err(|source| ArchiveError::ConfigNotObject {
                        name: e.config.clone(),
                        source,
                    })?;
            }
            if e.layers.is_empty() {
                return Err(ArchiveError::NoLayers);
            }
            for l in &e.layers {
                resolve(files, links, l).map_err(|e| ArchiveError::DockerLayer(Box::new(e)))?;
            }
            let mut names = Vec::new();
            for t in &e.repo_tags {
                names.push(reference::normalize(t).map_err(ArchiveError::RepoTag)?);
            }
            if names.is_empty() {
                images.push(ArchiveImage {
                    name: None,
                    digest: None,
                    config_digest: Some(config.digest.clone()),
                });
            }
            for name in names {
                images.push(ArchiveImage {
                    name: Some(name),
                    digest: None,
                    config_digest: Some(config.digest.clone()),
                });
            }
        }
        return Ok((ArchiveFormat::DockerArchive, images));
    }
    Err(ArchiveError::UnknownFormat)
}

fn parse_json<T: serde::de::DeserializeOwned>(name: &str, f: &Seen) -> Result<T, ArchiveError> {
    let body = f
        .body
        .as_ref()
        .ok_or_else(|| ArchiveError::TooLargeToRead(name.to_string()))?;
    serde_json::from_slice(body).map_err(|source| ArchiveError::Json {
        name: name.to_string(),
        source,
    })
}

/// Checks that the blob `d` points to is present with its digest and size,
/// and, for manifests and indexes, that everything they point to is too.
/// Returns the config digest when `d` is a manifest.
fn check_descriptor(
    files: &Files,
    d: &Descriptor,
    depth: usize,
) -> Result<Option<String>, ArchiveError> {
    let blob = blob(files, d)?;
    if d.is_manifest() {
        let m: spec::Manifest = parse_json(&d.digest, blob)?;
        blob_of(files, &m.config).map_err(|e| ArchiveError::ManifestConfig {
            digest: d.digest.clone(),
            source: Box::new(e),
        })?;
        for l in &m.layers {
            blob_of(files, l).map_err(|e| ArchiveError::ManifestLayer {
                digest: d.digest.clone(),
                source: Box::new(e),
            })?;
        }
        return Ok(Some(m.config.digest));
    }
    if d.is_index() {
        if depth >= MAX_INDEX_DEPTH {
            return Err(ArchiveError::IndexDepth);
        }
        let idx: Index = parse_json(&d.digest, blob)?;
        for child in &idx.manifests {
            check_descriptor(files, child, depth + 1)?;
        }
    }
    Ok(None)
}

fn blob_of(files: &Files, d: &Descriptor) -> Result<(), ArchiveError> {
    blob(files, d).map(|_| ())
}

/// The blob for `d`, checked against its digest and size.
fn blob<'a>(files: &'a Files, d: &Descriptor) -> Result<&'a Seen, ArchiveError> {
    reference::check_digest(&d.digest).map_err(ArchiveError::Digest)?;
    let path =
        spec::blob_path(&d.digest).ok_or_else(|| ArchiveError::BadDigest(d.digest.clone()))?;
    let f = files
        .get(&path)
        .ok_or_else(|| ArchiveError::BlobMissing(d.digest.clone()))?;
    if f.digest != d.digest {
        return Err(ArchiveError::BlobCorrupt {
            digest: d.digest.clone(),
            actual: f.digest.clone(),
        });
    }
    if f.size != d.size {
        return Err(ArchiveError::BlobSize {
            digest: d.digest.clone(),
            size: f.size,
            expected: d.size,
        });
    }
    Ok(f)
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::oci::{self, FileSpec, Format, PackSpec};
    use super::*;
    use std::fs;
    use std::io::Write;

    const NAME: &str = "registry.example/t/app:1";

    fn packed(dir: &Path, format: Format, gzip: bool) -> (PathBuf, oci::Packed) {
        let src = dir.join("prog");
        // Incompressible, so the gzip'd layer is the one big blob.
        let mut x = 0x2545_f491_u32;
        let bytes: Vec<u8> = (0..3000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        fs::write(&src, bytes).unwrap();
        let mut s = PackSpec::new(
            NAME,
            vec![FileSpec {
                source: src,
                dest: "/prog".into(),
                mode: 0o755,
            }],
        );
        s.entrypoint = vec!["/prog".into()];
        s.format = format;
        s.gzip = gzip;
        let out = dir.join(format!("img-{format:?}-{gzip}.tar"));
        let p = oci::pack_to_file(&s, &out).unwrap();
        (out, p)
    }

    #[test]
    fn reads_what_pack_writes() {
        let d = tempfile::tempdir().unwrap();
        for format in [Format::Oci, Format::Docker] {
            for gzip in [false, true] {
                let (path, p) = packed(d.path(), format, gzip);
                let info = inspect(&path).unwrap();
                assert_eq!(info.gzip, gzip);
                assert_eq!(info.names(), [NAME]);
                let img = &info.images[0];
                assert_eq!(img.config_digest.as_deref(), Some(p.config_digest.as_str()));
                match format {
                    Format::Oci => {
                        assert_eq!(info.format, ArchiveFormat::OciLayout);
                        assert_eq!(img.digest, p.manifest_digest);
                    }
                    Format::Docker => {
                        assert_eq!(info.format, ArchiveFormat::DockerArchive);
                        assert_eq!(img.digest, None);
                    }
                }
            }
        }
    }

    /// Rewrites the tar at `path` with `edit` applied to each (name, body).
    fn rewrite(path: &Path, edit: impl Fn(&str, &mut Vec<u8>) -> bool) {
        let raw = fs::read(path).unwrap();
        let mut out = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(&raw[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut h = e.header().clone();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            if !edit(&name, &mut body) {
                continue;
            }
            h.set_size(body.len() as u64);
            out.append_data(&mut h, &name, &body[..]).unwrap();
        }
        fs::write(path, out.into_inner().unwrap()).unwrap();
    }

    #[test]
    fn defects_are_refused_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        type Edit = Box<dyn Fn(&str, &mut Vec<u8>) -> bool>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "corrupt",
                Box::new(|n: &str, b: &mut Vec<u8>| {
                    if n.starts_with("blobs/sha256/") && b.len() > 1000 {
                        b[500] ^= 0xff;
                    }
                    true
                }),
            ),
            (
                "is missing",
                Box::new(|n: &str, b: &mut Vec<u8>| {
                    !(n.starts_with("blobs/sha256/") && b.len() > 1000)
                }),
            ),
            (
                "no index.json",
                Box::new(|n: &str, _: &mut Vec<u8>| n != INDEX_FILE),
            ),
            (
                "neither an OCI image layout",
                Box::new(|n: &str, _: &mut Vec<u8>| n != OCI_LAYOUT_FILE),
            ),
            (
                "index.json",
                Box::new(|n: &str, b: &mut Vec<u8>| {
                    if n == INDEX_FILE {
                        b.truncate(b.len() / 2);
                    }
                    true
                }),
            ),
        ];
        for (want, edit) in cases {
            let (path, _) = packed(d.path(), Format::Oci, false);
            rewrite(&path, edit);
            let e = crate::telemetry::Chain(&inspect(&path).unwrap_err()).to_string();
            assert!(
                e.contains(want) && e.contains(&path.display().to_string()),
                "{e} (wanted {want})"
            );
        }

        // Truncated plain tar and truncated gzip.
        for gzip in [false, true] {
            let (path, _) = packed(d.path(), Format::Oci, gzip);
            let len = fs::metadata(&path).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(len * 2 / 3)
                .unwrap();
            let e = inspect(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
        }

        // Not an archive at all.
        let junk = d.path().join("junk.tar");
        fs::File::create(&junk)
            .unwrap()
            .write_all(b"this is not a tar archive, just some text that is long enough...")
            .unwrap();
        assert!(inspect(&junk).is_err());
        // Empty file.
        let empty = d.path().join("empty.tar");
        fs::write(&empty, b"").unwrap();
        assert!(inspect(&empty).is_err());
    }

    #[test]
    fn docker_archive_symlinked_layers_and_unsafe_names() {
        let d = tempfile::tempdir().unwrap();
        let (path, p) = packed(d.path(), Format::Docker, false);
        // Move the layer elsewhere and leave a symlink, as old `docker save` does.
        let raw = fs::read(&path).unwrap();
        let mut out = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(&raw[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut h = e.header().clone();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            if name.ends_with("/layer.tar") {
                out.append_data(&mut h, "real/layer.tar", &body[..])
                    .unwrap();
                let mut l = tar::Header::new_gnu();
                l.set_entry_type(tar::EntryType::Symlink);
                l.set_size(0);
                out.append_link(&mut l, &name, "../real/layer.tar").unwrap();
            } else {
                out.append_data(&mut h, &name, &body[..]).unwrap();
            }
        }
        fs::write(&path, out.into_inner().unwrap()).unwrap();
        let info = inspect(&path).unwrap();
        assert_eq!(
            info.images[0].config_digest.as_deref(),
            Some(p.config_digest.as_str())
        );

        assert_eq!(clean_name(Path::new("./a/./b")).as_deref(), Some("a/b"));
        assert_eq!(clean_name(Path::new("/etc/passwd")), None);
        assert_eq!(clean_name(Path::new("a/../../b")), None);
        assert_eq!(normalize_path(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(normalize_path(Path::new("../b")), None);
    }
}
