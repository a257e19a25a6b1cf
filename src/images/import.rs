//! Importing `<data-dir>/images/` into containerd at worker start.
//!
//! For each archive (file names ending in `.tar`, `.tar.gz` or `.tgz`, in
//! name order; dot files, which are copies in progress, and other names are
//! left alone):
//!
//! 1. read it completely ([`archive::inspect`]): format, image names and
//!    digests, integrity. A defect is logged with the file name and the
//!    archive is skipped; the others go on.
//! 2. compare with what containerd's `k8s.io` namespace holds (its Images
//!    API): an OCI-layout image is present when an image of that name points
//!    at the same digest; a docker-archive image (whose manifest containerd
//!    writes itself) when CRI reports the same image ID (config digest) for
//!    that name. An archive whose images are all present is skipped.
//! 3. otherwise stream it (gunzip'd when gzip'd) into `ctr images import
//!    --all-platforms -`, then read back and log every name with the digest
//!    containerd now holds.
//!
//! Then the sandbox image (see [`super::pause`]): unless an archive supplied
//! it, mkectl's pause program is packed under the configured name and
//! imported the same way, skipped when already present by digest.
//!
//! Nothing here stops the worker: every failure is logged and reported, and
//! kubelet starts with whatever was imported. `ctr` does the importing
//! because it ships with every containerd (Debian's package and the pinned
//! release in the bundle) and its importer is containerd's own.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::{debug, error, info, warn};

use super::archive::{self, ArchiveInfo};
use super::{is_archive_name, pause, ImagesError};
use crate::containerd::ContainerdClient;

/// The containerd namespace CRI (so kubelet) uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// Bound on importing one archive (a multi-GiB archive on a slow disk).
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Bound on one containerd API call.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of ctr's output an error quotes.
const MAX_CTR_OUTPUT: usize = 2000;
/// `component` field of every log line.
const COMPONENT: &str = "images";

/// Where to import from and into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSettings {
    pub images_dir: PathBuf,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The `ctr` binary.
    pub ctr: PathBuf,
    pub namespace: String,
    /// The sandbox image to provide; None = leave it to containerd.
    pub sandbox: Option<SandboxSettings>,
    pub archive_timeout: Duration,
}

/// The sandbox image and what to pack it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// `spec.worker.sandboxImage` (containerd's `sandbox_image`).
    pub name: String,
    /// mkectl's pause program, if found.
    pub pause_binary: Option<PathBuf>,
}

impl ImportSettings {
    pub fn new(images_dir: &Path, socket: &Path, ctr: &Path) -> Self {
        Self {
            images_dir: images_dir.to_path_buf(),
            socket: socket.to_path_buf(),
            ctr: ctr.to_path_buf(),
            namespace: K8S_NAMESPACE.into(),
            sandbox: None,
            archive_timeout: ARCHIVE_TIMEOUT,
        }
    }
}

/// One image containerd holds after an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub name: String,
    /// The image's target digest in containerd.
    pub digest: String,
}

/// An archive that was imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedArchive {
    pub file: String,
    pub images: Vec<ImportedImage>,
}

/// What became of the sandbox image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SandboxOutcome {
    /// No sandbox image was asked for.
    #[default]
    NotManaged,
    /// An archive in the images dir carries it (named here).
    FromArchive(String),
    /// Packed from the pause program; `imported` false when containerd
    /// already had it by digest.
    Packed { digest: String, imported: bool },
    /// No pause program, but containerd already has an image of that name.
    AlreadyPresent,
    /// Not in containerd, nothing to make it from: containerd will try to
    /// pull it for the first pod.
    Missing,
    /// Packing or importing it failed (the reason).
    Failed(String),
}

/// Everything one run did, by file name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    pub imported: Vec<ImportedArchive>,
    /// Archives whose images containerd already held by digest.
    pub already_present: Vec<String>,
    /// Archives that could not be imported, with the reason.
    pub failed: Vec<(String, String)>,
    /// Files in the images dir that are not archive names.
    pub ignored: Vec<String>,
    pub sandbox: SandboxOutcome,
}

/// Images containerd holds: name → target digest.
type Present = BTreeMap<String, String>;

