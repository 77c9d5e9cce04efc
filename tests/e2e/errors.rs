//! Every bad input gets one clear line, its documented exit code, and
//! leaves nothing behind: corrupt files, hostile payloads, unsafe cache roots.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use e2e::bundle_format::layout::{LEAD_IN_LEN, TRAILER_LEN};
use e2e::bundle_format::pack::{assemble, compress};
use e2e::bundle_format::{Bundle, Codec, Index, Manifest};
use e2e::*;

/// Runs `version` (which reads the manifest) and `start` (which also
/// extracts) on `bytes` written as a bundle; both must fail with `code`,
/// mentioning `needle`, leaving no tree or temp dir.
fn expect_rejected(what: &str, bytes: &[u8], code: i32, needle: &str) {
    let sandbox = Sandbox::new();
    let path = sandbox.join("bad-bundle");
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    for command in ["start", "verify"] {
        let ran = run(sandbox.command(&path).arg(command));
        assert_eq!(
            ran.output.status.code(),
            Some(code),
            "{what} ({command}):\n{ran}"
        );
        assert!(
            ran.stderr().contains(needle),
            "{what} ({command}): lacks {needle:?}\n{ran}"
        );
        ran.expect_one_line_error();
        let (trees, temps) = cache_contents(&sandbox.cache());
        assert!(
            trees.is_empty() && temps.is_empty(),
            "{what}: left {trees:?} {temps:?}"
        );
    }
}

#[test]
fn truncations_anywhere_are_reported_as_truncated() {
    let bytes = fs::read(&artifacts().bundle).unwrap();
    let bundle = Bundle::open(&bytes).unwrap();
    let stub_len = bundle.layout().stub_len as usize;
    let len = bytes.len();
    let cuts = [
        stub_len + 1,
        stub_len + LEAD_IN_LEN,
        stub_len + LEAD_IN_LEN + 1000,
        (stub_len + len) / 2,
        len - TRAILER_LEN - 10,
        len - TRAILER_LEN,
        len - 100,
        len - 1,
    ];
    for cut in cuts {
        expect_rejected(
            &format!("cut at {cut}"),
            &bytes[..cut],
            11,
            "truncated bundle",
        );
    }
}

#[test]
fn a_stripped_bundle_says_it_has_no_payload() {
    require_program("strip", "binutils");
    let sandbox = Sandbox::new();
    let copy = sandbox.sydney_bundle();
    run(std::process::Command::new("strip").arg(&copy)).expect_success();
    let stripped = fs::read(&copy).unwrap();
    assert!(stripped.len() < fs::metadata(&artifacts().bundle).unwrap().len() as usize);
    expect_rejected("stripped", &stripped, 10, "no payload");
    // The bare stub as built says the same.
    expect_rejected("bare stub", &stub(Codec::Gzip), 10, "no payload");
}

#[test]
fn flipped_bytes_are_caught_in_every_section() {
    let bytes = fs::read(&artifacts().bundle).unwrap();
    let bundle = Bundle::open(&bytes).unwrap();
    let t = bundle.layout().trailer.clone();
    let len = bytes.len();
    let trailer = len - TRAILER_LEN;
    let cases: Vec<(&str, usize, i32, &str)> = vec![
        (
            "payload start",
            t.payload.start as usize + 20,
            14,
            "payload digest mismatch",
        ),
        (
            "payload middle",
            (t.payload.start + t.payload.end) as usize / 2,
            14,
            "payload digest mismatch",
        ),
        (
            "payload end",
            t.payload.end as usize - 3,
            14,
            "payload digest mismatch",
        ),
        (
            "manifest",
            t.manifest.start as usize + 2,
            14,
            "manifest digest mismatch",
        ),
        ("trailer offsets", trailer + 1, 14, "corrupt bundle trailer"),
        ("trailer digest", trailer + 50, 14, "corrupt bundle trailer"),
        ("trailer magic", len - 1, 12, "bad magic"),
        (
            "lead-in magic",
            t.payload.start as usize - LEAD_IN_LEN,
            14,
            "lead-in",
        ),
    ];
    for (what, at, code, needle) in cases {
        let mut bad = bytes.clone();
        bad[at] ^= 0x20;
        expect_rejected(what, &bad, code, needle);
    }
}

#[test]
fn unknown_format_version_and_appended_bytes_are_named() {
    let bytes = fs::read(&artifacts().bundle).unwrap();
    let len = bytes.len();
    let mut newer = bytes.clone();
    newer[len - 12] = 4; // format_version, just before the end magic
    expect_rejected(
        "version 4",
        &newer,
        13,
        "unsupported bundle format version 4",
    );
    let mut appended = bytes.clone();
    appended.extend_from_slice(b"junk after the bundle");
    expect_rejected(
        "appended",
        &appended,
        12,
        "unexpected bytes follow the bundle",
    );
}

/// A bundle whose payload is the raw tar `tar` (built by hand).
fn hostile_bundle(tar: &[u8]) -> Vec<u8> {
    let payload = compress(Codec::Gzip, tar).unwrap();
    let manifest = Manifest {
        name: "hostile".into(),
        version: "1".into(),
        entry: "bin/app".into(),
        args: vec![],
        codec: Codec::Gzip,
        tar_len: tar.len() as u64,
        unpacked_bytes: 0,
        file_count: 1,
        needs_tree: false,
        default_cache_dir: None,
        index_sha256: [0; 32],
        build: vec![],
        env: vec![],
    };
    assemble(&stub(Codec::Gzip), &payload, &manifest, &Index::default())
}

