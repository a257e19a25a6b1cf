//! Leaf certificates: the fixed set `ensure` maintains (with the checks that
//! decide whether one must be reissued), plus on-demand issuance of client
//! certificates and CSR signing for `kubeconfig create` and joins.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, PublicKeyData, PKCS_RSA_SHA256,
    PKCS_RSA_SHA384, PKCS_RSA_SHA512,
};

use super::ca::{self, Ca, LoadedCa};
use super::error::PkiError;
use super::keys;
use super::paths::{CertKeyPaths, PkiPaths};
use super::spec::{KeyType, PkiSpec};
use super::store;
use super::subject;
use super::x509::{facts_from_pem, San};

/// The leaf certificates `ensure` maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Leaf {
    ApiServer,
    ApiServerKubeletClient,
    ApiServerEtcdClient,
    EtcdServer,
    EtcdPeer,
    FrontProxyClient,
    KonnectivityServer,
    Admin,
    ControllerManager,
    Scheduler,
    /// The node side of `controller --enable-worker`: the kubelet's client
    /// certificate (`system:node:<name>`, group `system:nodes`).
    KubeletClient,
    /// ... and the embedded konnectivity agent's client certificate.
    KonnectivityAgent,
}

impl Leaf {
    /// The leaves of every controller.
    pub const ALL: [Leaf; 10] = [
        Leaf::ApiServer,
        Leaf::ApiServerKubeletClient,
        Leaf::ApiServerEtcdClient,
        Leaf::EtcdServer,
        Leaf::EtcdPeer,
        Leaf::FrontProxyClient,
        Leaf::KonnectivityServer,
        Leaf::Admin,
        Leaf::ControllerManager,
        Leaf::Scheduler,
    ];

    /// The extra leaves of a controller that also runs the worker side
    /// ([`PkiSpec::worker`]); a worker that joined gets its own through the
    /// join instead.
    pub const WORKER: [Leaf; 2] = [Leaf::KubeletClient, Leaf::KonnectivityAgent];

    /// Every leaf `ensure` may maintain: [`Leaf::ALL`] then [`Leaf::WORKER`].
    pub fn every() -> impl Iterator<Item = Leaf> {
        Leaf::ALL.into_iter().chain(Leaf::WORKER)
    }

    /// Name in reports and `certs check-expiration`.
    pub fn name(self) -> &'static str {
        match self {
            Leaf::ApiServer => "apiserver",
            Leaf::ApiServerKubeletClient => "apiserver-kubelet-client",
            Leaf::ApiServerEtcdClient => "apiserver-etcd-client",
            Leaf::EtcdServer => "etcd-server",
            Leaf::EtcdPeer => "etcd-peer",
            Leaf::FrontProxyClient => "front-proxy-client",
            Leaf::KonnectivityServer => "konnectivity-server",
            Leaf::Admin => "admin",
            Leaf::ControllerManager => "controller-manager",
            Leaf::Scheduler => "scheduler",
            Leaf::KubeletClient => "kubelet-client",
            Leaf::KonnectivityAgent => "konnectivity-agent",
        }
    }

    /// True for its name and for the component name operators also use
    /// (`kube-apiserver` for `apiserver`, ...).
    pub fn is_named(self, n: &str) -> bool {
        let alias = match self {
            Leaf::ApiServer => Some("kube-apiserver"),
            Leaf::ControllerManager => Some("kube-controller-manager"),
            Leaf::Scheduler => Some("kube-scheduler"),
            _ => None,
        };
        self.name() == n || alias == Some(n)
    }

    /// The CA that signs this leaf.
    pub fn ca(self) -> Ca {
        match self {
            Leaf::ApiServerEtcdClient | Leaf::EtcdServer | Leaf::EtcdPeer => Ca::Etcd,
            Leaf::FrontProxyClient => Ca::FrontProxy,
            Leaf::KonnectivityServer | Leaf::KonnectivityAgent => Ca::Konnectivity,
            Leaf::KubeletClient
            | Leaf::ApiServer
            | Leaf::ApiServerKubeletClient
            | Leaf::Admin
            | Leaf::ControllerManager
            | Leaf::Scheduler => Ca::Cluster,
        }
    }
}

impl std::fmt::Display for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Extended key usage of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsage {
    /// TLS client (clientAuth).
    Client,
    /// TLS server (serverAuth).
    Server,
    /// Both, as etcd members need for serving and for dialing peers.
    ServerAndClient,
}

