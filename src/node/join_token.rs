//! The join token a node was given (`--token` or `--token-file`), read only
//! when a first join needs it: a node that already joined ignores it, and
//! a node whose data dir is locked by another mkectl says so first.

use std::path::{Path, PathBuf};

use super::NodeError;
use crate::join::{JoinError, JoinToken, Role};

/// Largest token file read (a token is well under 1 KiB per controller).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Where the token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `--token` (or `MKECTL_TOKEN`).
    Inline(String),
    /// `--token-file`.
    File(PathBuf),
}

impl TokenSource {
    /// Decodes the token and checks it is for role `want`; every failure is
    /// bad usage (exit 64) naming the flag (and the file).
    pub fn read(&self, want: Role) -> Result<JoinToken, NodeError> {
        let token = match self {
            Self::Inline(text) => {
                JoinToken::decode(text).map_err(|e| NodeError::Usage(format!("--token: {e}")))?
            }
            Self::File(path) => read_file(path)?,
        };
        if token.role != want {
            let e = JoinError::WrongRole {
                have: token.role,
                want,
                what: if want == Role::Controller {
                    "`mkectl controller --token-file`"
                } else {
                    "`mkectl worker`"
                },
            };
            return Err(NodeError::Usage(e.to_string()));
        }
        Ok(token)
    }
}

/// Reads a token file, at most [`MAX_TOKEN_FILE_BYTES`].
fn read_file(path: &Path) -> Result<JoinToken, NodeError> {
    let cannot = |e: String| NodeError::Usage(format!("--token-file {}: {e}", path.display()));
    let bytes = std::fs::File::open(path)
        .and_then(|f| crate::fsutil::read_at_most(f, MAX_TOKEN_FILE_BYTES))
        .map_err(|e| cannot(format!("cannot read: {e}")))?
        .ok_or_else(|| {
            cannot(format!(
                "larger than {MAX_TOKEN_FILE_BYTES} bytes; not a join token"
            ))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8 text".into()))?;
    JoinToken::decode(&text).map_err(|e| cannot(e.to_string()))
}
