//! Building a bundle: take binaries from a directory (checking pinned
//! artifacts against `versions.yaml`) and image archives (each read through
//! completely first, so a corrupt one is refused here rather than on every
//! node), write the payload and footer after a copy of the mkectl
//! executable.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tracing::info;

use super::footer::{Footer, FORMAT_VERSION};
use super::manifest::{
    FileEntry, ImageEntry, Manifest, Origin, IMAGES_PREFIX, IMAGE_MODE, MANIFEST_NAME,
};
use super::pins::{Artifact, PinnedComponent, Pins};
use super::reader::Bundle;
use super::source_builds::{self, SourceBuild, Usage, SOURCE_BUILDS_FILE};
use super::{elf, valid_file_name, BundleError, BIN_MODE};

/// Version recorded for a local file when none is given.
pub const LOCAL_VERSION: &str = "local";

#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Directory holding the downloaded artifacts and/or local binaries.
    pub from_dir: PathBuf,
    /// The pins file and its parsed content, if any.
    pub pins: Option<(PathBuf, Pins)>,
    /// Architecture whose pins apply (`amd64`, `arm64`).
    pub arch: String,
    /// Bundle files that match no pinned artifact, with their own checksum.
    pub allow_local: bool,
    /// Versions recorded for local files, by file name.
    pub local_versions: BTreeMap<String, String>,
    /// Fail unless every artifact pinned for `arch` is in `from_dir`.
    pub require_all: bool,
    /// The mkectl executable to append to (an existing bundle on it is replaced).
    pub mkectl: PathBuf,
    pub output: PathBuf,
    /// gzip level 0-9.
    pub compression_level: u32,
    /// Image archives (OCI layout or docker archive, optionally gzip'd) to
    /// carry; staged into `<data-dir>/images/` under their file names.
    pub images: Vec<PathBuf>,
}

/// Where a bundled file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Out of the pinned artifact with this file name.
    Pinned { artifact: String },
    /// A local file, checksum computed, not checked against any pin.
    Local,
    /// Built from source by `packaging/build-upstream.sh`, checked against
    /// the SHA-256 its `source-builds.tsv` records.
    Source,
}

#[derive(Debug, Clone)]
pub struct CreateReport {
    pub output: PathBuf,
    pub manifest: Manifest,
    pub sources: BTreeMap<String, SourceKind>,
    /// Bytes of mkectl itself in the output.
    pub image_len: u64,
    pub payload_len: u64,
    /// File names of artifacts pinned for the arch but absent from the dir.
    pub missing_pins: Vec<String>,
}

struct Staged {
    entry: FileEntry,
    path: PathBuf,
    source: SourceKind,
}

