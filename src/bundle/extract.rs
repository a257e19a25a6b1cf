//! Staging the bundled binaries into `<data-dir>/bin`: only what changed,
//! every file checked, nothing renamed into place until all of them are.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info, info_span, warn};

use super::manifest::{FileEntry, Manifest};
use super::reader::{entry_name, read_manifest_entry, Bundle};
use super::{mib, sha256_file, BundleError, BIN_MODE};
use crate::config::NodePaths;
use crate::fsutil;

/// Prefix of in-progress files in the bin dir; leftovers of a crash are
/// removed at the next extraction.
pub const TEMP_PREFIX: &str = ".mkectl-extract-";
/// The manifest of the last staged bundle, kept in the bin dir so files a
/// newer bundle no longer carries can be removed.
pub const RECORD_NAME: &str = ".mkectl-bundle.json";
/// Serialises extractions by several mkectl processes sharing a data dir.
const LOCK_NAME: &str = ".mkectl-bundle.lock";

/// What an extraction did, by file name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Written (missing or different before).
    pub extracted: Vec<String>,
    /// Already identical; not touched.
    pub unchanged: Vec<String>,
    /// Staged by an earlier bundle, absent from this one, and removed.
    pub removed: Vec<String>,
}

/// Stages the running executable's bundle into `<data-dir>/bin`, off the
/// async runtime. `Ok(None)` when mkectl carries no bundle.
pub async fn stage(paths: &NodePaths) -> Result<Option<ExtractReport>, BundleError> {
    let bin_dir = paths.staged_bin_dir();
    let span = info_span!("bundle", component = "bundle");
    tokio::task::spawn_blocking(move || span.in_scope(|| stage_blocking(&bin_dir))).await?
}

/// [`stage`] for synchronous callers; logs what it did.
pub fn stage_blocking(bin_dir: &Path) -> Result<Option<ExtractReport>, BundleError> {
    let Some(bundle) = Bundle::open_self()? else {
        debug!(
            "this mkectl carries no bundle; binaries come from --bin-dir, <data-dir>/bin or PATH"
        );
        return Ok(None);
    };
    let started = Instant::now();
    info!(
        bundle = %bundle.path().display(),
        payload = %mib(bundle.footer().payload_len),
        bin_dir = %bin_dir.display(),
        "verifying the bundled binaries"
    );
    let report = extract(&bundle, bin_dir)?;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bundle staged: extracted {}, unchanged {}, removed {}",
        report.extracted.len(),
        report.unchanged.len(),
        report.removed.len()
    );
    Ok(Some(report))
}

/// Extracts `bundle` into `bin_dir`. The payload checksum is verified before
/// anything is written; then every file whose copy is missing or differs is
/// written to a temporary file, checked against the manifest, and renamed
/// into place only once all of them passed. Files already identical keep
/// their bytes and mtime.
pub fn extract(bundle: &Bundle, bin_dir: &Path) -> Result<ExtractReport, BundleError> {
    bundle.verify_payload()?;
    let manifest = bundle.manifest()?;

    fsutil::ensure_dir(bin_dir, BIN_MODE)?;
    let _lock = lock(bin_dir)?;
    remove_leftover_temps(bin_dir);

    let mut report = ExtractReport::default();
    let mut needed: BTreeMap<&str, &FileEntry> = BTreeMap::new();
    for f in &manifest.files {
        let target = bin_dir.join(&f.name);
        if is_up_to_date(&target, f) {
            fsutil::set_mode(&target, f.mode)?;
            debug!(file = %f.name, version = %f.version, "up to date");
            report.unchanged.push(f.name.clone());
        } else {
            needed.insert(&f.name, f);
        }
    }

    if !needed.is_empty() {
        let staged = write_temps(bundle, &manifest, &needed, bin_dir)?;
        for (name, tmp) in staged {
            let target = bin_dir.join(&name);
            tmp.persist(&target).map_err(|e| BundleError::Write {
                path: target.clone(),
                source: e.error,
            })?;
            let f = needed[name.as_str()];
            info!(file = %name, version = %f.version, sha256 = %f.sha256, "extracted");
            report.extracted.push(name);
        }
        sync_dir(bin_dir);
    }

    report.removed = remove_dropped(bin_dir, &manifest);
    fsutil::write_atomic(
        &bin_dir.join(RECORD_NAME),
        &manifest.to_json(),
        fsutil::PUBLIC_FILE_MODE,
    )?;
    Ok(report)
}

/// A regular file (not a symlink) with the manifest's size and digest.
fn is_up_to_date(target: &Path, f: &FileEntry) -> bool {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() && m.len() == f.size => {}
        _ => return false,
    }
    matches!(sha256_file(target), Ok((digest, _)) if digest == f.sha256)
}

/// Decompresses the needed files into verified temporary files in `bin_dir`.
/// On any error the temporaries are dropped (deleted) and nothing is renamed.
fn write_temps(
    bundle: &Bundle,
    manifest: &Manifest,
    needed: &BTreeMap<&str, &FileEntry>,
    bin_dir: &Path,
) -> Result<Vec<(String, tempfile::NamedTempFile)>, BundleError> {
    let mut staged = Vec::new();
    walk_files(bundle, manifest, |f, reader| {
        if !needed.contains_key(f.name.as_str()) {
            return Ok(()); // up to date; the tar reader skips its data
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(bin_dir)
            .map_err(|source| BundleError::Write {
                path: bin_dir.to_path_buf(),
                source,
            })?;
        let tmp_path = tmp.path().to_path_buf();
        let werr = |source| BundleError::Write {
            path: tmp_path.clone(),
            source,
        };
        let (digest, n) =
            copy_hashing(reader, tmp.as_file_mut()).map_err(|e| BundleError::File {
                path: bundle.path().to_path_buf(),
                name: f.name.clone(),
                detail: format!("decompressing: {e}"),
            })?;
        check_file(bundle, f, &digest, n)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(f.mode))
            .map_err(werr)?;
        tmp.as_file().sync_all().map_err(werr)?;
        staged.push((f.name.clone(), tmp));
        Ok(())
    })?;
    Ok(staged)
}

