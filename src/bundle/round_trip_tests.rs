//! Bundle round trips on small inputs: `/bin/true` stands in for mkectl and
//! shell scripts for the binaries, so these run in milliseconds. The real
//! binaries and the running controller are covered by `tests/bundle.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    /// An executable script under `dir/name`.
    fn exe(&self, dir: &str, name: &str, body: &str) -> PathBuf {
        let d = self.path(dir);
        fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
    fn opts(&self, dir: &str, out: &str) -> CreateOptions {
        CreateOptions {
            from_dir: self.path(dir),
            pins: None,
            arch: "amd64".into(),
            allow_local: true,
            local_versions: BTreeMap::new(),
            require_all: false,
            mkectl: PathBuf::from("/bin/true"),
            output: self.path(out),
            compression_level: 6,
            images: Vec::new(),
        }
    }
}

/// The images dir beside a test's bin dir (as `<data-dir>/images` is).
fn images_of(bin: &Path) -> PathBuf {
    bin.with_file_name("images")
}

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Regular files in `dir` that are not mkectl's dot files.
fn binaries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

#[test]
fn create_then_extract_only_what_changed() {
    let fx = Fixture::new();
    fx.exe("in", "alpha", "echo alpha");
    fx.exe("in", "beta", "echo beta");
    let mut opts = fx.opts("in", "mkectl-bundled");
    opts.local_versions.insert("alpha".into(), "1.2.3".into());
    let report = create(&opts).unwrap();
    assert_eq!(report.manifest.files.len(), 2);
    assert!(report.missing_pins.is_empty());
    assert_eq!(report.sources["alpha"], SourceKind::Local);

    let out = fs::read(fx.path("mkectl-bundled")).unwrap();
    let image = fs::read("/bin/true").unwrap();
    assert_eq!(
        &out[..image.len()],
        &image[..],
        "the executable is copied unchanged"
    );
    assert_eq!(mode(&fx.path("mkectl-bundled")), 0o755);

    let b = Bundle::open(&fx.path("mkectl-bundled")).unwrap().unwrap();
    assert_eq!(b.image_len(), image.len() as u64);
    let m = b.manifest().unwrap();
    let alpha = m.file("alpha").unwrap();
    assert_eq!(alpha.version, "1.2.3");
    assert_eq!(alpha.origin, Origin::Local);
    assert_eq!(m.file("beta").unwrap().version, "local");
    assert_eq!(verify_contents(&b).unwrap(), m);

    // First extraction writes both, 0755 in a 0755 dir.
    let bin = fx.path("data/bin");
    let r = extract(&b, &bin, &images_of(&bin)).unwrap();
    assert_eq!(r.extracted, vec!["alpha", "beta"]);
    assert!(r.unchanged.is_empty());
    assert_eq!(
        fs::read(bin.join("alpha")).unwrap(),
        fs::read(fx.path("in/alpha")).unwrap()
    );
    assert_eq!(mode(&bin.join("alpha")), 0o755);
    assert_eq!(mode(&bin), 0o755);
    assert!(binaries(&bin).iter().all(|n| !n.starts_with(TEMP_PREFIX)));

    // Second: nothing written, mtimes unchanged.
    let before = (mtime(&bin.join("alpha")), mtime(&bin.join("beta")));
    let r = extract(&b, &bin, &images_of(&bin)).unwrap();
    assert!(r.extracted.is_empty(), "{r:?}");
    assert_eq!(r.unchanged, vec!["alpha", "beta"]);
    assert_eq!(
        before,
        (mtime(&bin.join("alpha")), mtime(&bin.join("beta")))
    );

    // A changed or loosened copy is repaired, the other left alone.
    fs::write(bin.join("beta"), "tampered").unwrap();
    fs::set_permissions(bin.join("alpha"), fs::Permissions::from_mode(0o777)).unwrap();
    let r = extract(&b, &bin, &images_of(&bin)).unwrap();
    assert_eq!(r.extracted, vec!["beta"]);
    assert_eq!(r.unchanged, vec!["alpha"]);
    assert_eq!(mode(&bin.join("alpha")), 0o755);
    assert_eq!(
        fs::read(bin.join("beta")).unwrap(),
        fs::read(fx.path("in/beta")).unwrap()
    );

    // A crashed extraction's leftover is cleaned up.
    fs::write(bin.join(format!("{TEMP_PREFIX}abc")), "half").unwrap();
    extract(&b, &bin, &images_of(&bin)).unwrap();
    assert!(!bin.join(format!("{TEMP_PREFIX}abc")).exists());

    // Same inputs, same bytes; re-bundling a bundled mkectl replaces its bundle.
    let again = create(&fx.opts("in", "again")).unwrap();
    let mut o2 = fx.opts("in", "again2");
    o2.mkectl = fx.path("mkectl-bundled");
    o2.local_versions.insert("alpha".into(), "1.2.3".into());
    create(&o2).unwrap();
    assert_eq!(
        fs::read(fx.path("again2")).unwrap(),
        out,
        "deterministic output"
    );
    assert_eq!(again.image_len, image.len() as u64);
}

