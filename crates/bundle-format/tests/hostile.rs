//! Hostile and malformed payloads: every one is refused with the right error,
//! and nothing is ever written outside the destination.

use std::fs;
use std::path::Path;

use bundle_format::FormatError;
use bundle_format::unpack::unpack;

/// One raw tar record: type flag, path bytes, link bytes, data, mode.
struct Raw<'a> {
    kind: u8,
    path: &'a [u8],
    link: &'a [u8],
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        kind: b'0',
        path: path.as_bytes(),
        link: b"",
        data,
        mode: 0o644,
    }
}

fn dir(path: &str) -> Raw<'_> {
    Raw {
        kind: b'5',
        path: path.as_bytes(),
        link: b"",
        data: b"",
        mode: 0o755,
    }
}

fn symlink<'a>(path: &'a str, target: &'a str) -> Raw<'a> {
    Raw {
        kind: b'2',
        path: path.as_bytes(),
        link: target.as_bytes(),
        data: b"",
        mode: 0o777,
    }
}

fn special(kind: u8, path: &str) -> Raw<'_> {
    Raw {
        kind,
        path: path.as_bytes(),
        link: b"",
        data: b"",
        mode: 0o644,
    }
}

/// Builds a tar stream byte by byte, bypassing every check the tar crate's
/// builder would make, so that hostile names can be written.
fn raw_tar(records: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            old.name[..record.path.len()].copy_from_slice(record.path);
            old.linkname[..record.link.len()].copy_from_slice(record.link);
        }
        header.set_mode(record.mode);
        header.set_size(record.data.len() as u64);
        header.set_entry_type(tar::EntryType::new(record.kind));
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(record.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn unpack_into(
    tar: &[u8],
) -> (
    tempfile::TempDir,
    Result<bundle_format::unpack::UnpackStats, FormatError>,
) {
    let outer = tempfile::tempdir().unwrap();
    let dest = outer.path().join("tree");
    fs::create_dir(&dest).unwrap();
    let result = unpack(tar, &dest);
    (outer, result)
}

/// Everything under `root`, except the `tree` directory's own contents.
fn outside_tree(root: &Path) -> Vec<String> {
    fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "tree")
        .collect()
}

#[test]
fn hostile_entries_are_refused() {
    let long = "a".repeat(5000);
    let cases: Vec<(&str, Vec<Raw<'_>>, &str)> = vec![
        ("parent dir", vec![file("../escape", b"x")], "`..`"),
        (
            "nested parent",
            vec![dir("a/"), file("a/../../escape", b"x")],
            "`..`",
        ),
        ("absolute", vec![file("/tmp/escape", b"x")], "absolute"),
        ("absolute symlink", vec![symlink("l", "/etc")], "absolute"),
        (
            "escaping symlink",
            vec![symlink("l", "../outside")],
            "escapes",
        ),
        (
            "deep escaping symlink",
            vec![dir("a/"), symlink("a/l", "../../outside")],
            "escapes",
        ),
        (
            "write through symlink",
            vec![dir("a/"), symlink("l", "a"), file("l/x", b"x")],
            "through a symlink",
        ),
        (
            "symlink chain escape",
            vec![symlink("d", "c/.."), symlink("c", ".")],
            "passes through a symlink",
        ),
        (
            "hard link",
            vec![
                file("a", b"x"),
                Raw {
                    kind: b'1',
                    path: b"b",
                    link: b"a",
                    data: b"",
                    mode: 0o644,
                },
            ],
            "hard links",
        ),
        ("char device", vec![special(b'3', "dev")], "device"),
        ("block device", vec![special(b'4', "dev")], "device"),
        ("fifo", vec![special(b'6', "fifo")], "fifos"),
        (
            "pax header",
            vec![Raw {
                kind: b'x',
                path: b"pax",
                link: b"",
                data: b"11 path=x\n",
                mode: 0o644,
            }],
            "PAX",
        ),
        (
            "duplicate",
            vec![file("a", b"x"), file("a", b"y")],
            "duplicate",
        ),
        ("dot component", vec![file("./a", b"x")], "`.`"),
        ("empty name", vec![file("", b"x")], "empty"),
        (
            "non-utf8",
            vec![Raw {
                kind: b'0',
                path: b"\xff\xfe",
                link: b"",
                data: b"",
                mode: 0o644,
            }],
            "UTF-8",
        ),
        (
            "huge long name",
            vec![
                Raw {
                    kind: b'L',
                    path: b"././@LongLink",
                    link: b"",
                    data: long.as_bytes(),
                    mode: 0o644,
                },
                file("x", b""),
            ],
            "longer than 4096",
        ),
    ];
    for (what, records, expected) in cases {
        let tar = raw_tar(&records);
        let (outer, result) = unpack_into(&tar);
        match result {
            Err(err @ FormatError::UnsafeEntry { .. }) => {
                let message = err.to_string();
                assert!(message.contains(expected), "{what}: {message}");
            }
            other => panic!("{what}: expected an unsafe-entry error, got {other:?}"),
        }
        assert!(
            outside_tree(outer.path()).is_empty(),
            "{what} wrote outside the tree"
        );
    }
}