fn input_err(path: &Path, detail: impl Into<String>) -> BundleError {
    BundleError::Input {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Builds `opts.output`: a copy of `opts.mkectl` (without any bundle it
/// already carries) followed by a payload of every usable file in
/// `opts.from_dir` and the footer. Written to a temporary file and renamed,
/// so a failure leaves no partial output.
pub fn create(opts: &CreateOptions) -> Result<CreateReport, BundleError> {
    let level = opts.compression_level.min(9);
    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pinned: Vec<(&PinnedComponent, &Artifact)> = opts
        .pins
        .as_ref()
        .map(|(_, p)| p.for_arch(&opts.arch))
        .unwrap_or_default();
    let by_file: BTreeMap<&str, (&PinnedComponent, &Artifact)> = pinned
        .iter()
        .map(|(c, a)| (a.file_name(), (*c, *a)))
        .collect();

    let mut inputs: Vec<PathBuf> = fs::read_dir(&opts.from_dir)
        .map_err(|source| BundleError::Read {
            path: opts.from_dir.clone(),
            source,
        })?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|source| BundleError::Read {
            path: opts.from_dir.clone(),
            source,
        })?;
    // The output may go into the input directory: an earlier output there
    // is not an input.
    if let (Some(out_name), Ok(from), Ok(out)) = (
        opts.output.file_name(),
        fs::canonicalize(&opts.from_dir),
        fs::canonicalize(&out_dir),
    ) {
        if from == out {
            inputs.retain(|p| p.file_name() != Some(out_name));
        }
    }
    inputs.sort();
    // Staging next to the output: the binaries are large and /tmp may be a
    // small tmpfs. Created after listing the inputs, so an output inside the
    // input directory works.
    let staging = tempfile::Builder::new()
        .prefix(".mkectl-bundle-staging-")
        .tempdir_in(&out_dir)
        .map_err(|source| BundleError::Write {
            path: out_dir.clone(),
            source,
        })?;
    let built = source_builds::read(&opts.from_dir)?;

    let mut staged: BTreeMap<String, Staged> = BTreeMap::new();
    let mut used_artifacts = BTreeSet::new();
    let mut used_local_versions = BTreeSet::new();
    for path in &inputs {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| input_err(path, "file name is not UTF-8"))?
            .to_string();
        let meta = fs::metadata(path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(input_err(
                path,
                "not a regular file; --from-dir takes artifacts and binaries directly, no subdirectories",
            ));
        }
        if name == SOURCE_BUILDS_FILE {
            continue;
        }
        let new: Vec<Staged> = if let Some(build) = built.get(&name) {
            match build.usage {
                Usage::Ship => {}
                Usage::TestOnly => {
                    info!(file = %name, component = %build.component, "test-only source build, never bundled");
                    continue;
                }
                Usage::Image => {
                    info!(file = %name, component = %build.component, "image content, not a host binary: bundled only inside its image archive (--image)");
                    continue;
                }
            }
            vec![stage_source_build(path, &name, build, staging.path())?]
        } else if let Some((component, artifact)) = by_file.get(name.as_str()) {
            used_artifacts.insert(name.clone());
            stage_artifact(path, component, artifact, staging.path())?
        } else if opts.allow_local {
            if !valid_file_name(&name) {
                return Err(input_err(
                    path,
                    "not a valid bundle file name ([A-Za-z0-9._+-], no leading dot)",
                ));
            }
            if meta.permissions().mode() & 0o111 == 0 {
                return Err(input_err(
                    path,
                    "not executable; only executables are bundled",
                ));
            }
            let version = match opts.local_versions.get(&name) {
                Some(v) => {
                    used_local_versions.insert(name.clone());
                    v.clone()
                }
                None => LOCAL_VERSION.to_string(),
            };
            let entry = stage_file(path, &name, staging.path(), &name, &version, Origin::Local)?;
            info!(file = %name, %version, sha256 = %entry.sha256, "bundling a local file (not checked against pins)");
            vec![Staged {
                path: staging.path().join(&name),
                entry,
                source: SourceKind::Local,
            }]
        } else {
            let expected: Vec<&str> = by_file.keys().copied().collect();
            return Err(input_err(
                path,
                format!(
                    "not a pinned artifact for arch {} (pinned file names: {}); to bundle a local \
                     binary with its own checksum, pass --allow-local",
                    opts.arch,
                    if expected.is_empty() {
                        "none".to_string()
                    } else {
                        expected.join(", ")
                    }
                ),
            ));
        };
        for s in new {
            if let Some(prev) = staged.get(&s.entry.name) {
                return Err(input_err(
                    path,
                    format!(
                        "{} would be bundled twice (also from {:?})",
                        s.entry.name, prev.source
                    ),
                ));
            }
            staged.insert(s.entry.name.clone(), s);
        }
    }

    for name in opts.local_versions.keys() {
        if !used_local_versions.contains(name) {
            return Err(input_err(
                &opts.from_dir,
                format!("--local-version {name}=...: no local file {name} is bundled"),
            ));
        }
    }
    let missing_pins: Vec<String> = by_file
        .keys()
        .filter(|f| !used_artifacts.contains(**f))
        .map(|f| f.to_string())
        .collect();
    if opts.require_all && !missing_pins.is_empty() {
        return Err(input_err(
            &opts.from_dir,
            format!(
                "pinned artifacts for {} are missing: {}",
                opts.arch,
                missing_pins.join(", ")
            ),
        ));
    }
    let images = stage_images(&opts.images, staging.path())?;
    if staged.is_empty() && images.is_empty() {
        return Err(input_err(&opts.from_dir, "nothing to bundle"));
    }

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        arch: opts.arch.clone(),
        created_by: format!("mkectl {}", env!("CARGO_PKG_VERSION")),
        files: staged.values().map(|s| s.entry.clone()).collect(),
        images: images.values().map(|(e, _)| e.clone()).collect(),
    };
    manifest
        .validate()
        .map_err(|e| input_err(&opts.from_dir, e.to_string()))?;

    let (image_len, payload_len) =
        write_output(opts, &out_dir, &manifest, &staged, &images, level)?;

    // Read back what we wrote with the same code that extracts it.
    let check = Bundle::open(&opts.output)?
        .ok_or_else(|| input_err(&opts.output, "written without a readable footer"))?;
    check.verify_payload()?;
    if check.manifest()? != manifest {
        return Err(input_err(
            &opts.output,
            "manifest read back differs from the one written",
        ));
    }

    Ok(CreateReport {
        output: opts.output.clone(),
        sources: staged
            .iter()
            .map(|(n, s)| (n.clone(), s.source.clone()))
            .collect(),
        manifest,
        image_len,
        payload_len,
        missing_pins,
    })
}