#[test]
fn files_dropped_by_a_newer_bundle_are_removed_unless_changed() {
    let fx = Fixture::new();
    fx.exe("v1", "alpha", "echo 1");
    fx.exe("v1", "beta", "echo 1");
    fx.exe("v1", "gamma", "echo 1");
    fx.exe("v2", "alpha", "echo 2");
    create(&fx.opts("v1", "b1")).unwrap();
    create(&fx.opts("v2", "b2")).unwrap();
    let bin = fx.path("bin");
    extract(
        &Bundle::open(&fx.path("b1")).unwrap().unwrap(),
        &bin,
        &images_of(&bin),
    )
    .unwrap();
    // The operator replaced gamma: it is theirs now.
    fs::write(bin.join("gamma"), "#!/bin/sh\necho mine\n").unwrap();
    let r = extract(
        &Bundle::open(&fx.path("b2")).unwrap().unwrap(),
        &bin,
        &images_of(&bin),
    )
    .unwrap();
    assert_eq!(r.extracted, vec!["alpha"]);
    assert_eq!(r.removed, vec!["beta"]);
    assert_eq!(binaries(&bin), vec!["alpha", "gamma"]);
}

#[test]
fn no_footer_is_no_bundle() {
    assert!(Bundle::open(Path::new("/bin/true")).unwrap().is_none());
    let fx = Fixture::new();
    let script = fx.exe("d", "s", "true");
    assert!(Bundle::open(&script).unwrap().is_none());
    // Trailing bytes that are not a payload (some tool appended a note) are
    // not a truncated bundle.
    let mut bytes = fs::read("/bin/true").unwrap();
    bytes.extend_from_slice(b"signature: not a bundle\n");
    let p = fx.path("appended");
    fs::write(&p, &bytes).unwrap();
    assert!(Bundle::open(&p).unwrap().is_none());
}

/// A bundle built for the corruption tests, and its footer.
fn bundled(fx: &Fixture) -> (PathBuf, Footer) {
    fx.exe("in", "alpha", &"echo alpha; ".repeat(2000));
    fx.exe("in", "beta", "echo beta");
    create(&fx.opts("in", "good")).unwrap();
    let good = fx.path("good");
    let footer = *Bundle::open(&good).unwrap().unwrap().footer();
    (good, footer)
}

fn assert_refused(path: &Path, bin: &Path, want: &str) {
    let err = match Bundle::open(path) {
        Err(e) => e,
        Ok(None) => panic!("{} read as carrying no bundle", path.display()),
        Ok(Some(b)) => extract(&b, bin, &images_of(bin)).unwrap_err(),
    };
    let msg = err.to_string();
    assert!(msg.contains(want), "{msg} (wanted {want})");
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );
    assert!(!bin.exists(), "nothing may be written for a corrupt bundle");
}

#[test]
fn corrupt_bundles_are_refused_before_anything_is_written() {
    let fx = Fixture::new();
    let (good, footer) = bundled(&fx);
    let bytes = fs::read(&good).unwrap();
    let off = footer.payload_offset as usize;
    let len = footer.payload_len as usize;
    let bin = fx.path("bin");

    // A flipped byte anywhere in the payload.
    for at in [off, off + len / 2, off + len - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        let p = fx.path("flipped");
        fs::write(&p, &b).unwrap();
        assert_refused(&p, &bin, "checksum mismatch");
    }
    // Truncated: the footer is gone but bytes follow the ELF image.
    for cut in [1, 64, len / 2] {
        let p = fx.path("truncated");
        fs::write(&p, &bytes[..bytes.len() - cut]).unwrap();
        assert_refused(&p, &bin, "no bundle footer");
    }
    // Payload shortened, footer kept.
    let mut b = bytes[..off + len / 2].to_vec();
    b.extend_from_slice(&bytes[bytes.len() - 64..]);
    let p = fx.path("short");
    fs::write(&p, &b).unwrap();
    assert_refused(&p, &bin, "the file has");
    // An unknown format version.
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 16] = 9;
    let p = fx.path("v9");
    fs::write(&p, &b).unwrap();
    assert_refused(&p, &bin, "format version 9");
    // A payload overlapping the executable.
    let mut f = footer;
    f.payload_offset -= 10;
    f.payload_len += 10;
    let mut b = bytes[..bytes.len() - 64].to_vec();
    b.extend_from_slice(&f.encode());
    let p = fx.path("overlap");
    fs::write(&p, &b).unwrap();
    assert_refused(&p, &bin, "overlaps the executable");
}