/// Imports the images dir and provides the sandbox image; see the module
/// docs. `progress` is told what is being done (for the readiness probe).
pub async fn import_dir(
    settings: &ImportSettings,
    progress: &(dyn Fn(String) + Sync),
) -> ImportReport {
    let started = Instant::now();
    let mut report = ImportReport::default();
    let (archives, ignored) = match list_archives(&settings.images_dir) {
        Ok(v) => v,
        Err(e) => {
            error!(component = COMPONENT, dir = %settings.images_dir.display(), error = %crate::telemetry::Chain(&e), "cannot list the images dir; importing nothing from it");
            (Vec::new(), Vec::new())
        }
    };
    for name in &ignored {
        info!(component = COMPONENT, file = %name, "ignored: not an image archive name (.tar, .tar.gz, .tgz)");
    }
    report.ignored = ignored;

    let mut client = match ContainerdClient::connect(&settings.socket, API_TIMEOUT).await {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot ask containerd which images it has; importing everything");
            None
        }
    };
    let mut present = list_present(&mut client, &settings.namespace).await;
    // Which archive (imported or already present) carries each name.
    let mut provided_by: BTreeMap<String, String> = BTreeMap::new();

    let total = archives.len();
    for (i, path) in archives.iter().enumerate() {
        let file = file_name(path);
        progress(format!("importing image archive {}/{total}: {file}", i + 1));
        let inspected = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || archive::inspect(&p)).await
        };
        let info = match inspected {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                error!(component = COMPONENT, file = %file, error = %crate::telemetry::Chain(&e), "skipped: corrupt or unsupported image archive");
                report
                    .failed
                    .push((file, crate::telemetry::Chain(&e).to_string()));
                continue;
            }
            Err(e) => {
                error!(component = COMPONENT, file = %file, error = %crate::telemetry::Chain(&e), "skipped: reading the archive failed");
                report
                    .failed
                    .push((file, crate::telemetry::Chain(&e).to_string()));
                continue;
            }
        };
        debug!(component = COMPONENT, file = %file, format = %info.format, gzip = info.gzip, images = ?info.names(), "archive read");
        if all_present(&info, &present, &mut client).await {
            info!(component = COMPONENT, file = %file, images = ?info.names(), "already present by digest; skipped");
            for n in info.names() {
                provided_by.insert(n.to_string(), file.clone());
            }
            report.already_present.push(file);
            continue;
        }
        let t0 = Instant::now();
        match ctr_import(settings, Source::File(path.clone())).await {
            Ok(()) => {
                present = list_present(&mut client, &settings.namespace).await;
                let mut images = Vec::new();
                for n in info.names() {
                    match present.get(n) {
                        Some(d) => {
                            info!(component = COMPONENT, file = %file, image = %n, digest = %d, elapsed_ms = t0.elapsed().as_millis() as u64, "imported");
                            images.push(ImportedImage {
                                name: n.to_string(),
                                digest: d.clone(),
                            });
                            provided_by.insert(n.to_string(), file.clone());
                        }
                        None => {
                            warn!(component = COMPONENT, file = %file, image = %n, "ctr reported success but containerd has no image of that name")
                        }
                    }
                }
                if info.names().is_empty() {
                    info!(component = COMPONENT, file = %file, "imported (the archive names no image)");
                }
                report.imported.push(ImportedArchive { file, images });
            }
            Err(e) => {
                error!(component = COMPONENT, file = %file, error = %crate::telemetry::Chain(&e), "skipped: import failed");
                report
                    .failed
                    .push((file, crate::telemetry::Chain(&e).to_string()));
            }
        }
    }

    if let Some(sandbox) = &settings.sandbox {
        progress(format!("providing the sandbox image {}", sandbox.name));
        report.sandbox =
            provide_sandbox(settings, sandbox, &provided_by, &mut present, &mut client).await;
    }
    info!(
        component = COMPONENT,
        imported = report.imported.len(),
        already_present = report.already_present.len(),
        failed = report.failed.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "image archives: imported {}, already present {}, failed {}",
        report.imported.len(),
        report.already_present.len(),
        report.failed.len()
    );
    report
}

