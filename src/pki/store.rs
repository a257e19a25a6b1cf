//! On-disk store: reading optional PEM files and writing keys (0600) and
//! certificates (0644) atomically, plus the shared issuance helpers (serial
//! numbers, validity window).

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::SerialNumber;
use ring::rand::SecureRandom;
use time::OffsetDateTime;

use super::error::PkiError;
use super::paths::CertKeyPaths;
use crate::fsutil::{self, FsError, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};

/// New certificates are back-dated by this much so a node whose clock lags a
/// little behind the issuer still accepts them.
pub(crate) const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Reads a file that may legitimately be absent: `Ok(None)` when it does not
/// exist, an error naming the file for anything else.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsError::Read {
            path: path.to_path_buf(),
            source,
        }
        .into()),
    }
}

/// Reads a file as UTF-8 text (PEM), `Ok(None)` when absent.
pub(crate) fn read_optional_string(path: &Path) -> Result<Option<String>, PkiError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| PkiError::InvalidPem {
                what: path.display().to_string(),
                reason: "not UTF-8 text".to_string(),
            }),
    }
}

pub(crate) fn write_key(path: &Path, pem: &str) -> Result<bool, PkiError> {
    Ok(fsutil::write_atomic(
        path,
        pem.as_bytes(),
        PRIVATE_FILE_MODE,
    )?)
}

pub(crate) fn write_cert(path: &Path, pem: &str) -> Result<bool, PkiError> {
    Ok(fsutil::write_atomic(
        path,
        pem.as_bytes(),
        PUBLIC_FILE_MODE,
    )?)
}

/// Forces 0600 on a key and 0644 on its certificate (no content change, so
/// no mtime change).
pub(crate) fn enforce_modes(files: &CertKeyPaths) -> Result<(), PkiError> {
    fsutil::set_mode(&files.key, PRIVATE_FILE_MODE)?;
    fsutil::set_mode(&files.cert, PUBLIC_FILE_MODE)?;
    Ok(())
}

/// A random positive 128-bit serial number.
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate {
            what: "serial number".to_string(),
            source: rcgen::Error::RingUnspecified,
        })?;
    // Positive and of fixed length: clear the sign bit, set the next one.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The validity window of a certificate issued at `now` for `lifetime`,
/// in whole seconds (X.509 times have second precision). Back-dated by
/// [`CLOCK_SKEW_ALLOWANCE`].
pub(crate) fn validity(
    now: SystemTime,
    lifetime: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let out_of_range = || PkiError::InvalidSpec {
        field: "lifetime",
        reason: "certificate validity would fall outside the years 1970..9999".to_string(),
    };
    let to_odt = |t: SystemTime| -> Result<OffsetDateTime, PkiError> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| out_of_range())?
            .as_secs();
        let secs = i64::try_from(secs).map_err(|_| out_of_range())?;
        OffsetDateTime::from_unix_timestamp(secs).map_err(|_| out_of_range())
    };
    let not_before = now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now);
    let not_after = now.checked_add(lifetime).ok_or_else(out_of_range)?;
    Ok((to_odt(not_before)?, to_odt(not_after)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_backdated_and_range_checked() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (nb, na) = validity(now, Duration::from_secs(3600)).unwrap();
        assert_eq!(nb.unix_timestamp(), 1_800_000_000 - 300);
        assert_eq!(na.unix_timestamp(), 1_800_003_600);
        let huge = Duration::from_secs(20_000 * 365 * 24 * 3600);
        assert!(validity(now, huge).is_err());
    }
}