/// A tar entry for [`raw_bundle`]: name and bytes.
type RawEntry<'a> = (&'a str, Vec<u8>);

/// Writes /bin/true + a payload of the given tar entries + a correct footer:
/// the payload checksum passes, so the structural checks must catch it.
fn raw_bundle(path: &Path, entries: &[RawEntry]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            // Raw name bytes: set_path would refuse "../a", which is the point.
            let raw = &mut h.as_mut_bytes()[..100];
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append(&h, &data[..]).unwrap();
        }
        tar.finish().unwrap();
    }
    let payload = gz.finish().unwrap();
    let image = fs::read("/bin/true").unwrap();
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref());
    let footer = Footer::new(image.len() as u64, payload.len() as u64, sha);
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&image).unwrap();
    f.write_all(&payload).unwrap();
    f.write_all(&footer.encode()).unwrap();
}

fn manifest_for(files: &[(&str, &[u8])]) -> Vec<u8> {
    Manifest {
        format_version: FORMAT_VERSION,
        arch: "amd64".into(),
        created_by: "test".into(),
        files: files
            .iter()
            .map(|(n, d)| FileEntry {
                name: n.to_string(),
                component: n.to_string(),
                version: "1".into(),
                sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, d).as_ref()),
                size: d.len() as u64,
                mode: 0o755,
                origin: Origin::Local,
            })
            .collect(),
        images: Vec::new(),
    }
    .to_json()
}

#[test]
fn a_well_hashed_but_inconsistent_payload_renames_nothing() {
    let fx = Fixture::new();
    let good_a = b"#!/bin/sh\necho a\n".to_vec();
    let b_data = b"#!/bin/sh\necho b\n".to_vec();
    let m = manifest_for(&[("a", &good_a), ("b", &b_data)]);
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        (
            "b differs from the manifest",
            vec![
                ("manifest.json", m.clone()),
                ("a", good_a.clone()),
                ("b", b"#!/bin/sh\necho B\n".to_vec()),
            ],
            "bundled file b: sha256",
        ),
        (
            "b missing",
            vec![("manifest.json", m.clone()), ("a", good_a.clone())],
            "lacks it",
        ),
        (
            "extra entry",
            vec![
                ("manifest.json", m.clone()),
                ("a", good_a.clone()),
                ("b", b_data.clone()),
                ("c", b"x".to_vec()),
            ],
            "does not list",
        ),
        (
            "manifest not first",
            vec![("a", good_a.clone()), ("manifest.json", m.clone())],
            "first payload entry",
        ),
        (
            "path traversal",
            vec![("manifest.json", m.clone()), ("../a", good_a.clone())],
            "plain name",
        ),
        (
            "bad manifest",
            vec![("manifest.json", b"{}".to_vec())],
            "manifest.json",
        ),
    ];
    for (what, entries, want) in cases {
        let p = fx.path("raw");
        raw_bundle(&p, &entries);
        let b = Bundle::open(&p).unwrap().unwrap();
        b.verify_payload().unwrap();
        let bin = fx.path(&format!("bin-{}", what.replace(' ', "-")));
        let msg = extract(&b, &bin, &images_of(&bin)).unwrap_err().to_string();
        assert!(msg.contains(want), "{what}: {msg} (wanted {want})");
        assert!(
            binaries(&bin).is_empty(),
            "{what}: renamed {:?}",
            binaries(&bin)
        );
        assert!(verify_contents(&b).is_err(), "{what}: verify passed");
        let temps = fs::read_dir(&bin)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(temps, 0, "{what}: temp files left");
    }
}