/// The archives in `dir` in name order, and the other file names there.
/// A missing dir holds nothing.
fn list_archives(dir: &Path) -> io::Result<(Vec<PathBuf>, Vec<String>)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut archives = Vec::new();
    let mut ignored = Vec::new();
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks: an archive may live elsewhere.
        let is_file = std::fs::metadata(e.path()).is_ok_and(|m| m.is_file());
        if is_file && is_archive_name(&name) {
            archives.push(e.path());
        } else {
            ignored.push(name);
        }
    }
    archives.sort();
    ignored.sort();
    Ok((archives, ignored))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Name → target digest of every image in `namespace`; empty (everything
/// will be imported) when containerd cannot be asked.
async fn list_present(client: &mut Option<ContainerdClient>, namespace: &str) -> Present {
    let Some(c) = client.as_mut() else {
        return Present::new();
    };
    match tokio::time::timeout(API_TIMEOUT, c.images(namespace)).await {
        Ok(Ok(images)) => images
            .into_iter()
            .filter_map(|i| i.target.map(|t| (i.name, t.digest)))
            .collect(),
        Ok(Err(e)) => {
            warn!(component = COMPONENT, error = %crate::telemetry::Chain(&e), "cannot list containerd's images; treating none as present");
            Present::new()
        }
        Err(_) => {
            warn!(
                component = COMPONENT,
                "listing containerd's images timed out; treating none as present"
            );
            Present::new()
        }
    }
}

/// True when containerd holds every image of the archive by digest.
async fn all_present(
    info: &ArchiveInfo,
    present: &Present,
    client: &mut Option<ContainerdClient>,
) -> bool {
    for img in &info.images {
        let ok = match (&img.name, &img.digest, &img.config_digest) {
            // OCI layout: the target digest is known in advance.
            (Some(name), Some(digest), _) => present.get(name) == Some(digest),
            (None, Some(digest), _) => present.values().any(|d| d == digest),
            // Docker archive: compare the image ID CRI reports.
            (Some(name), None, Some(config)) => {
                present.contains_key(name)
                    && cri_image_id(client, name).await.as_ref() == Some(config)
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

async fn cri_image_id(client: &mut Option<ContainerdClient>, name: &str) -> Option<String> {
    let c = client.as_mut()?;
    match tokio::time::timeout(API_TIMEOUT, c.cri_image_status(name)).await {
        Ok(Ok(img)) => img.map(|i| i.id),
        Ok(Err(e)) => {
            debug!(component = COMPONENT, image = %name, error = %crate::telemetry::Chain(&e), "CRI image status failed");
            None
        }
        Err(_) => None,
    }
}

/// What `ctr images import` reads.
enum Source {
    /// An archive file (gunzip'd on the way when gzip'd).
    File(PathBuf),
    /// An archive in memory (the pause image).
    Bytes(Vec<u8>, String),
}

impl Source {
    fn label(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Bytes(_, name) => PathBuf::from(name),
        }
    }
}

/// Streams `source` into `ctr images import --all-platforms -`, bounded by
/// the archive timeout (ctr is killed when it passes).
async fn ctr_import(settings: &ImportSettings, source: Source) -> Result<(), ImagesError> {
    let label = source.label();
    let fail = |detail: String| ImagesError::Import {
        path: label.clone(),
        detail,
    };
    let mut child = tokio::process::Command::new(&settings.ctr)
        .arg("--address")
        .arg(&settings.socket)
        .arg("--namespace")
        .arg(&settings.namespace)
        .args(["images", "import", "--all-platforms", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", settings.ctr.display())))?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(fail("ctr has no stdin".into()));
    };

    // The archive is read (and gunzip'd) on a blocking thread and handed
    // over in chunks; dropping the receiver stops it.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut r: Box<dyn Read + Send> = match source {
            Source::File(p) => match archive::open_tar_stream(&p) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            },
            Source::Bytes(b, _) => Box::new(io::Cursor::new(b)),
        };
        loop {
            let mut buf = vec![0u8; 1 << 20];
            match r.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let feed = async move {
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| format!("reading the archive: {e}"))?;
            if let Err(e) = stdin.write_all(&chunk).await {
                // ctr stopped reading: its own error says why.
                return Err(format!("ctr stopped reading: {e}"));
            }
        }
        drop(stdin);
        Ok::<(), String>(())
    };
    let run = async { tokio::join!(feed, child.wait_with_output()) };
    let (fed, output) = match tokio::time::timeout(settings.archive_timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            reader.abort();
            return Err(fail(format!(
                "did not finish within {:?}; ctr was killed",
                settings.archive_timeout
            )));
        }
    };
    let _ = reader.await;
    let output = output.map_err(|e| fail(format!("waiting for ctr: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines().chain(stderr.lines()) {
        debug!(component = COMPONENT, file = %label.display(), "ctr: {line}");
    }
    if !output.status.success() {
        return Err(fail(format!("{}: {}", output.status, tail(&stderr))));
    }
    if let Err(e) = fed {
        // ctr succeeded on a stream that broke off: do not trust it.
        return Err(fail(e));
    }
    Ok(())
}

/// The last [`MAX_CTR_OUTPUT`] bytes of `s`, trimmed.
fn tail(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_CTR_OUTPUT {
        return s.to_string();
    }
    let mut start = s.len() - MAX_CTR_OUTPUT;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

async fn provide_sandbox(
    settings: &ImportSettings,
    sandbox: &SandboxSettings,
    provided_by: &BTreeMap<String, String>,
    present: &mut Present,
    client: &mut Option<ContainerdClient>,
) -> SandboxOutcome {
    let name = match super::reference::normalize(&sandbox.name) {
        Ok(n) => n,
        Err(e) => {
            error!(component = COMPONENT, sandbox_image = %sandbox.name, error = %e, "the sandbox image name is not a reference");
            return SandboxOutcome::Failed(e.to_string());
        }
    };
    if let Some(file) = provided_by.get(&name) {
        info!(component = COMPONENT, sandbox_image = %name, file = %file, "sandbox image provided by an archive in the images dir");
        return SandboxOutcome::FromArchive(file.clone());
    }
    let Some(binary) = &sandbox.pause_binary else {
        if present.contains_key(&name) {
            info!(component = COMPONENT, sandbox_image = %name, "no pause program found; the sandbox image containerd already has is used");
            return SandboxOutcome::AlreadyPresent;
        }
        warn!(
            component = COMPONENT,
            sandbox_image = %name,
            "the sandbox image is not in containerd and no pause program was found (--bin-dir or <data-dir>/bin/{}): containerd will try to pull it for the first pod; put an archive of it into the images dir",
            pause::PAUSE_BINARY
        );
        return SandboxOutcome::Missing;
    };
    let packed = {
        let (n, b) = (name.clone(), binary.clone());
        tokio::task::spawn_blocking(move || pause::pack(&n, &b)).await
    };
    let (bytes, packed) = match packed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            error!(component = COMPONENT, sandbox_image = %name, pause = %binary.display(), error = %crate::telemetry::Chain(&e), "cannot pack the sandbox image");
            return SandboxOutcome::Failed(crate::telemetry::Chain(&e).to_string());
        }
        Err(e) => return SandboxOutcome::Failed(e.to_string()),
    };
    // pack() of an OCI layout always yields the manifest digest.
    let Some(digest) = packed.manifest_digest else {
        return SandboxOutcome::Failed("packed without a manifest digest".into());
    };
    if present.get(&name) == Some(&digest) {
        info!(component = COMPONENT, sandbox_image = %name, %digest, "sandbox image already present by digest; skipped");
        return SandboxOutcome::Packed {
            digest,
            imported: false,
        };
    }
    let size = bytes.len();
    if let Err(e) = ctr_import(
        settings,
        Source::Bytes(bytes, format!("sandbox image {name}")),
    )
    .await
    {
        error!(component = COMPONENT, sandbox_image = %name, error = %crate::telemetry::Chain(&e), "cannot import the sandbox image");
        return SandboxOutcome::Failed(crate::telemetry::Chain(&e).to_string());
    }
    *present = list_present(client, &settings.namespace).await;
    match present.get(&name) {
        Some(d) if *d == digest => {
            info!(component = COMPONENT, sandbox_image = %name, %digest, bytes = size, pause = %binary.display(), "imported the sandbox image (mkectl's pause)");
            SandboxOutcome::Packed {
                digest,
                imported: true,
            }
        }
        other => {
            let detail =
                format!("after the import containerd has {name} at {other:?}, not {digest}");
            error!(component = COMPONENT, sandbox_image = %name, "{detail}");
            SandboxOutcome::Failed(detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn lists_archives_in_order_and_names_the_rest() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "b.tar",
            "a.tgz",
            "c.tar.gz",
            "notes.txt",
            ".mkectl-extract-x",
            "z.zip",
        ] {
            fs::write(d.path().join(f), b"").unwrap();
        }
        fs::create_dir(d.path().join("sub.tar")).unwrap();
        let (archives, ignored) = list_archives(d.path()).unwrap();
        let names: Vec<String> = archives.iter().map(|p| file_name(p)).collect();
        assert_eq!(names, ["a.tgz", "b.tar", "c.tar.gz"]);
        assert_eq!(ignored, ["notes.txt", "sub.tar", "z.zip"]);
        let (a, i) = list_archives(&d.path().join("absent")).unwrap();
        assert!(a.is_empty() && i.is_empty());
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("  short \n"), "short");
        let long = format!("{}END", "é".repeat(MAX_CTR_OUTPUT));
        let t = tail(&long);
        assert!(t.starts_with("...") && t.ends_with("END"));
        assert!(t.len() <= MAX_CTR_OUTPUT + 3);
    }

    #[tokio::test]
    async fn without_containerd_archives_fail_by_name_and_nothing_panics() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("images");
        fs::create_dir(&images).unwrap();
        fs::write(images.join("broken.tar"), b"not an archive at all").unwrap();
        let mut s = ImportSettings::new(
            &images,
            &d.path().join("no.sock"),
            Path::new("/nonexistent/ctr"),
        );
        s.sandbox = Some(SandboxSettings {
            name: "registry.k8s.io/pause:3.10".into(),
            pause_binary: None,
        });
        let seen = std::sync::Mutex::new(Vec::new());
        let r = import_dir(&s, &|m| seen.lock().unwrap().push(m)).await;
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "broken.tar");
        assert!(r.failed[0].1.contains("broken.tar"), "{}", r.failed[0].1);
        assert_eq!(r.sandbox, SandboxOutcome::Missing);
        let seen = seen.into_inner().unwrap();
        assert!(seen[0].contains("1/1: broken.tar"), "{seen:?}");
    }
}
