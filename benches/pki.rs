//! Full PKI generation time, ECDSA P-256 vs RSA-2048, and the cost of an
//! idempotent (no-op) `ensure`. Run: `cargo bench --bench pki`.
//! Target: a full ECDSA PKI in under 100 ms (release).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use mkectl::pki::{self, KeyType, PkiSpec};

const ECDSA_RUNS: usize = 20;
const RSA_RUNS: usize = 3;
const NOOP_RUNS: usize = 50;

fn spec(dir: &std::path::Path, key_type: KeyType) -> PkiSpec {
    let mut s = PkiSpec::new(dir.join("pki"), "bench-node");
    s.key_type = key_type;
    s.node_addresses = vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))];
    s.extra_sans = vec!["api.example.test".into()];
    s
}

/// Mean and min milliseconds of `runs` full generations into fresh dirs.
fn full_generation(key_type: KeyType, runs: usize) -> (f64, f64) {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let tmp = tempfile::tempdir().expect("temp dir");
        let spec = spec(tmp.path(), key_type);
        let start = Instant::now();
        let report = pki::ensure(&spec).expect("ensure");
        times.push(start.elapsed());
        assert_eq!(report.created.len(), 15, "not a full PKI: {report:?}");
    }
    stats(&times)
}

fn stats(times: &[Duration]) -> (f64, f64) {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mean = times.iter().map(ms).sum::<f64>() / times.len() as f64;
    let min = times.iter().map(ms).fold(f64::INFINITY, f64::min);
    (mean, min)
}

fn main() {
    // Warm-up (page cache, first-use initialisation).
    full_generation(KeyType::EcdsaP256, 1);

    let (ecdsa_mean, ecdsa_min) = full_generation(KeyType::EcdsaP256, ECDSA_RUNS);
    let (rsa_mean, rsa_min) = full_generation(KeyType::Rsa2048, RSA_RUNS);

    let tmp = tempfile::tempdir().expect("temp dir");
    let noop_spec = spec(tmp.path(), KeyType::EcdsaP256);
    pki::ensure(&noop_spec).expect("ensure");
    let mut noop = Vec::with_capacity(NOOP_RUNS);
    for _ in 0..NOOP_RUNS {
        let start = Instant::now();
        let report = pki::ensure(&noop_spec).expect("ensure");
        noop.push(start.elapsed());
        assert!(
            report.is_unchanged(),
            "second ensure changed something: {report:?}"
        );
    }
    let (noop_mean, noop_min) = stats(&noop);

    println!("pki bench (15 items: 4 CAs, 10 leaves, sa key pair + 3 kubeconfigs)");
    println!(
        "  full PKI, ECDSA P-256 : {ecdsa_mean:8.2} ms mean, {ecdsa_min:8.2} ms min ({ECDSA_RUNS} runs; target < 100 ms: {})",
        if ecdsa_mean < 100.0 { "met" } else { "MISSED" }
    );
    println!(
        "  full PKI, RSA-2048    : {rsa_mean:8.2} ms mean, {rsa_min:8.2} ms min ({RSA_RUNS} runs)"
    );
    println!("  no-op second ensure   : {noop_mean:8.2} ms mean, {noop_min:8.2} ms min ({NOOP_RUNS} runs, ECDSA)");
    println!("  ratio RSA / ECDSA     : {:8.1}x", rsa_mean / ecdsa_mean);
    println!("  ratio ECDSA / no-op   : {:8.1}x", ecdsa_mean / noop_mean);
}