impl CertUsage {
    fn server(self) -> bool {
        matches!(self, CertUsage::Server | CertUsage::ServerAndClient)
    }
    fn client(self) -> bool {
        matches!(self, CertUsage::Client | CertUsage::ServerAndClient)
    }
}

/// A freshly issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// PKCS#8 PEM; never log it.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// Identity and usage a certificate must carry.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<San>,
    pub usage: CertUsage,
}

/// Common name of the admin client certificate (user of `admin.conf`).
pub(crate) const ADMIN_CN: &str = "kubernetes-admin";
const SYSTEM_MASTERS: &str = "system:masters";
/// User name prefix of a kubelet (`system:node:<node name>`).
pub(crate) const NODE_USER_PREFIX: &str = "system:node:";
/// Group of every kubelet.
pub(crate) const NODES_GROUP: &str = "system:nodes";

fn push_unique(sans: &mut Vec<San>, san: San) {
    if !sans.contains(&san) {
        sans.push(san);
    }
}

/// The identity each leaf must have for `spec`.
pub(crate) fn profile(leaf: Leaf, spec: &PkiSpec) -> Result<Profile, PkiError> {
    let localhost4 = San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let node_sans = |sans: &mut Vec<San>| -> Result<(), PkiError> {
        push_unique(sans, San::parse(&spec.node_name)?);
        for ip in &spec.node_addresses {
            push_unique(sans, San::Ip(*ip));
        }
        Ok(())
    };
    let client = |cn: &str, org: Option<&str>| Profile {
        common_name: cn.to_string(),
        organizations: org.map(|o| vec![o.to_string()]).unwrap_or_default(),
        sans: Vec::new(),
        usage: CertUsage::Client,
    };
    Ok(match leaf {
        Leaf::ApiServer => {
            let mut sans = Vec::new();
            for dns in [
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc".to_string(),
                format!("kubernetes.default.svc.{}", spec.cluster_domain),
                "localhost".to_string(),
            ] {
                push_unique(&mut sans, San::parse(&dns)?);
            }
            push_unique(&mut sans, localhost4);
            push_unique(&mut sans, San::Ip(spec.first_service_ip));
            node_sans(&mut sans)?;
            for extra in &spec.extra_sans {
                push_unique(&mut sans, San::parse(extra)?);
            }
            Profile {
                common_name: "kube-apiserver".to_string(),
                organizations: Vec::new(),
                sans,
                usage: CertUsage::Server,
            }
        }
        Leaf::EtcdServer | Leaf::EtcdPeer => {
            let mut sans = vec![
                San::Dns("localhost".to_string()),
                localhost4,
                San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ];
            node_sans(&mut sans)?;
            Profile {
                common_name: spec.node_name.trim().to_string(),
                organizations: Vec::new(),
                sans,
                usage: CertUsage::ServerAndClient,
            }
        }
        Leaf::KonnectivityServer => {
            let mut sans = Vec::new();
            node_sans(&mut sans)?;
            push_unique(&mut sans, localhost4);
            push_unique(&mut sans, San::Dns("localhost".to_string()));
            for extra in &spec.extra_sans {
                push_unique(&mut sans, San::parse(extra)?);
            }
            Profile {
                common_name: "konnectivity-server".to_string(),
                organizations: Vec::new(),
                sans,
                usage: CertUsage::Server,
            }
        }
        Leaf::ApiServerKubeletClient => {
            client("kube-apiserver-kubelet-client", Some(SYSTEM_MASTERS))
        }
        Leaf::ApiServerEtcdClient => client("kube-apiserver-etcd-client", None),
        Leaf::FrontProxyClient => client("front-proxy-client", None),
        Leaf::Admin => client(ADMIN_CN, Some(SYSTEM_MASTERS)),
        Leaf::ControllerManager => client("system:kube-controller-manager", None),
        Leaf::Scheduler => client("system:kube-scheduler", None),
        // What the Node authorizer and NodeRestriction expect of a kubelet.
        Leaf::KubeletClient => client(
            &format!("{NODE_USER_PREFIX}{}", spec.node_name.trim()),
            Some(NODES_GROUP),
        ),
        // The same identity a joined worker's agent certificate carries:
        // the node name, and its addresses as the only `host=` identifiers
        // the konnectivity server accepts from it.
        Leaf::KonnectivityAgent => {
            let mut p = client(
                &crate::join::wire::agent_common_name(spec.node_name.trim()),
                None,
            );
            for ip in &spec.node_addresses {
                push_unique(&mut p.sans, San::Ip(*ip));
            }
            p
        }
    })
}