#[test]
fn setuid_bits_are_stripped_and_exec_bits_kept() {
    use std::os::unix::fs::PermissionsExt;
    let tar = raw_tar(&[
        Raw {
            kind: b'0',
            path: b"suid",
            link: b"",
            data: b"#!/bin/sh\n",
            mode: 0o6755,
        },
        Raw {
            kind: b'0',
            path: b"plain",
            link: b"",
            data: b"x",
            mode: 0o644,
        },
        Raw {
            kind: b'5',
            path: b"sticky/",
            link: b"",
            data: b"",
            mode: 0o1777,
        },
    ]);
    let (outer, result) = unpack_into(&tar);
    let stats = result.unwrap();
    assert_eq!((stats.files, stats.dirs), (2, 1));
    let mode = |p: &str| {
        fs::metadata(outer.path().join("tree").join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("suid") & 0o7000, 0);
    assert_eq!(mode("suid") & 0o100, 0o100);
    assert_eq!(mode("plain") & 0o111, 0);
    assert_eq!(mode("sticky") & 0o7000, 0);
}

#[test]
fn in_tree_symlinks_and_long_names_work() {
    let long_dir = format!("{}/", "d".repeat(150));
    let long_file = format!("{}{}", long_dir, "f".repeat(150));
    let mut records = vec![
        dir("bin/"),
        file("bin/real", b"exe"),
        symlink("bin/alias", "real"),
        dir("lib/"),
        symlink("lib/up", "../bin/real"),
    ];
    records.push(Raw {
        kind: b'L',
        path: b"././@LongLink",
        link: b"",
        data: long_dir.as_bytes(),
        mode: 0o644,
    });
    records.push(dir("placeholder/"));
    records.push(Raw {
        kind: b'L',
        path: b"././@LongLink",
        link: b"",
        data: long_file.as_bytes(),
        mode: 0o644,
    });
    records.push(file("placeholder2", b"deep"));
    let tar = raw_tar(&records);
    let (outer, result) = unpack_into(&tar);
    result.unwrap();
    let tree = outer.path().join("tree");
    assert_eq!(fs::read(tree.join("bin/alias")).unwrap(), b"exe");
    assert_eq!(fs::read(tree.join("lib/up")).unwrap(), b"exe");
    assert_eq!(fs::read(tree.join(&long_file)).unwrap(), b"deep");
}

#[test]
fn garbage_is_a_corrupt_payload_not_a_panic() {
    for garbage in [&b"not a tar at all"[..], &[0xff; 4096][..], &[0u8; 3][..]] {
        let (_outer, result) = unpack_into(garbage);
        // A short all-zero input is an empty archive; everything else fails.
        if let Err(err) = result {
            assert!(matches!(err, FormatError::CorruptPayload(_)), "{err:?}");
        }
    }
}
