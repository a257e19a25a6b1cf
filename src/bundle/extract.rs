//! Staging the bundled binaries into `<data-dir>/bin` and the bundled image
//! archives into `<data-dir>/images`: only what changed, every file
//! checked, nothing renamed into place until all of them are.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, info, info_span, warn};

use super::manifest::{FileEntry, ImageEntry, Manifest, IMAGES_PREFIX, IMAGE_MODE};
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

/// What an extraction did, by file name (image archives as
/// `images/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Written (missing or different before).
    pub extracted: Vec<String>,
    /// Already identical; not touched.
    pub unchanged: Vec<String>,
    /// Staged by an earlier bundle, absent from this one, and removed.
    pub removed: Vec<String>,
}

/// Stages the running executable's bundle into `<data-dir>/bin` (and its
/// image archives into `<data-dir>/images`), off the async runtime.
/// `Ok(None)` when mkectl carries no bundle.
pub async fn stage(paths: &NodePaths) -> Result<Option<ExtractReport>, BundleError> {
    let bin_dir = paths.staged_bin_dir();
    let images_dir = paths.images_dir();
    let span = info_span!("bundle", component = "bundle");
    tokio::task::spawn_blocking(move || span.in_scope(|| stage_blocking(&bin_dir, &images_dir)))
        .await?
}

/// [`stage`] for synchronous callers; logs what it did.
pub fn stage_blocking(
    bin_dir: &Path,
    images_dir: &Path,
) -> Result<Option<ExtractReport>, BundleError> {
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
    let report = extract(&bundle, bin_dir, images_dir)?;
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "bundle staged: extracted {}, unchanged {}, removed {}",
        report.extracted.len(),
        report.unchanged.len(),
        report.removed.len()
    );
    Ok(Some(report))
}

/// One thing the payload carries: a binary for `<data-dir>/bin` or an image
/// archive for `<data-dir>/images`.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    File(&'a FileEntry),
    Image(&'a ImageEntry),
}

impl Item<'_> {
    /// The payload entry name (`images/<name>` for an archive).
    fn entry(&self) -> String {
        match self {
            Item::File(f) => f.name.clone(),
            Item::Image(i) => format!("{IMAGES_PREFIX}{}", i.name),
        }
    }
    fn file_name(&self) -> &str {
        match self {
            Item::File(f) => &f.name,
            Item::Image(i) => &i.name,
        }
    }
    fn sha256(&self) -> &str {
        match self {
            Item::File(f) => &f.sha256,
            Item::Image(i) => &i.sha256,
        }
    }
    fn size(&self) -> u64 {
        match self {
            Item::File(f) => f.size,
            Item::Image(i) => i.size,
        }
    }
    fn mode(&self) -> u32 {
        match self {
            Item::File(f) => f.mode,
            Item::Image(_) => IMAGE_MODE,
        }
    }
    fn version(&self) -> &str {
        match self {
            Item::File(f) => &f.version,
            Item::Image(_) => "-",
        }
    }
}

/// Where `it` is staged.
fn dir_for<'d>(it: &Item<'_>, bin_dir: &'d Path, images_dir: &'d Path) -> &'d Path {
    match it {
        Item::File(_) => bin_dir,
        Item::Image(_) => images_dir,
    }
}

/// The item for a payload entry name.
fn item<'a>(manifest: &'a Manifest, entry: &str) -> Option<Item<'a>> {
    match entry.strip_prefix(IMAGES_PREFIX) {
        Some(name) => manifest.image(name).map(Item::Image),
        None => manifest.file(entry).map(Item::File),
    }
}

fn items(manifest: &Manifest) -> impl Iterator<Item = Item<'_>> {
    manifest
        .files
        .iter()
        .map(Item::File)
        .chain(manifest.images.iter().map(Item::Image))
}

/// Extracts `bundle`: binaries into `bin_dir`, image archives into
/// `images_dir` (created only when the bundle carries archives). The
/// payload checksum is verified before anything is written; then every file
/// whose copy is missing or differs is written to a temporary file, checked
/// against the manifest, and renamed into place only once all of them
/// passed. Files already identical keep their bytes and mtime.
pub fn extract(
    bundle: &Bundle,
    bin_dir: &Path,
    images_dir: &Path,
) -> Result<ExtractReport, BundleError> {
    bundle.verify_payload()?;
    let manifest = bundle.manifest()?;

    fsutil::ensure_dir(bin_dir, BIN_MODE)?;
    let _lock = lock(bin_dir)?;
    remove_leftover_temps(bin_dir);
    if !manifest.images.is_empty() {
        fsutil::ensure_dir(images_dir, fsutil::PRIVATE_DIR_MODE)?;
        remove_leftover_temps(images_dir);
    }
    let dir_of = |it: &Item<'_>| dir_for(it, bin_dir, images_dir);

    let mut report = ExtractReport::default();
    let mut needed: BTreeMap<String, Item<'_>> = BTreeMap::new();
    for it in items(&manifest) {
        let target = dir_of(&it).join(it.file_name());
        if is_up_to_date(&target, it.size(), it.sha256()) {
            fsutil::set_mode(&target, it.mode())?;
            debug!(file = %it.entry(), version = %it.version(), "up to date");
            report.unchanged.push(it.entry());
        } else {
            needed.insert(it.entry(), it);
        }
    }

    if !needed.is_empty() {
        let staged = write_temps(bundle, &manifest, &needed, bin_dir, images_dir)?;
        for (entry, tmp) in staged {
            let it = needed[entry.as_str()];
            let target = dir_of(&it).join(it.file_name());
            tmp.persist(&target).map_err(|e| BundleError::Write {
                path: target.clone(),
                source: e.error,
            })?;
            info!(file = %entry, version = %it.version(), sha256 = %it.sha256(), "extracted");
            report.extracted.push(entry);
        }
        sync_dir(bin_dir);
        if !manifest.images.is_empty() {
            sync_dir(images_dir);
        }
    }

    report.removed = remove_dropped(bin_dir, images_dir, &manifest);
    fsutil::write_atomic(
        &bin_dir.join(RECORD_NAME),
        &manifest.to_json(),
        fsutil::PUBLIC_FILE_MODE,
    )?;
    Ok(report)
}