/// Why the leaf at `files` must be (re)issued, or `None` when it is fine.
pub(crate) fn reissue_reason(
    files: &CertKeyPaths,
    want: &Profile,
    ca: &LoadedCa,
    key_type: KeyType,
    renew_before: Duration,
    now: SystemTime,
) -> Option<String> {
    let cert = match store::read_optional(&files.cert) {
        Ok(Some(c)) => c,
        Ok(None) => return Some("certificate missing".to_string()),
        Err(e) => {
            return Some(format!(
                "certificate unreadable: {}",
                crate::telemetry::Chain(&e)
            ))
        }
    };
    let facts = match facts_from_pem(&cert) {
        Ok(f) => f,
        Err(e) => {
            return Some(format!(
                "certificate unparseable: {}",
                crate::telemetry::Chain(&e)
            ))
        }
    };
    let key = match store::read_optional_string(&files.key) {
        Ok(Some(k)) => k,
        Ok(None) => return Some("private key missing".to_string()),
        Err(e) => {
            return Some(format!(
                "private key unreadable: {}",
                crate::telemetry::Chain(&e)
            ))
        }
    };
    let key = match keys::load_pem(&key) {
        Ok(k) => k,
        Err(e) => return Some(format!("private key unparseable: {e}")),
    };
    if key.public_key_raw() != facts.public_key_raw.as_slice() {
        return Some("private key does not match the certificate".to_string());
    }
    if !facts.signed_by(&ca.facts) {
        return Some(format!("not signed by the current {} CA", ca.ca));
    }
    if facts.key_type != Some(key_type) {
        return Some(format!("key type differs from the configured {key_type}"));
    }
    if facts.is_ca {
        return Some("is a CA certificate".to_string());
    }
    let want_orgs: BTreeSet<String> = want.organizations.iter().cloned().collect();
    if facts.common_name.as_deref() != Some(want.common_name.as_str())
        || facts.organizations != want_orgs
    {
        return Some(format!("subject {} no longer matches", facts.subject));
    }
    let want_sans: BTreeSet<San> = want.sans.iter().cloned().collect();
    if facts.sans != want_sans || facts.foreign_sans != 0 {
        let have: Vec<String> = facts.sans.iter().map(San::to_string).collect();
        let need: Vec<String> = want_sans.iter().map(San::to_string).collect();
        return Some(format!(
            "SANs changed (have [{}], want [{}])",
            have.join(", "),
            need.join(", ")
        ));
    }
    if facts.server_auth != want.usage.server() || facts.client_auth != want.usage.client() {
        return Some("extended key usage changed".to_string());
    }
    if facts.not_before > now + store::CLOCK_SKEW_ALLOWANCE {
        return Some(format!(
            "not valid before {} (clock went backwards?)",
            humantime::format_rfc3339_seconds(facts.not_before)
        ));
    }
    if facts.not_after <= now + renew_before {
        return Some(format!(
            "expires at {}, within the renewal window",
            humantime::format_rfc3339_seconds(facts.not_after)
        ));
    }
    None
}

/// Key usages for a leaf whose key is RSA (`rsa`) or not.
fn leaf_key_usages(rsa: bool) -> Vec<KeyUsagePurpose> {
    let mut usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        // RSA key exchange (TLS 1.2 without ECDHE) needs keyEncipherment.
        usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    usages
}