/// Checks every file in the payload against the manifest without writing
/// anything (`mkectl bundle verify`). Returns the manifest.
pub fn verify_contents(bundle: &Bundle) -> Result<Manifest, BundleError> {
    bundle.verify_payload()?;
    let manifest = bundle.manifest()?;
    walk_files(bundle, &manifest, |f, reader| {
        let (digest, n) = copy_hashing(reader, &mut io::sink()).map_err(|e| BundleError::File {
            path: bundle.path().to_path_buf(),
            name: f.name.clone(),
            detail: format!("decompressing: {e}"),
        })?;
        check_file(bundle, f, &digest, n)
    })?;
    Ok(manifest)
}

fn check_file(bundle: &Bundle, f: &FileEntry, digest: &str, n: u64) -> Result<(), BundleError> {
    let detail = if n != f.size {
        format!("{n} bytes, manifest says {}", f.size)
    } else if digest != f.sha256 {
        format!("sha256 {digest}, manifest says {}", f.sha256)
    } else {
        return Ok(());
    };
    Err(BundleError::File {
        path: bundle.path().to_path_buf(),
        name: f.name.clone(),
        detail,
    })
}

/// Walks the payload: the manifest first (equal to `manifest`), then exactly
/// the files it lists, each once, with the size it records. Calls `visit`
/// with each file's entry and a reader of its bytes.
fn walk_files(
    bundle: &Bundle,
    manifest: &Manifest,
    mut visit: impl FnMut(&FileEntry, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut archive = bundle.archive();
    let mut entries = archive
        .entries()
        .map_err(|e| bundle.corrupt(format!("payload is not a tar archive: {e}")))?;
    let first = entries
        .next()
        .ok_or_else(|| bundle.corrupt("payload archive is empty"))?
        .map_err(|e| bundle.corrupt(format!("reading the payload archive: {e}")))?;
    if read_manifest_entry(bundle, first)? != *manifest {
        return Err(bundle.corrupt("the manifest changed between two reads"));
    }
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry =
            entry.map_err(|e| bundle.corrupt(format!("reading the payload archive: {e}")))?;
        let name = entry_name(bundle, &entry)?;
        let Some(f) = manifest.file(&name) else {
            return Err(bundle.corrupt(format!(
                "payload holds {name:?}, which the manifest does not list"
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(bundle.corrupt(format!("payload holds {name:?} twice")));
        }
        if entry.size() != f.size {
            return Err(BundleError::File {
                path: bundle.path().to_path_buf(),
                name,
                detail: format!(
                    "archive says {} bytes, manifest says {}",
                    entry.size(),
                    f.size
                ),
            });
        }
        visit(f, &mut entry)?;
    }
    for f in &manifest.files {
        if !seen.contains(&f.name) {
            return Err(bundle.corrupt(format!(
                "the manifest lists {:?} but the payload lacks it",
                f.name
            )));
        }
    }
    Ok(())
}

/// Copies `r` into `w` while hashing; returns (hex sha256, bytes).
fn copy_hashing(mut r: impl Read, w: &mut impl Write) -> io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hex::encode(ctx.finish().as_ref()), total))
}

fn lock(bin_dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, BundleError> {
    let path = bin_dir.join(LOCK_NAME);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BundleError::Write {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, source)| BundleError::Locked { path, source })
}

/// Removes temporaries a crashed extraction left behind (we hold the lock).
fn remove_leftover_temps(bin_dir: &Path) {
    let Ok(rd) = fs::read_dir(bin_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    warn!(file = %e.path().display(), "removed a leftover of an interrupted extraction")
                }
                Err(err) => warn!(file = %e.path().display(), "cannot remove leftover: {err}"),
            }
        }
    }
}

/// Removes files an earlier bundle staged that this one no longer carries,
/// but only while they still hold the bytes that bundle put there: a file
/// an operator replaced is theirs and stays.
fn remove_dropped(bin_dir: &Path, manifest: &Manifest) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(raw) = fs::read(bin_dir.join(RECORD_NAME)) else {
        return removed;
    };
    let Ok(previous) = Manifest::from_json(&raw) else {
        warn!(
            record = %bin_dir.join(RECORD_NAME).display(),
            "unreadable record of the previous bundle; not removing anything it staged"
        );
        return removed;
    };
    for old in &previous.files {
        if manifest.file(&old.name).is_some() {
            continue;
        }
        let path: PathBuf = bin_dir.join(&old.name);
        if is_up_to_date(&path, old) {
            match fs::remove_file(&path) {
                Ok(()) => {
                    info!(file = %old.name, version = %old.version, "removed: no longer in the bundle");
                    removed.push(old.name.clone());
                }
                Err(e) => {
                    warn!(file = %path.display(), "cannot remove a file the bundle dropped: {e}")
                }
            }
        } else if path.exists() {
            info!(file = %old.name, "not in the bundle any more but changed since it was staged; left in place");
        }
    }
    removed
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