/// A regular file (not a symlink) with the manifest's size and digest.
fn is_up_to_date(target: &Path, size: u64, sha256: &str) -> bool {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() && m.len() == size => {}
        _ => return false,
    }
    matches!(sha256_file(target), Ok((digest, _)) if digest == sha256)
}

/// Decompresses the needed items into verified temporary files in their
/// directories. On any error the temporaries are dropped (deleted) and
/// nothing is renamed.
fn write_temps<'m>(
    bundle: &Bundle,
    manifest: &'m Manifest,
    needed: &BTreeMap<String, Item<'m>>,
    bin_dir: &Path,
    images_dir: &Path,
) -> Result<Vec<(String, tempfile::NamedTempFile)>, BundleError> {
    let mut staged = Vec::new();
    walk_files(bundle, manifest, |it, reader| {
        if !needed.contains_key(&it.entry()) {
            return Ok(()); // up to date; the tar reader skips its data
        }
        let dir = dir_for(&it, bin_dir, images_dir);
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
            .map_err(|source| BundleError::Write {
                path: dir.to_path_buf(),
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
                name: it.entry(),
                detail: format!("decompressing: {e}"),
            })?;
        check_file(bundle, it, &digest, n)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(it.mode()))
            .map_err(werr)?;
        tmp.as_file().sync_all().map_err(werr)?;
        staged.push((it.entry(), tmp));
        Ok(())
    })?;
    Ok(staged)
}

/// Checks every file in the payload against the manifest without writing
/// anything (`mkectl bundle verify`). Returns the manifest.
pub fn verify_contents(bundle: &Bundle) -> Result<Manifest, BundleError> {
    bundle.verify_payload()?;
    let manifest = bundle.manifest()?;
    walk_files(bundle, &manifest, |it, reader| {
        let (digest, n) = copy_hashing(reader, &mut io::sink()).map_err(|e| BundleError::File {
            path: bundle.path().to_path_buf(),
            name: it.entry(),
            detail: format!("decompressing: {e}"),
        })?;
        check_file(bundle, it, &digest, n)
    })?;
    Ok(manifest)
}

fn check_file(bundle: &Bundle, it: Item<'_>, digest: &str, n: u64) -> Result<(), BundleError> {
    let detail = if n != it.size() {
        format!("{n} bytes, manifest says {}", it.size())
    } else if digest != it.sha256() {
        format!("sha256 {digest}, manifest says {}", it.sha256())
    } else {
        return Ok(());
    };
    Err(BundleError::File {
        path: bundle.path().to_path_buf(),
        name: it.entry(),
        detail,
    })
}

/// Walks the payload: the manifest first (equal to `manifest`), then exactly
/// the files and image archives it lists, each once, with the size it
/// records. Calls `visit` with each item and a reader of its bytes.
fn walk_files<'m>(
    bundle: &Bundle,
    manifest: &'m Manifest,
    mut visit: impl FnMut(Item<'m>, &mut dyn Read) -> Result<(), BundleError>,
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
        let Some(it) = item(manifest, &name) else {
            return Err(bundle.corrupt(format!(
                "payload holds {name:?}, which the manifest does not list"
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(bundle.corrupt(format!("payload holds {name:?} twice")));
        }
        if entry.size() != it.size() {
            return Err(BundleError::File {
                path: bundle.path().to_path_buf(),
                name,
                detail: format!(
                    "archive says {} bytes, manifest says {}",
                    entry.size(),
                    it.size()
                ),
            });
        }
        visit(it, &mut entry)?;
    }
    for it in items(manifest) {
        if !seen.contains(&it.entry()) {
            return Err(bundle.corrupt(format!(
                "the manifest lists {:?} but the payload lacks it",
                it.entry()
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

/// Removes files (binaries and image archives) an earlier bundle staged
/// that this one no longer carries, but only while they still hold the
/// bytes that bundle put there: a file an operator replaced is theirs and
/// stays.
fn remove_dropped(bin_dir: &Path, images_dir: &Path, manifest: &Manifest) -> Vec<String> {
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
    for old in items(&previous) {
        if item(manifest, &old.entry()).is_some() {
            continue;
        }
        let path: PathBuf = dir_for(&old, bin_dir, images_dir).join(old.file_name());
        if is_up_to_date(&path, old.size(), old.sha256()) {
            match fs::remove_file(&path) {
                Ok(()) => {
                    info!(file = %old.entry(), version = %old.version(), "removed: no longer in the bundle");
                    removed.push(old.entry());
                }
                Err(e) => {
                    warn!(file = %path.display(), "cannot remove a file the bundle dropped: {e}")
                }
            }
        } else if path.exists() {
            info!(file = %old.entry(), "not in the bundle any more but changed since it was staged; left in place");
        }
    }
    removed
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