// ---- pinned artifacts ----

fn tgz(path: &Path, members: &[(&str, &[u8])]) {
    let f = fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.finish().unwrap();
    }
    gz.finish().unwrap();
}

fn digest_hex(alg: &'static ring::digest::Algorithm, p: &Path) -> String {
    hex::encode(ring::digest::digest(alg, &fs::read(p).unwrap()).as_ref())
}

/// Pins for a tarball (sha512) and a bare binary (sha256) in `dir`.
fn pins_for(dir: &Path, tar_sum: &str, bare_sum: &str) -> Pins {
    let yaml = format!(
        "components:
  - name: tool
    version: v1.0.0
    artifacts:
      - arch: amd64
        url: https://example.invalid/v1.0.0/tool-v1.0.0-linux-amd64.tar.gz
        sha512: \"{tar_sum}\"
        extract:
          tool-v1.0.0/tool: tool
          helper: tool-helper
  - name: single
    version: v2.0.0
    artifacts:
      - arch: amd64
        url: https://example.invalid/v2.0.0/single.amd64
        sha256: \"{bare_sum}\"
        file: single
"
    );
    Pins::from_yaml(&yaml, &dir.join("versions.yaml")).unwrap()
}

#[test]
fn pinned_artifacts_are_checked_and_unpacked() {
    let fx = Fixture::new();
    let dl = fx.path("dl");
    fs::create_dir_all(&dl).unwrap();
    let tarball = dl.join("tool-v1.0.0-linux-amd64.tar.gz");
    tgz(
        &tarball,
        &[
            ("tool-v1.0.0/tool", b"#!/bin/sh\necho tool\n"),
            ("./helper", b"#!/bin/sh\necho helper\n"),
            ("tool-v1.0.0/README", b"not bundled"),
        ],
    );
    let bare = fx.exe("dl", "single.amd64", "echo single");
    let tar_sum = digest_hex(&ring::digest::SHA512, &tarball);
    let bare_sum = digest_hex(&ring::digest::SHA256, &bare);
    let mut opts = fx.opts("dl", "out");
    opts.allow_local = false;
    opts.require_all = true;
    opts.pins = Some((dl.join("versions.yaml"), pins_for(&dl, &tar_sum, &bare_sum)));

    let r = create(&opts).unwrap();
    let names: Vec<&str> = r.manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["single", "tool", "tool-helper"]);
    let tool = r.manifest.file("tool").unwrap();
    assert_eq!(
        (tool.component.as_str(), tool.version.as_str()),
        ("tool", "v1.0.0")
    );
    assert_eq!(tool.origin, Origin::Pinned);
    assert_eq!(r.manifest.file("single").unwrap().version, "v2.0.0");
    let bin = fx.path("bin");
    extract(
        &Bundle::open(&fx.path("out")).unwrap().unwrap(),
        &bin,
        &images_of(&bin),
    )
    .unwrap();
    assert_eq!(
        fs::read(bin.join("tool-helper")).unwrap(),
        b"#!/bin/sh\necho helper\n"
    );
    assert_eq!(
        fs::read(bin.join("single")).unwrap(),
        fs::read(&bare).unwrap()
    );

    // A tampered download is refused, naming both digests.
    let wrong = "0".repeat(128);
    opts.pins = Some((dl.join("versions.yaml"), pins_for(&dl, &wrong, &bare_sum)));
    let e = create(&opts).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("sha512 mismatch") && msg.contains(&wrong) && msg.contains(&tar_sum),
        "{msg}"
    );
    assert!(!e.is_usage());

    // An empty checksum is refused.
    opts.pins = Some((dl.join("versions.yaml"), pins_for(&dl, "", &bare_sum)));
    let msg = create(&opts).unwrap_err().to_string();
    assert!(msg.contains("no checksum is pinned"), "{msg}");

    // Anything unpinned needs --allow-local.
    opts.pins = Some((dl.join("versions.yaml"), pins_for(&dl, &tar_sum, &bare_sum)));
    fx.exe("dl", "stray", "true");
    let e = create(&opts).unwrap_err();
    assert!(e.is_usage());
    assert!(e.to_string().contains("--allow-local"), "{e}");
    fs::remove_file(dl.join("stray")).unwrap();

    // require_all names what is missing.
    fs::remove_file(&bare).unwrap();
    let msg = create(&opts).unwrap_err().to_string();
    assert!(msg.contains("missing: single.amd64"), "{msg}");
    opts.require_all = false;
    let r = create(&opts).unwrap();
    assert_eq!(r.missing_pins, vec!["single.amd64"]);

    // An archive without a pinned member.
    tgz(&tarball, &[("tool-v1.0.0/tool", b"x")]);
    let tar_sum = digest_hex(&ring::digest::SHA512, &tarball);
    opts.pins = Some((dl.join("versions.yaml"), pins_for(&dl, &tar_sum, &bare_sum)));
    let msg = create(&opts).unwrap_err().to_string();
    assert!(msg.contains("lacks pinned member(s): helper"), "{msg}");
    assert!(!fx.path("out2").exists());
}