fn ekus(usage: CertUsage) -> Vec<ExtendedKeyUsagePurpose> {
    let mut out = Vec::new();
    if usage.server() {
        out.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if usage.client() {
        out.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    out
}

/// Leaf parameters for `profile` valid from `now` for `lifetime`.
fn leaf_params(
    profile: &Profile,
    rsa: bool,
    lifetime: Duration,
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = store::validity(now, lifetime)?;
    let mut dn = DistinguishedName::new();
    if let [org] = profile.organizations.as_slice() {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn.push(DnType::CommonName, profile.common_name.as_str());
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names = profile
        .sans
        .iter()
        .map(San::to_rcgen)
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = leaf_key_usages(rsa);
    params.extended_key_usages = ekus(profile.usage);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(store::random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Signs `params` for `public_key` with `ca`, applying a multi-organization
/// subject when `organizations` has more than one entry.
fn sign(
    params: &CertificateParams,
    public_key: &impl PublicKeyData,
    ca: &LoadedCa,
    common_name: &str,
    organizations: &[String],
    what: &str,
) -> Result<String, PkiError> {
    let cert = params
        .signed_by(public_key, &ca.issuer)
        .map_err(|source| PkiError::Generate {
            what: what.to_string(),
            source,
        })?;
    if organizations.len() <= 1 {
        return Ok(cert.pem());
    }
    let der = subject::replace_subject(
        cert.der(),
        &subject::encode_name(common_name, organizations),
        ca.issuer.key(),
    )
    .map_err(|e| PkiError::InvalidPem {
        what: what.to_string(),
        reason: crate::telemetry::Chain(&e).to_string(),
    })?;
    Ok(pem_encode("CERTIFICATE", &der))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Issues a certificate for `profile` with a fresh key.
pub(crate) fn issue(
    profile: &Profile,
    ca: &LoadedCa,
    key_type: KeyType,
    lifetime: Duration,
    now: SystemTime,
    what: &str,
) -> Result<IssuedCert, PkiError> {
    let key = keys::generate(key_type, what)?;
    let params = leaf_params(profile, key_type == KeyType::Rsa2048, lifetime, now)?;
    let cert_pem = sign(
        &params,
        &key,
        ca,
        &profile.common_name,
        &profile.organizations,
        what,
    )?;
    Ok(IssuedCert {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Writes an issued leaf: key first, so an interrupted write leaves a
/// mismatched pair that the next run detects and reissues.
pub(crate) fn write(files: &CertKeyPaths, issued: &IssuedCert) -> Result<(), PkiError> {
    store::write_key(&files.key, &issued.key_pem)?;
    store::write_cert(&files.cert, &issued.cert_pem)?;
    Ok(())
}

fn validate_identity(common_name: &str, organizations: &[String]) -> Result<(), PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::InvalidSpec {
            field: "common_name",
            reason: "must not be empty".to_string(),
        });
    }
    if organizations.iter().any(|o| o.trim().is_empty()) {
        return Err(PkiError::InvalidSpec {
            field: "organizations",
            reason: "must not contain empty names".to_string(),
        });
    }
    Ok(())
}

/// Issues a client certificate (clientAuth) from one of the CAs in
/// `pki_dir` with a fresh key. Each organization becomes an `O=` attribute
/// (a Kubernetes group). Nothing is written to disk.
pub fn issue_client_cert(
    pki_dir: &Path,
    ca: Ca,
    common_name: &str,
    organizations: &[String],
    lifetime: Duration,
    key_type: KeyType,
) -> Result<IssuedCert, PkiError> {
    issue_client_cert_at(
        pki_dir,
        ca,
        common_name,
        organizations,
        lifetime,
        key_type,
        SystemTime::now(),
    )
}

/// [`issue_client_cert`] at a given time (tests).
pub fn issue_client_cert_at(
    pki_dir: &Path,
    ca: Ca,
    common_name: &str,
    organizations: &[String],
    lifetime: Duration,
    key_type: KeyType,
    now: SystemTime,
) -> Result<IssuedCert, PkiError> {
    validate_identity(common_name, organizations)?;
    let loaded = ca::load_existing(&PkiPaths::new(pki_dir), ca, now)?;
    let profile = Profile {
        common_name: common_name.to_string(),
        organizations: organizations.to_vec(),
        sans: Vec::new(),
        usage: CertUsage::Client,
    };
    let issued = issue(
        &profile,
        &loaded,
        key_type,
        lifetime,
        now,
        &format!("client certificate {common_name}"),
    )?;
    tracing::info!(
        component = super::COMPONENT,
        ca = ca.name(),
        common_name,
        "issued client certificate"
    );
    Ok(issued)
}

/// Issues a serving certificate (serverAuth) from one of the CAs in
/// `pki_dir` with a fresh key, for listeners whose certificate is kept in
/// memory and reissued by their owner (the join API). `sans` are IP
/// addresses or DNS names. Nothing is written to disk.
pub fn issue_server_cert(
    pki_dir: &Path,
    ca: Ca,
    common_name: &str,
    sans: &[String],
    lifetime: Duration,
    key_type: KeyType,
) -> Result<IssuedCert, PkiError> {
    validate_identity(common_name, &[])?;
    let now = SystemTime::now();
    let loaded = ca::load_existing(&PkiPaths::new(pki_dir), ca, now)?;
    let mut parsed = Vec::new();
    for s in sans {
        push_unique(&mut parsed, San::parse(s)?);
    }
    let profile = Profile {
        common_name: common_name.to_string(),
        organizations: Vec::new(),
        sans: parsed,
        usage: CertUsage::Server,
    };
    let issued = issue(
        &profile,
        &loaded,
        key_type,
        lifetime,
        now,
        &format!("serving certificate {common_name}"),
    )?;
    tracing::info!(
        component = super::COMPONENT,
        ca = ca.name(),
        common_name,
        "issued serving certificate"
    );
    Ok(issued)
}

/// What a certificate signing request asks for (its signature verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    /// `DNS:<name>` / `IP:<addr>` entries.
    pub sans: Vec<String>,
    /// The requester's key type; callers decide which they sign.
    pub key_type: CsrKeyType,
}

/// The public key type of a CSR. Only those whose signature can be checked
/// (ring) get past [`inspect_csr`]; others are refused naming their type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
    Ed25519,
}

impl std::fmt::Display for CsrKeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsrKeyType::EcdsaP256 => f.write_str("ECDSA P-256"),
            CsrKeyType::EcdsaP384 => f.write_str("ECDSA P-384"),
            CsrKeyType::Rsa { bits } => write!(f, "RSA-{bits}"),
            CsrKeyType::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// The key type of a CSR's SubjectPublicKeyInfo, or a description of one
/// that cannot be checked (`ECDSA P-521`, `Ed448`, an unknown OID).
fn csr_key_type(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<CsrKeyType, UnsupportedKey> {
    use x509_parser::public_key::PublicKey;
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let m = rsa.modulus;
            let first = m.iter().position(|b| *b != 0).unwrap_or(m.len());
            let lead = m.get(first).map_or(0, |b| 8 - b.leading_zeros() as usize);
            Ok(CsrKeyType::Rsa {
                bits: (m.len() - first).saturating_sub(1) * 8 + lead,
            })
        }
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(CsrKeyType::EcdsaP256),
                "1.3.132.0.34" => Ok(CsrKeyType::EcdsaP384),
                "1.3.132.0.35" => Err(UnsupportedKey("ECDSA P-521".into())),
                other => Err(UnsupportedKey(format!("ECDSA on curve {other}"))),
            }
        }
        _ if alg == "1.3.101.112" => Ok(CsrKeyType::Ed25519),
        _ if alg == "1.3.101.113" => Err(UnsupportedKey("Ed448".into())),
        _ if alg == "1.2.840.10040.4.1" => Err(UnsupportedKey("DSA".into())),
        _ => Err(UnsupportedKey(format!("key algorithm {alg}"))),
    }
}

/// A CSR key mkectl does not sign for; the text names the key type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UnsupportedKey(String);

struct ParsedCsr {
    params: CertificateSigningRequestParams,
    common_name: String,
    organizations: Vec<String>,
    sans: Vec<San>,
    key_type: CsrKeyType,
}

fn parse_csr(csr_pem: &str) -> Result<ParsedCsr, PkiError> {
    use x509_parser::prelude::{FromDer, X509CertificationRequest};
    let csr_err = |reason: String| PkiError::Csr { reason };
    // x509-parser reads the key type first, so a key whose signature cannot
    // be checked is refused as such, not as a bad signature...
    let der = x509_parser::pem::Pem::iter_from_buffer(csr_pem.as_bytes())
        .filter_map(Result::ok)
        .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
        .map(|b| b.contents)
        .ok_or_else(|| csr_err("no CERTIFICATE REQUEST block".to_string()))?;
    let (_, req) = X509CertificationRequest::from_der(&der).map_err(|e| csr_err(e.to_string()))?;
    let key_type = csr_key_type(&req.certification_request_info.subject_pki)
        .map_err(|k| csr_err(format!("its key type, {k}, is not supported")))?;
    // ...then rcgen verifies the request's signature and extracts key and
    // SANs, but keeps one value per subject attribute, so the subject (which
    // may name several organizations = groups) is read with x509-parser.
    let params =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| csr_err(e.to_string()))?;
    let subject = &req.certification_request_info.subject;
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| csr_err("the request has no common name".to_string()))?;
    let organizations = subject
        .iter_organization()
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| csr_err(format!("organization is not a string: {e}")))?;
    let mut sans = Vec::new();
    for san in &params.params.subject_alt_names {
        match san {
            rcgen::SanType::DnsName(d) => sans.push(San::parse(d.as_str())?),
            rcgen::SanType::IpAddress(ip) => sans.push(San::Ip(*ip)),
            other => {
                return Err(csr_err(format!(
                    "unsupported subject alternative name {other:?}"
                )))
            }
        }
    }
    Ok(ParsedCsr {
        params,
        common_name,
        organizations,
        sans,
        key_type,
    })
}

