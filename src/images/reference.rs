//! Image references as containerd and the CRI store them: fully qualified
//! (`registry.k8s.io/pause:3.10`, `docker.io/library/busybox:latest`).
//!
//! kubelet asks CRI for `busybox` and CRI looks up
//! `docker.io/library/busybox:latest`, so an image imported under any other
//! spelling is invisible to pods. `mkectl images pack --name` therefore
//! normalises what it is given, and the importer normalises docker-archive
//! `RepoTags` the way containerd's importer does, to compare like with like.

/// The registry of references without one.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The repository prefix of single-component names on [`DEFAULT_DOMAIN`].
pub const OFFICIAL_PREFIX: &str = "library/";
/// The tag of references with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a name is not an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{name:?}: empty or longer than 255 characters")]
    Length { name: String },
    /// `problem` describes the digest part; it is a finding about the name,
    /// not a failure that caused this one, so it is in the message.
    #[error("{name:?}: {problem}")]
    Digest { name: String, problem: BadDigest },
    #[error("{name:?}: tag {tag:?} is not valid")]
    Tag { name: String, tag: String },
    #[error("{name:?}: registry {registry:?} is not valid")]
    Registry { name: String, registry: String },
    #[error("{name:?}: repository {path:?} is not valid (lowercase letters, digits and . _ - separators)")]
    Repository { name: String, path: String },
}

/// A digest that is not `sha256:<64 lowercase hex digits>`.
#[derive(Debug, thiserror::Error)]
#[error("digest {digest:?} is not sha256:<64 lowercase hex digits>")]
pub struct BadDigest {
    pub digest: String,
}

/// `name` in its fully qualified form, or why it is not an image reference.
/// Follows the distribution reference grammar: lowercase path components of
/// `[a-z0-9]` joined by `.`, `_`, `__` or `-`; an optional domain (the first
/// component when it holds a `.` or `:` or is `localhost`); an optional tag
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; an optional `@sha256:<64 hex>`.
pub fn normalize(name: &str) -> Result<String, ReferenceError> {
    let name_ = || name.to_string();
    if name.is_empty() || name.len() > 255 {
        return Err(ReferenceError::Length { name: name_() });
    }
    let (rest, digest) = match name.split_once('@') {
        Some((r, d)) => {
            check_digest(d).map_err(|problem| ReferenceError::Digest {
                name: name_(),
                problem,
            })?;
            (r, Some(d))
        }
        None => (name, None),
    };
    // A tag is after the last ':' that follows the last '/' (a ':' before it
    // is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(ReferenceError::Tag {
                name: name_(),
                tag: t.to_string(),
            });
        }
    }
    let (domain, path) = match repo.split_once('/') {
        Some((first, path))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            if !valid_domain(first) {
                return Err(ReferenceError::Registry {
                    name: name_(),
                    registry: first.to_string(),
                });
            }
            (first.to_string(), path.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), repo.to_string()),
    };
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(ReferenceError::Repository {
            name: name_(),
            path,
        });
    }
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path
    };
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => {
            out.push(':');
            out.push_str(DEFAULT_TAG);
        }
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    Ok(out)
}

/// True when `name` is already fully qualified (what [`normalize`] returns
/// for it is itself).
pub fn is_normalized(name: &str) -> bool {
    normalize(name).is_ok_and(|n| n == name)
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn check_digest(d: &str) -> Result<(), BadDigest> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(())
        }
        _ => Err(BadDigest {
            digest: d.to_string(),
        }),
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+` groups joined by one of `.`, `_`, `__`, or one or more `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let sep_start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("mkectl/busybox:test", "docker.io/mkectl/busybox:test"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            (
                "registry.k8s.io/coredns/coredns:v1.11.3",
                "registry.k8s.io/coredns/coredns:v1.11.3",
            ),
            ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
            ("localhost/x:y", "localhost/x:y"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
            ),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "my-reg.example:443/team/app_x:v1.0-rc_1",
                "my-reg.example:443/team/app_x:v1.0-rc_1",
            ),
        ] {
            assert_eq!(normalize(given).unwrap(), want, "{given}");
            assert!(is_normalized(want), "{want}");
        }
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            normalize(&format!("r.io/x:1@{d}")).unwrap(),
            format!("r.io/x:1@{d}")
        );
        assert!(!is_normalized("busybox"));
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for bad in [
            "",
            "Busybox",
            "a b",
            "x:",
            "x:-tag",
            "/x",
            "x/",
            "a//b",
            "r.io/x@sha256:abc",
            "r.io/x@md5:aaaa",
            "a..b",
            "-a",
            "bad_domain.example:port/x",
            &"x".repeat(256),
        ] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