#[test]
fn hostile_payloads_are_rejected_and_nothing_escapes() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            tar_record(b'0', "../escaped", 0o755, "", b"x"),
            "escapes the tree",
        ),
        (
            "absolute",
            tar_record(b'0', "/tmp/escaped-sydney-e2e", 0o755, "", b"x"),
            "absolute path",
        ),
        (
            "escaping symlink",
            tar_record(b'2', "link", 0o755, "../../../etc", b""),
            "escapes the tree",
        ),
        (
            "absolute symlink",
            tar_record(b'2', "link", 0o755, "/etc/passwd", b""),
            "absolute",
        ),
        (
            "device node",
            tar_record(b'3', "dev", 0o755, "", b""),
            "device nodes",
        ),
        ("fifo", tar_record(b'6', "fifo", 0o755, "", b""), "fifos"),
    ];
    for (what, mut tar, needle) in cases {
        tar.resize(tar.len() + 1024, 0);
        let bytes = hostile_bundle(&tar);
        let sandbox = Sandbox::new();
        let path = sandbox.join("hostile");
        fs::write(&path, &bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let ran = run(sandbox.command(&path).arg("start"));
        ran.expect_code(15)
            .expect_stderr(needle)
            .expect_one_line_error();
        let (trees, temps) = cache_contents(&sandbox.cache());
        assert!(
            trees.is_empty() && temps.is_empty(),
            "{what}: {trees:?} {temps:?}"
        );
        assert!(!sandbox.path().join("escaped").exists(), "{what}");
        assert!(
            !std::path::Path::new("/tmp/escaped-sydney-e2e").exists(),
            "{what}"
        );
    }
}

#[test]
fn unsafe_cache_roots_are_refused() {
    require_root();
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    let root = sandbox.join("root");

    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    run(sandbox
        .command(&bundle)
        .arg("start")
        .env("SYDNEY_BUNDLE_DIR", &root))
    .expect_code(23)
    .expect_stderr("writable by group or others")
    .expect_one_line_error();

    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    run(sandbox
        .command(&bundle)
        .arg("start")
        .env("SYDNEY_BUNDLE_DIR", &root))
    .expect_code(23)
    .expect_stderr("owned by uid 65534")
    .expect_one_line_error();

    let real = sandbox.join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = sandbox.join("planted");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    run(sandbox
        .command(&bundle)
        .arg("start")
        .env("SYDNEY_BUNDLE_DIR", &link))
    .expect_code(23)
    .expect_stderr("is a symlink")
    .expect_one_line_error();
    assert!(Sandbox::list(&real).is_empty());

    // Not named by the user: the chain notes why and moves on.
    let home_cache = sandbox.join("home/.cache/sydney-bundle");
    fs::create_dir_all(&home_cache).unwrap();
    fs::set_permissions(&home_cache, fs::Permissions::from_mode(0o777)).unwrap();
    let tmpdir = sandbox.join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let server = Server::start(
        sandbox
            .command(&bundle)
            .env_remove("SYDNEY_BUNDLE_DIR")
            .env("TMPDIR", &tmpdir)
            .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]),
        std::time::Duration::from_secs(20),
    );
    assert_eq!(server.get("/").0, 200);
    assert!(
        server.stderr().contains("writable by group or others"),
        "{}",
        server.stderr()
    );
    assert!(Sandbox::list(&home_cache).is_empty());
    assert_eq!(Sandbox::list(&tmpdir), ["sydney-bundle-0"]);
}

#[test]
fn permission_denied_is_its_own_exit_code() {
    require_root();
    require_program("setpriv", "util-linux");
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    fs::set_permissions(sandbox.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let locked = sandbox.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    let ran = run(sandbox
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bundle)
        .arg("start")
        .env("SYDNEY_BUNDLE_DIR", locked.join("cache")));
    ran.expect_code(22)
        .expect_stderr("permission denied")
        .expect_one_line_error();
}

#[test]
fn usage_errors_print_usage_and_exit_2() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    for args in [&["frobnicate"][..], &[], &["stop", "--timeout", "soon"]] {
        let ran = run(sandbox.command(&bundle).args(args));
        ran.expect_code(2).expect_stderr("Usage:");
        assert!(!ran.stderr().contains("panicked"));
    }
    let ran = run(sandbox.command(&bundle).arg("--help"));
    ran.expect_success()
        .expect_stdout("start")
        .expect_stdout("daemon")
        .expect_stdout("healthcheck")
        .expect_stdout("Examples:");
    // Every exit code docs/EXIT_CODES.md lists (the stub's unit tests keep
    // that file and `Exit::TABLE` in step) ends the top-level help.
    let doc = fs::read_to_string(root().join("docs/EXIT_CODES.md")).unwrap();
    let rows: Vec<String> = doc
        .lines()
        .map(|line| line.split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.len() > 3 && cells[1].parse::<u8>().is_ok())
        .map(|cells| format!("{:>5}  {}", cells[1], cells[2]))
        .collect();
    assert!(
        rows.len() >= 20,
        "docs/EXIT_CODES.md rows not found: {rows:?}"
    );
    let help = ran.stdout();
    let footer = help
        .split_once("Exit codes (docs/EXIT_CODES.md):\n")
        .map(|(_, footer)| footer.trim_end().lines().collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no exit-code footer in the help:\n{help}"));
    assert_eq!(footer, rows);
    for command in [
        "start",
        "daemon",
        "stop",
        "restart",
        "pid",
        "version",
        "exec",
        "healthcheck",
        "inspect",
        "verify",
        "extract",
        "clean",
    ] {
        run(sandbox.command(&bundle).args([command, "--help"]))
            .expect_success()
            .expect_stdout("Usage:");
    }
}