/// Parses and verifies a CSR so the caller can check the identity it asks
/// for before signing it.
pub fn inspect_csr(csr_pem: &str) -> Result<CsrInfo, PkiError> {
    let parsed = parse_csr(csr_pem)?;
    Ok(CsrInfo {
        common_name: Some(parsed.common_name),
        organizations: parsed.organizations,
        sans: parsed.sans.iter().map(San::to_string).collect(),
        key_type: parsed.key_type,
    })
}

/// Signs a CSR with one of the CAs in `pki_dir`: the subject and DNS/IP SANs
/// are taken from the request; everything else (CA flag, key usages,
/// validity, serial) is set here, whatever the request asked. Returns the
/// certificate PEM. The requester's private key never leaves the requester.
pub fn sign_csr(
    pki_dir: &Path,
    ca: Ca,
    csr_pem: &str,
    lifetime: Duration,
    usage: CertUsage,
) -> Result<String, PkiError> {
    sign_csr_at(pki_dir, ca, csr_pem, lifetime, usage, SystemTime::now())
}

/// [`sign_csr`], adding `extra_sans` (IP addresses or DNS names the signer
/// vouches for, e.g. the address a worker joined with) to the request's.
pub fn sign_csr_adding_sans(
    pki_dir: &Path,
    ca: Ca,
    csr_pem: &str,
    lifetime: Duration,
    usage: CertUsage,
    extra_sans: &[String],
) -> Result<String, PkiError> {
    sign_csr_inner(
        pki_dir,
        ca,
        csr_pem,
        lifetime,
        usage,
        extra_sans,
        SystemTime::now(),
    )
}