#[test]
fn local_inputs_are_validated() {
    let fx = Fixture::new();
    fx.exe("in", "alpha", "true");
    let mut opts = fx.opts("in", "out");
    opts.local_versions.insert("alpah".into(), "1".into());
    let e = create(&opts).unwrap_err();
    assert!(e.to_string().contains("alpah"), "{e}");

    let fx = Fixture::new();
    fs::create_dir_all(fx.path("in")).unwrap();
    fs::write(fx.path("in/notes.txt"), "x").unwrap();
    let e = create(&fx.opts("in", "out")).unwrap_err();
    assert!(e.to_string().contains("not executable"), "{e}");

    let fx = Fixture::new();
    fs::create_dir_all(fx.path("in")).unwrap();
    let e = create(&fx.opts("in", "out")).unwrap_err();
    assert!(e.to_string().contains("nothing to bundle"), "{e}");

    let fx = Fixture::new();
    fx.exe("in", "alpha", "true");
    let mut opts = fx.opts("in", "out");
    let script = fx.exe("x", "not-elf", "true");
    opts.mkectl = script;
    let e = create(&opts).unwrap_err();
    assert!(e.to_string().contains("not an ELF"), "{e}");
    assert!(!fx.path("out").exists());
}

#[test]
fn output_inside_the_input_directory_is_not_an_input() {
    let fx = Fixture::new();
    fx.exe("in", "alpha", "echo alpha");
    let opts = fx.opts("in", "in/mkectl-bundled");
    // Twice: the second run finds the first run's output beside the inputs.
    for _ in 0..2 {
        let report = create(&opts).unwrap();
        let names: Vec<&str> = report
            .manifest
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, vec!["alpha"]);
    }
    assert_eq!(binaries(&fx.path("in")), vec!["alpha", "mkectl-bundled"]);
    let left: Vec<_> = fs::read_dir(fx.path("in"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn source_builds_are_checked_against_their_record_and_test_only_ones_skipped() {
    let fx = Fixture::new();
    let api = fx.exe("in", "kube-apiserver", "echo apiserver");
    let peer = fx.exe("in", "proxy-server", "echo peer");
    let sum = |p: &Path| {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &fs::read(p).unwrap(),
        ))
    };
    let record = |api_sum: &str| {
        fs::write(
            fx.path("in/source-builds.tsv"),
            format!(
                "# header\nkube-apiserver\tkubernetes\tv1.32.8\t{api_sum}\tship\n\
                 proxy-server\tapiserver-network-proxy\tv0.33.0\t{}\ttest-only\n",
                sum(&peer)
            ),
        )
        .unwrap();
    };
    let mut opts = fx.opts("in", "mkectl-bundled");
    opts.allow_local = false;

    record(&sum(&api));
    let report = create(&opts).unwrap();
    assert_eq!(report.sources.len(), 1);
    assert_eq!(report.sources["kube-apiserver"], SourceKind::Source);
    let f = report.manifest.file("kube-apiserver").unwrap();
    assert_eq!(
        (f.version.as_str(), f.origin, f.sha256.as_str()),
        ("v1.32.8", Origin::Source, sum(&api).as_str())
    );

    fs::remove_file(fx.path("mkectl-bundled")).unwrap();
    record(&"0".repeat(64));
    let e = create(&opts).unwrap_err();
    let msg = e.to_string();
    assert!(!e.is_usage(), "{msg}");
    assert!(
        msg.contains(&api.display().to_string())
            && msg.contains("sha256 mismatch")
            && msg.contains("source-builds.tsv"),
        "{msg}"
    );
    assert!(!fx.path("mkectl-bundled").exists());
}

