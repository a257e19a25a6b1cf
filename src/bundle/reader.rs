//! Opening a bundled mkectl: footer, payload checksum, manifest, entries.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::footer::{Footer, FOOTER_LEN, FORMAT_VERSION};
use super::manifest::{Manifest, IMAGES_PREFIX, MANIFEST_NAME, MAX_MANIFEST_BYTES};
use super::{elf, sha256_reader, BundleError};

/// First bytes of a gzip member (deflate method), i.e. of every payload.
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// A file (normally the running mkectl) that carries a bundle.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    file: File,
    footer: Footer,
}

/// A `Read` over `[pos, end)` of a file, by positional reads (no shared
/// cursor, so several readers may exist at once).
pub(super) struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while reading the bundle",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

pub(super) type PayloadArchive<'a> = tar::Archive<GzDecoder<BufReader<Section<'a>>>>;

impl Bundle {
    /// The bundle appended to the running executable, if any. Errors name
    /// the executable's path.
    pub fn open_self() -> Result<Option<Self>, BundleError> {
        let shown = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        // /proc/self/exe is the file we were started from, even if the path
        // has since been replaced (an upgrade in progress).
        let file = File::open("/proc/self/exe").map_err(|source| BundleError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_file(shown, file)
    }

    /// The bundle appended to `path`, if any. `Ok(None)` when the file ends
    /// without a footer and nothing follows its ELF image.
    pub fn open(path: &Path) -> Result<Option<Self>, BundleError> {
        let file = File::open(path).map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_file(path.to_path_buf(), file)
    }

    fn from_file(path: PathBuf, file: File) -> Result<Option<Self>, BundleError> {
        let rerr = |source| BundleError::Read {
            path: path.clone(),
            source,
        };
        let corrupt = |detail: String| BundleError::Corrupt {
            path: path.clone(),
            detail,
        };
        let len = file.metadata().map_err(rerr)?.len();
        let image_end = elf::image_end(&file).map_err(rerr)?;
        let footer = if len >= FOOTER_LEN {
            let mut raw = [0u8; FOOTER_LEN as usize];
            file.read_exact_at(&mut raw, len - FOOTER_LEN)
                .map_err(rerr)?;
            Footer::decode(&raw)
        } else {
            None
        };
        let Some(footer) = footer else {
            // A payload starts right at the end of the image with the gzip
            // magic; finding one there without a footer means the file was
            // cut. Other trailing bytes (added by some packaging tool) are
            // not ours: no bundle.
            if let Some(end) = image_end.filter(|end| len > *end) {
                let mut magic = [0u8; 3];
                if file.read_exact_at(&mut magic, end).is_ok() && magic == GZIP_MAGIC {
                    return Err(corrupt(format!(
                        "{} bytes of payload follow the executable image (which ends at byte \
                         {end}) but there is no bundle footer at the end of the file",
                        len - end
                    )));
                }
            }
            return Ok(None);
        };
        if footer.format_version != FORMAT_VERSION {
            return Err(BundleError::UnsupportedVersion {
                path,
                found: footer.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if footer.reserved != 0 {
            return Err(corrupt("the footer's reserved field is not zero".into()));
        }
        let expected_len = footer
            .payload_offset
            .checked_add(footer.payload_len)
            .and_then(|v| v.checked_add(FOOTER_LEN));
        if expected_len != Some(len) {
            return Err(corrupt(format!(
                "the footer places the payload at bytes {}..+{} but the file has {len} bytes",
                footer.payload_offset, footer.payload_len
            )));
        }
        if footer.payload_len == 0 {
            return Err(corrupt("the payload is empty".into()));
        }
        if let Some(end) = image_end {
            if footer.payload_offset < end {
                return Err(corrupt(format!(
                    "the payload (offset {}) overlaps the executable image (ends at {end})",
                    footer.payload_offset
                )));
            }
        }
        Ok(Some(Self { path, file, footer }))
    }

    /// The file the bundle was read from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Length of the mkectl executable without the bundle.
    pub fn image_len(&self) -> u64 {
        self.footer.payload_offset
    }

    fn payload(&self) -> Section<'_> {
        Section {
            file: &self.file,
            pos: self.footer.payload_offset,
            end: self.footer.payload_offset + self.footer.payload_len,
        }
    }

    /// Hashes the whole payload and compares it with the footer. Nothing may
    /// be extracted before this succeeded.
    pub fn verify_payload(&self) -> Result<(), BundleError> {
        let (actual, n) = sha256_reader(self.payload()).map_err(|source| BundleError::Read {
            path: self.path.clone(),
            source,
        })?;
        debug_assert_eq!(n, self.footer.payload_len);
        let expected = self.footer.sha256_hex();
        if actual != expected {
            return Err(BundleError::PayloadChecksum {
                path: self.path.clone(),
                expected,
                actual,
            });
        }
        Ok(())
    }

    pub(super) fn archive(&self) -> PayloadArchive<'_> {
        tar::Archive::new(GzDecoder::new(BufReader::with_capacity(
            1 << 16,
            self.payload(),
        )))
    }

    pub(super) fn corrupt(&self, detail: impl Into<String>) -> BundleError {
        BundleError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// Reads and validates the manifest (the first payload entry) without
    /// decompressing anything else. Does not check the payload checksum:
    /// callers that act on the contents call [`Bundle::verify_payload`] first.
    pub fn manifest(&self) -> Result<Manifest, BundleError> {
        let mut archive = self.archive();
        let mut entries = archive
            .entries()
            .map_err(|e| self.corrupt(format!("payload is not a tar archive: {e}")))?;
        let first = entries
            .next()
            .ok_or_else(|| self.corrupt("payload archive is empty"))?
            .map_err(|e| self.corrupt(format!("reading the payload archive: {e}")))?;
        read_manifest_entry(self, first)
    }
}

/// Validates that `entry` is the manifest and parses it.
pub(super) fn read_manifest_entry<R: Read>(
    bundle: &Bundle,
    mut entry: tar::Entry<'_, R>,
) -> Result<Manifest, BundleError> {
    let name = entry_name(bundle, &entry)?;
    if name != MANIFEST_NAME {
        return Err(bundle.corrupt(format!(
            "the first payload entry is {name:?}, not {MANIFEST_NAME}"
        )));
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(bundle.corrupt(format!(
            "{MANIFEST_NAME} is {} bytes (limit {MAX_MANIFEST_BYTES})",
            entry.size()
        )));
    }
    let mut raw = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut raw)
        .map_err(|e| bundle.corrupt(format!("reading {MANIFEST_NAME}: {e}")))?;
    Manifest::from_json(&raw).map_err(|e| bundle.corrupt(crate::telemetry::Chain(&e).to_string()))
}

/// The entry's name, which must be a regular file with a plain name, or a
/// plain name under [`IMAGES_PREFIX`] (an image archive).
pub(super) fn entry_name<R: Read>(
    bundle: &Bundle,
    entry: &tar::Entry<'_, R>,
) -> Result<String, BundleError> {
    let ty = entry.header().entry_type();
    let path = entry
        .path()
        .map_err(|e| bundle.corrupt(format!("unreadable entry name: {e}")))?;
    let name = path.to_str().unwrap_or("").to_string();
    if !ty.is_file() {
        return Err(bundle.corrupt(format!(
            "payload entry {name:?} is not a regular file ({ty:?})"
        )));
    }
    let plain = name.strip_prefix(IMAGES_PREFIX).unwrap_or(&name);
    if plain.is_empty() || plain.contains('/') {
        return Err(bundle.corrupt(format!("payload entry name {path:?} is not a plain name")));
    }
    Ok(name)
}