/// [`sign_csr`] at a given time (tests).
pub fn sign_csr_at(
    pki_dir: &Path,
    ca: Ca,
    csr_pem: &str,
    lifetime: Duration,
    usage: CertUsage,
    now: SystemTime,
) -> Result<String, PkiError> {
    sign_csr_inner(pki_dir, ca, csr_pem, lifetime, usage, &[], now)
}

fn sign_csr_inner(
    pki_dir: &Path,
    ca: Ca,
    csr_pem: &str,
    lifetime: Duration,
    usage: CertUsage,
    extra_sans: &[String],
    now: SystemTime,
) -> Result<String, PkiError> {
    let parsed = parse_csr(csr_pem)?;
    let loaded = ca::load_existing(&PkiPaths::new(pki_dir), ca, now)?;
    let mut sans = parsed.sans.clone();
    for s in extra_sans {
        push_unique(&mut sans, San::parse(s)?);
    }
    let profile = Profile {
        common_name: parsed.common_name.clone(),
        organizations: parsed.organizations.clone(),
        sans,
        usage,
    };
    let alg = parsed.params.public_key.algorithm();
    let rsa = alg == &PKCS_RSA_SHA256 || alg == &PKCS_RSA_SHA384 || alg == &PKCS_RSA_SHA512;
    let params = leaf_params(&profile, rsa, lifetime, now)?;
    let what = format!("certificate for CSR {}", parsed.common_name);
    let cert = sign(
        &params,
        &parsed.params.public_key,
        &loaded,
        &profile.common_name,
        &profile.organizations,
        &what,
    )?;
    tracing::info!(
        component = super::COMPONENT,
        ca = ca.name(),
        common_name = %parsed.common_name,
        "signed certificate signing request"
    );
    Ok(cert)
}
