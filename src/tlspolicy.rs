//! The one TLS policy mkectl gives the upstream components it configures
//! (kube-apiserver, controller-manager, scheduler, kubelet, etcd): TLS 1.2
//! at least, and for TLS 1.2 only ECDHE key exchange with AEAD ciphers.
//! TLS 1.3 suites are not configurable in Go and are all strong. mkectl's
//! own listeners use rustls, whose defaults are already within this policy.

/// `--tls-min-version` (kube components) / `tlsMinVersion` (kubelet config).
pub const MIN_VERSION: &str = "VersionTLS12";

/// The allowed TLS 1.2 suites, in Go's `crypto/tls` names (what the kube
/// components take).
pub const CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// [`CIPHER_SUITES`] comma-separated, for a `--tls-cipher-suites` flag.
pub fn cipher_suites_flag() -> String {
    CIPHER_SUITES.join(",")
}

/// The same suites in etcd 3.4's names (its table predates Go's
/// `_SHA256` suffix on the ChaCha20 suites), for `--cipher-suites`.
pub fn etcd_cipher_suites_flag() -> String {
    CIPHER_SUITES
        .iter()
        .map(|s| {
            s.strip_suffix("_POLY1305_SHA256")
                .map_or_else(|| s.to_string(), |p| format!("{p}_POLY1305"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_gets_the_same_suites_in_its_own_names() {
        assert_eq!(
            etcd_cipher_suites_flag(),
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
        );
        assert!(CIPHER_SUITES.iter().all(|s| s.starts_with("TLS_ECDHE_")));
        assert!(!cipher_suites_flag().contains("CBC"));
    }
}
