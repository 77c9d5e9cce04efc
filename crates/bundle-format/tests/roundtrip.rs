//! Pack real folders, read the bundles back, unpack them, compare.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use bundle_format::pack::{LEVEL_BUILD_KEY, PackOptions, pack_to_path};
use bundle_format::{Bundle, Codec, EntryKind, FormatError};
use proptest::prelude::*;

const STUB: &[u8] = b"\x7fELF-not-really-a-stub";

fn options(codec: Codec) -> PackOptions {
    PackOptions {
        name: "demo".into(),
        version: "1.2.3".into(),
        entry: "bin/demo".into(),
        args: vec!["start".into()],
        codec,
        level: 3,
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: vec![("packer".into(), "test".into())],
        portable: None,
        env: Vec::new(),
    }
}

/// A release folder with nested dirs, exec bits, in-tree symlinks, an empty
/// dir and a long path.
fn sample_release(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("lib/app-1.0/ebin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("bin/demo"), "#!/bin/sh\necho demo\n").unwrap();
    fs::set_permissions(root.join("bin/demo"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("lib/app-1.0/ebin/app.beam"), vec![7u8; 100_000]).unwrap();
    symlink("../bin/demo", root.join("lib/demo-link")).unwrap();
    symlink("app-1.0", root.join("lib/app")).unwrap();
    let deep = root.join("lib").join("x".repeat(120)).join("y".repeat(120));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("z".repeat(100)), "deep").unwrap();
}

/// path -> (kind, exec bit, contents or link target)
fn snapshot(root: &Path) -> BTreeMap<String, (char, bool, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let exec = meta.permissions().mode() & 0o100 != 0;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(
                    rel,
                    ('l', false, target.to_string_lossy().as_bytes().to_vec()),
                );
            } else if meta.is_dir() {
                out.insert(rel, ('d', false, Vec::new()));
                stack.push(path);
            } else {
                out.insert(rel, ('f', exec, fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn pack_dir(
    src: &Path,
    out: &Path,
    opts: &PackOptions,
) -> Result<bundle_format::pack::PackReport, FormatError> {
    pack_to_path(src, STUB, opts, out, &mut |_| {})
}

#[test]
fn pack_then_unpack_gives_the_same_tree_for_each_codec() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("release");
        sample_release(&src);
        let out = work.path().join("demo.bundle");
        let report = pack_dir(&src, &out, &options(codec)).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(report.bundle_len, bytes.len() as u64);
        assert!(bytes.starts_with(STUB));
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let bundle = Bundle::open(&bytes).unwrap();
        let manifest = bundle.manifest();
        assert_eq!(
            (manifest.name.as_str(), manifest.version.as_str()),
            ("demo", "1.2.3")
        );
        assert_eq!(manifest.args, ["start"]);
        assert_eq!(manifest.codec, codec);
        assert_eq!(manifest.build_value(LEVEL_BUILD_KEY), Some("3"));
        assert_eq!(manifest.file_count, snapshot(&src).len() as u64);
        bundle.verify_payload().unwrap();

        let index = bundle.index().unwrap();
        let demo = index.entries.iter().find(|e| e.path == "bin/demo").unwrap();
        assert_eq!((demo.kind, demo.mode), (EntryKind::File, 0o755));

        let dest = work.path().join("unpacked");
        fs::create_dir(&dest).unwrap();
        let stats = bundle.unpack_verified(&dest).unwrap();
        assert_eq!(stats.entries(), manifest.file_count);
        assert_eq!(snapshot(&dest), snapshot(&src), "{codec}");
    }
}

#[test]
fn the_manifest_records_the_level_actually_used() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    let out = work.path().join("demo.bundle");
    for (codec, asked, used) in [(Codec::Gzip, 99, "9"), (Codec::Zstd, 0, "1")] {
        let mut opts = options(codec);
        opts.level = asked;
        // A caller's own record of the level does not override the packer's.
        opts.build.push((LEVEL_BUILD_KEY.into(), "wrong".into()));
        pack_dir(&src, &out, &opts).unwrap();
        let bytes = fs::read(&out).unwrap();
        let bundle = Bundle::open(&bytes).unwrap();
        let build = &bundle.manifest().build;
        let levels: Vec<_> = build.iter().filter(|(k, _)| k == LEVEL_BUILD_KEY).collect();
        assert_eq!(levels, [&(LEVEL_BUILD_KEY.to_owned(), used.to_owned())]);
        assert!(
            build.is_sorted(),
            "build facts are sorted by key: {build:?}"
        );
    }
}

#[test]
fn packing_is_deterministic_even_after_touching_files() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    let a = work.path().join("a");
    let b = work.path().join("b");
    pack_dir(&src, &a, &options(Codec::Gzip)).unwrap();
    // New mtimes and a different (but still non-exec) mode must not matter.
    let beam = src.join("lib/app-1.0/ebin/app.beam");
    fs::write(&beam, vec![7u8; 100_000]).unwrap();
    fs::set_permissions(&beam, fs::Permissions::from_mode(0o600)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    pack_dir(&src, &b, &options(Codec::Gzip)).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
}

#[test]
fn source_date_epoch_changes_only_the_mtimes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    let mut opts = options(Codec::Gzip);
    opts.mtime = 1_700_000_000;
    let out = work.path().join("b");
    pack_dir(&src, &out, &opts).unwrap();
    let bytes = fs::read(&out).unwrap();
    let bundle = Bundle::open(&bytes).unwrap();
    let mut archive = tar::Archive::new(bundle.tar_stream().unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
        assert_eq!(entry.header().uid().unwrap(), 0);
        assert_eq!(entry.header().username().unwrap(), Some(""));
    }
}

