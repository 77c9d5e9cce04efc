//! `Bundle::for_each_file` and `Bundle::read_file`: the payload's regular
//! files, streamed, for callers that must not parse the tar themselves.

use std::fs;
use std::ops::ControlFlow;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use bundle_format::pack::{PackOptions, pack_to_path};
use bundle_format::{Bundle, Codec, FormatError};

fn pack(src: &Path, out: &Path, codec: Codec) -> Vec<u8> {
    let opts = PackOptions {
        name: "files".into(),
        version: "1".into(),
        entry: "bin/run".into(),
        args: Vec::new(),
        codec,
        level: 3,
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: Vec::new(),
        portable: None,
        env: Vec::new(),
    };
    pack_to_path(src, b"\x7fELF-stub", &opts, out, &mut |_| {}).unwrap();
    fs::read(out).unwrap()
}

/// bin/run (exec), data/big (600 KB), data/long/<130 x>/name, a symlink and
/// an empty directory.
fn release(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    let long = root.join("data/long").join("x".repeat(130));
    fs::create_dir_all(&long).unwrap();
    fs::write(root.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(root.join("data/big"), big).unwrap();
    fs::write(long.join("name"), "deep").unwrap();
    symlink("../bin/run", root.join("data/run-link")).unwrap();
}

#[test]
fn every_regular_file_is_visited_once_with_its_mode_size_and_contents() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        release(&src);
        let bytes = pack(&src, &work.path().join("b"), codec);
        let bundle = Bundle::open(&bytes).unwrap();
        let mut seen = Vec::new();
        let stopped = bundle
            .for_each_file(|file| {
                let path = String::from_utf8(file.path.to_vec()).unwrap();
                let mut contents = Vec::new();
                file.contents.read_to_end(&mut contents).unwrap();
                assert_eq!(contents.len() as u64, file.size, "{path}");
                assert_eq!(contents, fs::read(src.join(&path)).unwrap(), "{path}");
                seen.push((path, file.executable()));
                Ok::<_, FormatError>(ControlFlow::Continue(()))
            })
            .unwrap();
        assert!(!stopped);
        seen.sort();
        let long = format!("data/long/{}/name", "x".repeat(130));
        assert_eq!(
            seen,
            [
                ("bin/run".to_owned(), true),
                ("data/big".to_owned(), false),
                (long, false),
            ]
        );
    }
}

#[test]
fn a_visit_can_stop_the_walk_or_fail_it_with_its_own_error() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    release(&src);
    let bytes = pack(&src, &work.path().join("b"), Codec::Gzip);
    let bundle = Bundle::open(&bytes).unwrap();

    let mut visits = 0;
    let stopped = bundle
        .for_each_file(|_| {
            visits += 1;
            Ok::<_, FormatError>(ControlFlow::Break(()))
        })
        .unwrap();
    assert!(stopped);
    assert_eq!(visits, 1);

    #[derive(Debug, PartialEq)]
    enum Mine {
        Refused,
        Format,
    }
    impl From<FormatError> for Mine {
        fn from(_: FormatError) -> Self {
            Mine::Format
        }
    }
    let failed = bundle.for_each_file(|_| Err::<ControlFlow<()>, _>(Mine::Refused));
    assert_eq!(failed, Err(Mine::Refused));
}

#[test]
fn read_file_streams_one_file_by_path_or_says_it_is_absent() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    release(&src);
    let bytes = pack(&src, &work.path().join("b"), Codec::Zstd);
    let bundle = Bundle::open(&bytes).unwrap();

    let big = bundle
        .read_file("data/big", |file| {
            let mut contents = Vec::new();
            file.contents.read_to_end(&mut contents).unwrap();
            Ok::<_, FormatError>((file.size, contents))
        })
        .unwrap()
        .expect("data/big is in the payload");
    assert_eq!(big.0, 600_000);
    assert_eq!(big.1, fs::read(src.join("data/big")).unwrap());

    let head = bundle
        .read_file("bin/run", |file| {
            let mut head = [0u8; 2];
            file.contents.read_exact(&mut head).unwrap();
            Ok::<_, FormatError>(head)
        })
        .unwrap();
    assert_eq!(head, Some(*b"#!"));

    // Symlinks, directories and absent paths are not files.
    for absent in ["data/run-link", "empty", "bin", "nope", "bin/ru"] {
        let found = bundle
            .read_file(absent, |_| Ok::<_, FormatError>(()))
            .unwrap();
        assert_eq!(found, None, "{absent}");
    }
}

#[test]
fn a_payload_that_is_not_a_tar_stream_is_corrupt() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    release(&src);
    let mut bytes = pack(&src, &work.path().join("b"), Codec::Gzip);
    // Damage the compressed stream past its gzip header (the digest is not
    // checked by the walk; callers verify first).
    let payload_start = {
        let bundle = Bundle::open(&bytes).unwrap();
        bundle.payload().as_ptr() as usize - bytes.as_ptr() as usize
    };
    for byte in &mut bytes[payload_start + 20..payload_start + 60] {
        *byte ^= 0x5a;
    }
    let bundle = Bundle::open(&bytes).unwrap();
    let err = bundle
        .for_each_file(|file| {
            std::io::copy(file.contents, &mut std::io::sink())
                .map_err(|err| FormatError::CorruptPayload(err.to_string()))?;
            Ok::<_, FormatError>(ControlFlow::Continue(()))
        })
        .unwrap_err();
    assert_eq!(err.kind(), bundle_format::ErrorKind::Corrupt, "{err}");
}