/// A small OCI archive packed from a script, at `dir/name`.
fn image_archive(fx: &Fixture, dir: &str, name: &str) -> PathBuf {
    let prog = fx.exe("img-src", "prog", "echo prog");
    let mut spec = crate::images::PackSpec::new(
        "registry.example/t/prog:1",
        vec![crate::images::FileSpec {
            source: prog,
            dest: "/prog".into(),
            mode: 0o755,
        }],
    );
    spec.entrypoint = vec!["/prog".into()];
    fs::create_dir_all(fx.path(dir)).unwrap();
    let out = fx.path(dir).join(name);
    crate::images::pack_to_file(&spec, &out).unwrap();
    out
}

#[test]
fn image_archives_ride_along_and_are_staged_into_the_images_dir() {
    let fx = Fixture::new();
    fx.exe("in", "alpha", "echo alpha");
    let archive = image_archive(&fx, "imgs", "prog.oci.tar");
    let mut opts = fx.opts("in", "mkectl-bundled");
    opts.images = vec![archive.clone()];
    let report = create(&opts).unwrap();
    assert_eq!(report.manifest.images.len(), 1);
    let entry = &report.manifest.images[0];
    assert_eq!(entry.name, "prog.oci.tar");
    assert_eq!(entry.refs, ["registry.example/t/prog:1"]);
    assert_eq!(entry.sha256, sha256_file(&archive).unwrap().0);

    let b = Bundle::open(&fx.path("mkectl-bundled")).unwrap().unwrap();
    assert_eq!(verify_contents(&b).unwrap(), report.manifest);
    let bin = fx.path("data/bin");
    let images = fx.path("data/images");
    let r = extract(&b, &bin, &images).unwrap();
    assert_eq!(r.extracted, ["alpha", "images/prog.oci.tar"]);
    let staged = images.join("prog.oci.tar");
    assert_eq!(fs::read(&staged).unwrap(), fs::read(&archive).unwrap());
    assert_eq!(mode(&staged), 0o644);
    assert_eq!(mode(&images), 0o700);
    assert_eq!(
        binaries(&bin),
        ["alpha"],
        "archives do not land among the binaries"
    );

    // Second start: nothing rewritten.
    let before = mtime(&staged);
    let r = extract(&b, &bin, &images).unwrap();
    assert!(r.extracted.is_empty(), "{r:?}");
    assert_eq!(r.unchanged, ["alpha", "images/prog.oci.tar"]);
    assert_eq!(mtime(&staged), before);

    // A bundle without it removes the staged copy; an operator's own
    // archive beside it stays.
    fs::write(images.join("mine.tar"), b"operator's").unwrap();
    create(&fx.opts("in", "mkectl-2")).unwrap();
    let r = extract(
        &Bundle::open(&fx.path("mkectl-2")).unwrap().unwrap(),
        &bin,
        &images,
    )
    .unwrap();
    assert_eq!(r.removed, ["images/prog.oci.tar"]);
    assert!(!staged.exists());
    assert!(images.join("mine.tar").exists());
}

#[test]
fn corrupt_or_misnamed_image_archives_are_refused_at_create() {
    let fx = Fixture::new();
    fx.exe("in", "alpha", "echo alpha");
    let archive = image_archive(&fx, "imgs", "prog.tar");
    let raw = fs::read(&archive).unwrap();
    let cut = fx.path("imgs/cut.tar");
    fs::write(&cut, &raw[..raw.len() / 2]).unwrap();
    let mut opts = fx.opts("in", "out");
    opts.images = vec![cut.clone()];
    let e = create(&opts).unwrap_err();
    assert!(!e.is_usage());
    let msg = crate::telemetry::Chain(&e).to_string();
    assert!(msg.contains("cut.tar") && msg.contains("--image"), "{msg}");
    assert!(!fx.path("out").exists());

    let odd = fx.path("imgs/prog.zip");
    fs::copy(&archive, &odd).unwrap();
    opts.images = vec![odd];
    let e = create(&opts).unwrap_err();
    let msg = crate::telemetry::Chain(&e).to_string();
    assert!(e.is_usage() && msg.contains(".tgz"), "{msg}");

    fs::create_dir_all(fx.path("other")).unwrap();
    let twin = fx.path("other/prog.tar");
    fs::copy(&archive, &twin).unwrap();
    opts.images = vec![archive, twin];
    let e = create(&opts).unwrap_err();
    assert!(e.to_string().contains("two archives named prog.tar"), "{e}");
}