#[test]
fn unpackable_folders_are_refused_with_the_reason() {
    use std::os::unix::net::UnixListener;
    type Setup = Box<dyn Fn(&Path, &mut PackOptions)>;
    let cases: Vec<(&str, Setup, &str)> = vec![
        (
            "missing folder",
            Box::new(|src, _| fs::remove_dir_all(src).unwrap()),
            "no such folder",
        ),
        (
            "escaping symlink",
            Box::new(|src, _| symlink("../../etc/passwd", src.join("bin/evil")).unwrap()),
            "escapes",
        ),
        (
            "absolute symlink",
            Box::new(|src, _| symlink("/etc/passwd", src.join("bin/evil")).unwrap()),
            "absolute",
        ),
        (
            "fifo",
            Box::new(|src, _| {
                let status = std::process::Command::new("mkfifo")
                    .arg(src.join("fifo"))
                    .status()
                    .unwrap();
                assert!(status.success());
            }),
            "fifos",
        ),
        (
            "socket",
            Box::new(|src, _| {
                let _ = UnixListener::bind(src.join("sock")).unwrap();
            }),
            "sockets",
        ),
        (
            "missing entry",
            Box::new(|_, o| o.entry = "bin/nope".into()),
            "does not exist",
        ),
        (
            "entry not executable",
            Box::new(|src, _| {
                fs::set_permissions(src.join("bin/demo"), fs::Permissions::from_mode(0o644))
                    .unwrap()
            }),
            "chmod +x",
        ),
        (
            "entry is a folder",
            Box::new(|_, o| o.entry = "bin".into()),
            "folder",
        ),
        (
            "bad name",
            Box::new(|_, o| o.name = "my app".into()),
            "name",
        ),
        (
            "relative cache dir",
            Box::new(|_, o| o.default_cache_dir = Some("rel".into())),
            "absolute",
        ),
    ];
    for (what, setup, expected) in cases {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("release");
        sample_release(&src);
        let mut opts = options(Codec::Gzip);
        setup(&src, &mut opts);
        let out = work.path().join("out.bundle");
        let err = pack_dir(&src, &out, &opts).expect_err(what);
        assert!(err.to_string().contains(expected), "{what}: {err}");
        // Nothing half-written is left next to the output.
        let leftovers: Vec<_> = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "release")
            .collect();
        assert!(leftovers.is_empty(), "{what}: left {leftovers:?}");
    }
}

#[test]
fn entry_may_be_an_in_tree_symlink_to_an_executable() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    symlink("demo", src.join("bin/run")).unwrap();
    let mut opts = options(Codec::Gzip);
    opts.entry = "bin/run".into();
    pack_dir(&src, &work.path().join("out"), &opts).unwrap();
}

#[test]
fn a_flipped_payload_byte_is_a_digest_mismatch_and_the_tree_is_not_trusted() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    let out = work.path().join("b");
    pack_dir(&src, &out, &options(Codec::Zstd)).unwrap();
    let mut bytes = fs::read(&out).unwrap();
    let bundle = Bundle::open(&bytes).unwrap();
    let range = bundle.layout().trailer.payload.clone();
    let middle = (range.start + range.end) / 2;
    bytes[middle as usize] ^= 0x40;
    let bundle = Bundle::open(&bytes).unwrap();
    let dest = work.path().join("t");
    fs::create_dir(&dest).unwrap();
    assert!(matches!(
        bundle.unpack_verified(&dest),
        Err(FormatError::DigestMismatch { section: "payload" })
    ));
}