/// Reads every image archive through (refusing a corrupt one, naming it)
/// and copies it into `staging/images/`, by file name.
fn stage_images(
    paths: &[PathBuf],
    staging: &Path,
) -> Result<BTreeMap<String, (ImageEntry, PathBuf)>, BundleError> {
    let mut out: BTreeMap<String, (ImageEntry, PathBuf)> = BTreeMap::new();
    if paths.is_empty() {
        return Ok(out);
    }
    let dir = staging.join("images");
    fs::create_dir(&dir).map_err(|source| BundleError::Write {
        path: dir.clone(),
        source,
    })?;
    for path in paths {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !valid_file_name(&name) || !crate::images::is_archive_name(&name) {
            return Err(input_err(
                path,
                "--image: the file name must be [A-Za-z0-9._+-] ending in .tar, .tar.gz or .tgz \
                 (it is the name staged into <data-dir>/images/)",
            ));
        }
        if out.contains_key(&name) {
            return Err(input_err(
                path,
                format!("--image: two archives named {name}"),
            ));
        }
        let info = crate::images::inspect(path).map_err(|source| BundleError::Image {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let f = fs::File::open(path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let target = dir.join(&name);
        let (sha256, size) = copy_to(f, &target)?;
        let refs: Vec<String> = info.names().iter().map(|n| n.to_string()).collect();
        info!(file = %name, format = %info.format, images = ?refs, %sha256, "bundling an image archive");
        out.insert(
            name.clone(),
            (
                ImageEntry {
                    name,
                    sha256,
                    size,
                    refs,
                },
                target,
            ),
        );
    }
    Ok(out)
}

/// Verifies a pinned artifact's checksum and stages what it contributes.
fn stage_artifact(
    path: &Path,
    component: &PinnedComponent,
    artifact: &Artifact,
    staging: &Path,
) -> Result<Vec<Staged>, BundleError> {
    let Some(sum) = artifact.checksum() else {
        return Err(input_err(
            path,
            format!(
                "no checksum is pinned for {}; fill in the published {} before bundling it",
                artifact.url,
                if artifact.sha512.is_some() {
                    "sha512"
                } else {
                    "sha256"
                }
            ),
        ));
    };
    let actual = sum.digest_file(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if actual != sum.hex() {
        return Err(BundleError::ArtifactChecksum {
            path: path.to_path_buf(),
            algorithm: sum.algorithm(),
            expected: sum.hex().to_string(),
            actual,
            detail: format!(
                "pinned for {} {} from {}",
                component.name, component.version, artifact.url
            ),
        });
    }
    info!(artifact = %artifact.file_name(), algorithm = sum.algorithm(), "pinned checksum verified");
    let source = SourceKind::Pinned {
        artifact: artifact.file_name().to_string(),
    };
    if let Some(name) = &artifact.file {
        let entry = stage_file(
            path,
            name,
            staging,
            &component.name,
            &component.version,
            Origin::Pinned,
        )?;
        return Ok(vec![Staged {
            path: staging.join(name),
            entry,
            source,
        }]);
    }

    let corrupt = |detail: String| input_err(path, format!("reading the archive: {detail}"));
    let file = fs::File::open(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut archive = tar::Archive::new(GzDecoder::new(io::BufReader::new(file)));
    let mut out = Vec::new();
    let mut found = BTreeSet::new();
    for entry in archive.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let member = entry
            .path()
            .map_err(|e| corrupt(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let Some(name) = artifact.extract.get(&member) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            return Err(input_err(
                path,
                format!("archive member {member} is not a regular file"),
            ));
        }
        if !found.insert(member.clone()) {
            return Err(input_err(path, format!("archive holds {member} twice")));
        }
        let target = staging.join(name);
        let (sha256, size) = copy_to(&mut entry, &target)?;
        out.push(Staged {
            entry: FileEntry {
                name: name.clone(),
                component: component.name.clone(),
                version: component.version.clone(),
                sha256,
                size,
                mode: BIN_MODE,
                origin: Origin::Pinned,
            },
            path: target,
            source: source.clone(),
        });
    }
    let missing: Vec<&str> = artifact
        .extract
        .keys()
        .filter(|m| !found.contains(*m))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(input_err(
            path,
            format!("archive lacks pinned member(s): {}", missing.join(", ")),
        ));
    }
    Ok(out)
}

/// Stages a binary `build-upstream.sh` built, after checking it still has
/// the SHA-256 the build recorded.
fn stage_source_build(
    path: &Path,
    name: &str,
    build: &SourceBuild,
    staging: &Path,
) -> Result<Staged, BundleError> {
    let entry = stage_file(
        path,
        name,
        staging,
        &build.component,
        &build.version,
        Origin::Source,
    )?;
    if entry.sha256 != build.sha256 {
        return Err(BundleError::ArtifactChecksum {
            path: path.to_path_buf(),
            algorithm: "sha256",
            expected: build.sha256.clone(),
            actual: entry.sha256,
            detail: format!(
                "built from source {} {}, recorded in {SOURCE_BUILDS_FILE} when it was built; \
                 the file changed since: delete it and rerun packaging/build-upstream.sh",
                build.component, build.version
            ),
        });
    }
    info!(
        file = %name,
        version = %build.version,
        sha256 = %entry.sha256,
        "bundling a source build (its own checksum; the published artifact's does not apply)"
    );
    Ok(Staged {
        path: staging.join(name),
        entry,
        source: SourceKind::Source,
    })
}

/// Copies a plain file into staging under `name`.
fn stage_file(
    src: &Path,
    name: &str,
    staging: &Path,
    component: &str,
    version: &str,
    origin: Origin,
) -> Result<FileEntry, BundleError> {
    let f = fs::File::open(src).map_err(|source| BundleError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    let (sha256, size) = copy_to(f, &staging.join(name))?;
    Ok(FileEntry {
        name: name.to_string(),
        component: component.to_string(),
        version: version.to_string(),
        sha256,
        size,
        mode: BIN_MODE,
        origin,
    })
}

/// Copies `r` to a new file at `target` while hashing it.
fn copy_to(r: impl Read, target: &Path) -> Result<(String, u64), BundleError> {
    let werr = |source| BundleError::Write {
        path: target.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(fs::File::create(target).map_err(werr)?);
    let mut hashing = HashingReader::new(r);
    let n = io::copy(&mut hashing, &mut out).map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok((hashing.hex(), n))
}

struct HashingReader<R> {
    inner: R,
    ctx: ring::digest::Context,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }
    fn hex(self) -> String {
        hex::encode(self.ctx.finish().as_ref())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts and hashes everything written through it (the payload).
struct HashingWriter<W> {
    inner: W,
    ctx: ring::digest::Context,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes image + payload + footer to a temporary file and renames it to the
/// output. Returns (image length, payload length).
fn write_output(
    opts: &CreateOptions,
    out_dir: &Path,
    manifest: &Manifest,
    staged: &BTreeMap<String, Staged>,
    images: &BTreeMap<String, (ImageEntry, PathBuf)>,
    level: u32,
) -> Result<(u64, u64), BundleError> {
    let image_len = source_image_len(&opts.mkectl)?;
    let werr = |source| BundleError::Write {
        path: opts.output.clone(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".mkectl-bundle-")
        .tempfile_in(out_dir)
        .map_err(werr)?;

    let src = fs::File::open(&opts.mkectl).map_err(|source| BundleError::Read {
        path: opts.mkectl.clone(),
        source,
    })?;
    let copied = io::copy(&mut src.take(image_len), tmp.as_file_mut()).map_err(werr)?;
    if copied != image_len {
        return Err(input_err(&opts.mkectl, "shrank while being copied"));
    }

    let (len, digest) = {
        // Shared `&File` writes: the temp file stays usable afterwards.
        let hashing = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, tmp.as_file()),
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        };
        let gz = GzEncoder::new(hashing, flate2::Compression::new(level));
        let mut tar = tar::Builder::new(gz);
        let manifest_json = manifest.to_json();
        tar.append(
            &header(MANIFEST_NAME, manifest_json.len() as u64, 0o644).map_err(werr)?,
            &manifest_json[..],
        )
        .map_err(werr)?;
        for (name, s) in staged {
            let f = fs::File::open(&s.path).map_err(|source| BundleError::Read {
                path: s.path.clone(),
                source,
            })?;
            tar.append(&header(name, s.entry.size, s.entry.mode).map_err(werr)?, f)
                .map_err(werr)?;
        }
        for (name, (entry, path)) in images {
            let f = fs::File::open(path).map_err(|source| BundleError::Read {
                path: path.clone(),
                source,
            })?;
            let entry_name = format!("{IMAGES_PREFIX}{name}");
            tar.append(
                &header(&entry_name, entry.size, IMAGE_MODE).map_err(werr)?,
                f,
            )
            .map_err(werr)?;
        }
        let gz = tar.into_inner().map_err(werr)?;
        let mut hashing = gz.finish().map_err(werr)?;
        hashing.flush().map_err(werr)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hashing.ctx.finish().as_ref());
        (hashing.len, digest)
    };

    let footer = Footer::new(image_len, len, digest);
    tmp.as_file().write_all(&footer.encode()).map_err(werr)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(BIN_MODE))
        .map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(&opts.output).map_err(|e| werr(e.error))?;
    Ok((image_len, len))
}

/// A deterministic ustar header: no timestamp, no owner.
fn header(name: &str, size: u64, mode: u32) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Length of the executable part of `mkectl`: without the bundle it carries,
/// if any. Refuses files that are not ELF executables.
fn source_image_len(mkectl: &Path) -> Result<u64, BundleError> {
    if let Some(existing) = Bundle::open(mkectl)? {
        return Ok(existing.image_len());
    }
    let f = fs::File::open(mkectl).map_err(|source| BundleError::Read {
        path: mkectl.to_path_buf(),
        source,
    })?;
    let rerr = |source| BundleError::Read {
        path: mkectl.to_path_buf(),
        source,
    };
    match elf::image_end(&f).map_err(rerr)? {
        Some(_) => Ok(f.metadata().map_err(rerr)?.len()),
        None => Err(input_err(mkectl, "not an ELF executable (--mkectl)")),
    }
}