/// A release whose payload is large enough (over 4 MiB compressed) for the
/// threaded path: decoding and hashing on a second thread.
fn large_release(root: &Path) {
    sample_release(root);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = vec![0u8; 6 << 20];
    for chunk in noise.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    fs::write(root.join("lib/noise.bin"), noise).unwrap();
}

#[test]
fn large_payloads_round_trip_and_any_flipped_payload_byte_is_caught() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    large_release(&src);
    for codec in [Codec::Gzip, Codec::Zstd] {
        let out = work.path().join(format!("large.{codec}"));
        pack_dir(&src, &out, &options(codec)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let payload = Bundle::open(&bytes)
            .unwrap()
            .layout()
            .trailer
            .payload
            .clone();
        assert!(payload.end - payload.start > 4 << 20, "{codec}: too small");

        let dest = work.path().join(format!("good.{codec}"));
        fs::create_dir(&dest).unwrap();
        Bundle::open(&bytes)
            .unwrap()
            .unpack_verified(&dest)
            .unwrap();
        assert_eq!(snapshot(&dest), snapshot(&src), "{codec}");

        // The first byte, the middle, and the very last: the decoder may
        // stop before the end, and the rest must still be checked.
        for at in [
            payload.start,
            (payload.start + payload.end) / 2,
            payload.end - 1,
        ] {
            let mut bad = bytes.clone();
            bad[at as usize] ^= 0x10;
            let dest = work.path().join(format!("bad.{codec}.{at}"));
            fs::create_dir(&dest).unwrap();
            let result = Bundle::open(&bad).unwrap().unpack_verified(&dest);
            assert!(
                matches!(
                    result,
                    Err(FormatError::DigestMismatch { section: "payload" })
                ),
                "{codec}, byte {at}: {result:?}"
            );
        }
    }
}

#[test]
fn a_flipped_manifest_byte_is_caught_on_open() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("release");
    sample_release(&src);
    let out = work.path().join("b");
    pack_dir(&src, &out, &options(Codec::Gzip)).unwrap();
    let bytes = fs::read(&out).unwrap();
    let layout = Bundle::open(&bytes).unwrap().layout().clone();
    for at in layout.trailer.manifest.clone() {
        let mut bad = bytes.clone();
        bad[at as usize] ^= 1;
        assert!(matches!(
            Bundle::open(&bad),
            Err(FormatError::DigestMismatch {
                section: "manifest"
            })
        ));
    }
    let mut bad = bytes.clone();
    bad[layout.trailer.index.start as usize] ^= 1;
    let bundle = Bundle::open(&bad).unwrap();
    assert!(matches!(
        bundle.index(),
        Err(FormatError::DigestMismatch { section: "index" })
    ));
}

/// A random tree: a list of (path, contents, exec) under a few directories.
fn tree_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>, bool)>> {
    let name = "[a-z0-9_.-]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..");
    let path = prop::collection::vec(name, 1..4).prop_map(|parts| parts.join("/"));
    let file = (
        path,
        prop::collection::vec(any::<u8>(), 0..3000),
        any::<bool>(),
    );
    prop::collection::vec(file, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(files in tree_strategy(), zstd in any::<bool>()) {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("release");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/demo"), "x").unwrap();
        fs::set_permissions(src.join("bin/demo"), fs::Permissions::from_mode(0o755)).unwrap();
        for (path, contents, exec) in &files {
            let full = src.join("data").join(path);
            // Skip paths that collide with an earlier file used as a directory.
            if fs::create_dir_all(full.parent().unwrap()).is_err() || full.is_dir() {
                continue;
            }
            fs::write(&full, contents).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
        }
        let codec = if zstd { Codec::Zstd } else { Codec::Gzip };
        let out = work.path().join("b");
        pack_dir(&src, &out, &options(codec)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let bundle = Bundle::open(&bytes).unwrap();
        let dest = work.path().join("t");
        fs::create_dir(&dest).unwrap();
        bundle.unpack_verified(&dest).unwrap();
        prop_assert_eq!(snapshot(&dest), snapshot(&src));
    }
}
