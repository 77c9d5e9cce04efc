//! Signed bundles with the real tools: `sydney-pack keygen`, `pack --sign`,
//! the signer in `verify` and `inspect`, and `SYDNEY_BUNDLE_TRUSTED_KEYS`
//! accepting the right key and refusing unsigned, foreign and tampered
//! bundles with exit 26 or 27, leaving nothing behind (README, "Signed
//! bundles"; docs/EXIT_CODES.md).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::*;

const START: Duration = Duration::from_secs(60);
const TRAILER_LEN: usize = 160;
const SIGNATURE_LEN: usize = 136;
const VAR: &str = "SYDNEY_BUNDLE_TRUSTED_KEYS";

/// `sydney-pack keygen NAME` in the sandbox; returns (secret, public text).
fn keygen(sandbox: &Sandbox, name: &str) -> (PathBuf, String) {
    let secret = sandbox.join(name);
    run(sandbox.command(sydney_pack()).arg("keygen").arg(&secret))
        .expect_success()
        .expect_stdout("key id: ");
    let public = fs::read_to_string(sandbox.join(&format!("{name}.pub"))).unwrap();
    (secret, public.trim().to_owned())
}

/// The sydney release packed by `sydney-pack` as `out`, signed with `key`
/// if given.
fn pack(sandbox: &Sandbox, out: &str, key: Option<&Path>) -> PathBuf {
    let release = sandbox.join("release");
    if !release.exists() {
        copy_release(&release);
    }
    let bundle = sandbox.join(out);
    let mut command = sandbox.command(sydney_pack());
    command
        .arg(&release)
        .args(["--entry", "bin/sydney", "--name", "sydney", "--app-version"])
        .arg(out)
        .arg("--out")
        .arg(&bundle);
    if let Some(key) = key {
        command.arg("--sign").arg(key);
    }
    run_timeout(&mut command, Duration::from_secs(120)).expect_success();
    bundle
}

/// `BUNDLE start` on a free loopback port, with `trusted` as the variable.
fn start(sandbox: &Sandbox, bundle: &Path, trusted: &str) -> Command {
    let mut command = sandbox.command(bundle);
    command
        .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"])
        .env(VAR, trusted);
    command
}

/// A copy of `bundle` named `name` with `edit` applied to its bytes.
fn tampered(
    sandbox: &Sandbox,
    bundle: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>),
) -> PathBuf {
    let mut bytes = fs::read(bundle).unwrap();
    edit(&mut bytes);
    let path = sandbox.join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Nothing was extracted into, or left in, the sandbox's cache.
fn assert_nothing_left(sandbox: &Sandbox, what: &str) {
    let (trees, temps) = cache_contents(&sandbox.cache());
    assert!(
        trees.is_empty() && temps.is_empty(),
        "{what}: left {trees:?} {temps:?}"
    );
}

#[test]
fn keygen_writes_a_private_key_pair_and_never_overwrites() {
    let sandbox = Sandbox::new();
    run(sandbox.command(sydney_pack()).args(["keygen", "--help"]))
        .expect_success()
        .expect_stdout("SYDNEY_BUNDLE_TRUSTED_KEYS")
        .expect_stdout("compromised build host");
    let (secret, public) = keygen(&sandbox, "release.key");
    let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret key must be private");
    assert!(
        public.starts_with("sydney-ed25519:") && public.len() == 15 + 64,
        "{public}"
    );
    let before = fs::read(&secret).unwrap();
    run(sandbox.command(sydney_pack()).arg("keygen").arg(&secret))
        .expect_code(4)
        .expect_one_line_error()
        .expect_stderr("never overwrites");
    assert_eq!(fs::read(&secret).unwrap(), before);

    // A missing key file, or the public key by mistake: a bad command line
    // (exit 2), before anything is written.
    copy_release(&sandbox.join("release"));
    for (key, message) in [
        (sandbox.join("missing.key"), "sydney-pack keygen"),
        (sandbox.join("release.key.pub"), "this is a public key"),
    ] {
        run(sandbox
            .command(sydney_pack())
            .arg(sandbox.join("release"))
            .args([
                "--entry",
                "bin/sydney",
                "--name",
                "sydney",
                "--app-version",
                "1",
            ])
            .arg("--out")
            .arg(sandbox.join("out"))
            .arg("--sign")
            .arg(&key))
        .expect_code(2)
        .expect_one_line_error()
        .expect_stderr(message);
        assert!(!sandbox.join("out").exists());
    }
}

#[test]
fn a_signed_bundle_names_its_key_and_runs_under_its_trusted_key() {
    let sandbox = Sandbox::new();
    let (secret, public) = keygen(&sandbox, "release.key");
    let (_, other_public) = keygen(&sandbox, "other.key");
    let signed = pack(&sandbox, "signed", Some(&secret));
    let unsigned = pack(&sandbox, "unsigned", None);
    let key_id = {
        let ran = run(sandbox.command(sydney_pack()).arg("inspect").arg(&signed));
        ran.expect_success().expect_stdout(&public);
        let line = ran
            .stdout()
            .lines()
            .find(|line| line.starts_with("signed by:"))
            .expect("inspect has a signed-by line")
            .to_owned();
        line.split_whitespace().nth(3).unwrap().to_owned()
    };
    assert_eq!(key_id.len(), 16, "{key_id}");
    run(sandbox.command(&signed).arg("verify"))
        .expect_success()
        .expect_stdout(&format!("signed by: key {key_id} ({public})"));
    run(sandbox.command(&signed).arg("inspect"))
        .expect_success()
        .expect_stdout(&format!("signed by:   key {key_id}"));
    run(sandbox.command(&unsigned).arg("verify"))
        .expect_success()
        .expect_stdout("signed by: unsigned");
    run(sandbox.command(sydney_pack()).arg("inspect").arg(&unsigned))
        .expect_success()
        .expect_stdout("signed by:   unsigned");

    // Trusted: the right key alone, or among others (commas, spaces, newlines).
    for trusted in [public.clone(), format!("{other_public},\n {public}")] {
        let server = Server::start(&mut start(&sandbox, &signed, &trusted), START);
        assert_eq!(server.get("/"), (200, "Ok".to_owned()));
    }
    // Without the variable, signed and unsigned bundles run as before.
    let server = Server::start(
        sandbox
            .command(&unsigned)
            .args(["start", "--", "--port", "0", "--bind", "127.0.0.1"]),
        START,
    );
    assert_eq!(server.get("/"), (200, "Ok".to_owned()));
}

#[test]
fn trusted_keys_refuse_unsigned_foreign_and_tampered_bundles() {
    let sandbox = Sandbox::new();
    let (secret, public) = keygen(&sandbox, "release.key");
    let (stranger, _) = keygen(&sandbox, "stranger.key");
    let signed = pack(&sandbox, "signed", Some(&secret));
    let unsigned = pack(&sandbox, "unsigned", None);
    let foreign = pack(&sandbox, "foreign", Some(&stranger));
    let other_version = pack(&sandbox, "signed2", Some(&secret));
    // Precondition: the genuine bundle runs under the key.
    drop(Server::start(&mut start(&sandbox, &signed, &public), START));
    run(sandbox.command(&signed).arg("clean").arg("--all")).expect_success();
    assert_nothing_left(&sandbox, "clean --all");

    let len = fs::read(&signed).unwrap().len();
    let block = len - TRAILER_LEN - SIGNATURE_LEN;
    let flip = |at: usize| move |bytes: &mut Vec<u8>| bytes[at] ^= 0x01;
    let in_signature = tampered(&sandbox, &signed, "bad-signature", flip(block + 100));
    let in_key = tampered(&sandbox, &signed, "bad-key", flip(block + 20));
    let swapped = tampered(&sandbox, &other_version, "swapped", |bytes| {
        let other_block = bytes.len() - TRAILER_LEN - SIGNATURE_LEN;
        let genuine = fs::read(&signed).unwrap();
        bytes[other_block..other_block + SIGNATURE_LEN]
            .copy_from_slice(&genuine[block..block + SIGNATURE_LEN]);
    });
    // The signature block cut out (the trailer left as it was).
    let stripped = tampered(&sandbox, &signed, "stripped", |bytes| {
        bytes.drain(block..block + SIGNATURE_LEN);
    });
    // A byte of the ELF header's padding (EI_PAD): the stub still runs.
    let stub_flipped = tampered(&sandbox, &signed, "bad-stub", flip(10));

    let cases: [(&Path, i32, &str); 7] = [
        (&unsigned, 26, "this bundle is unsigned"),
        (
            &foreign,
            26,
            "which SYDNEY_BUNDLE_TRUSTED_KEYS does not list",
        ),
        (&in_signature, 27, "bad signature"),
        (&in_key, 27, "bad signature"),
        (&swapped, 27, "bad signature"),
        (&stripped, 14, "corrupt bundle trailer"),
        // The payload's digest is signed; the payload itself is checked as
        // it is extracted (a cold start), as in any bundle.
        (
            &tampered(&sandbox, &signed, "bad-payload", flip(block - 4096)),
            14,
            "payload digest mismatch",
        ),
    ];
    for (bundle, code, message) in cases {
        for command in ["start", "exec", "daemon", "extract"] {
            let mut cmd = sandbox.command(bundle);
            cmd.arg(command).env(VAR, &public);
            if command == "extract" {
                cmd.arg(sandbox.join("extracted"));
            }
            if command == "start" || command == "exec" {
                cmd.args(["--", "--port", "0", "--bind", "127.0.0.1"]);
            }
            let ran = run_timeout(&mut cmd, Duration::from_secs(30));
            ran.expect_code(code)
                .expect_one_line_error()
                .expect_stderr(message);
            assert_nothing_left(&sandbox, &format!("{} {command}", bundle.display()));
            assert!(!sandbox.join("extracted").exists());
        }
    }
    // A tampered stub: `verify` (which hashes the stub) catches it. The
    // start-time check does not hash the running stub (a replaced stub
    // would skip the check anyway): that is documented, not tested away.
    run(sandbox.command(&stub_flipped).arg("verify"))
        .expect_code(27)
        .expect_stderr("the stub differs from the one that was signed");
    run(sandbox
        .command(sydney_pack())
        .arg("inspect")
        .arg(&stub_flipped))
    .expect_code(5)
    .expect_stderr("the stub differs from the one that was signed");
    for bad in [&in_signature, &swapped] {
        run(sandbox.command(bad).arg("verify"))
            .expect_code(27)
            .expect_one_line_error();
    }

    // A variable with no usable key refuses everything, saying why.
    for value in ["", " , ", "ssh-ed25519 AAAAC3Nza", "sydney-ed25519:abc"] {
        run(sandbox.command(&signed).arg("start").env(VAR, value))
            .expect_code(26)
            .expect_one_line_error()
            .expect_stderr("SYDNEY_BUNDLE_TRUSTED_KEYS cannot be used");
    }
    assert_nothing_left(&sandbox, "bad variable");
}

#[test]
fn a_stub_without_signature_checks_refuses_to_sign_or_to_run_under_trusted_keys() {
    let sandbox = Sandbox::new();
    let (secret, public) = keygen(&sandbox, "release.key");
    copy_release(&sandbox.join("release"));
    let plain_stub = sandbox.join("plain-stub");
    fs::write(&plain_stub, stub(bundle_format::Codec::Gzip)).unwrap();
    run(sandbox
        .command(sydney_pack())
        .arg(sandbox.join("release"))
        .args([
            "--entry",
            "bin/sydney",
            "--name",
            "sydney",
            "--app-version",
            "1",
        ])
        .arg("--out")
        .arg(sandbox.join("out"))
        .arg("--stub")
        .arg(&plain_stub)
        .arg("--sign")
        .arg(&secret))
    .expect_code(1)
    .expect_one_line_error()
    .expect_stderr("cannot check signatures");
    assert!(!sandbox.join("out").exists());
    // The default bundle (`cargo xtask bundle`: the plain gzip stub) refuses
    // to run when keys are pinned, since it is unsigned by construction.
    let bundle = sandbox.sydney_bundle();
    run(sandbox.command(&bundle).arg("start").env(VAR, &public))
        .expect_code(26)
        .expect_one_line_error()
        .expect_stderr("this bundle is unsigned");
    run(sandbox.command(&bundle).arg("verify"))
        .expect_success()
        .expect_stdout("signed by: unsigned");
    assert_nothing_left(&sandbox, "plain stub");
}

/// A supervised `daemon` instance of a signed bundle at `app` in `sandbox`.
struct SignedInstance<'a> {
    sandbox: &'a Sandbox,
    app: PathBuf,
    port: u16,
}

impl SignedInstance<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut command = self.sandbox.command(&self.app);
        command
            .args(args)
            .env("PORT", self.port.to_string())
            .env("SYDNEY_BUNDLE_LISTEN", "tcp:127.0.0.1:$PORT");
        command
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> String {
        let ran = run(&mut self.cmd(&["pid"]));
        ran.expect_success();
        ran.stdout().trim().to_owned()
    }

    fn version(&self) -> String {
        let ran = run(&mut self.cmd(&["version"]));
        ran.expect_success();
        ran.stdout().trim().to_owned()
    }

    /// `upgrade FILE` (or `rollback`) is refused with `code` and `message`
    /// in one line; the old server still serves and no file changed.
    fn refused(&self, args: &[&str], code: i32, message: &str) {
        let before = (
            fs::read(&self.app).unwrap(),
            fs::read(self.sandbox.join("app.previous")).ok(),
        );
        let (pid, version) = (self.pid(), self.version());
        let ran = run_timeout(&mut self.cmd(args), Duration::from_secs(60));
        ran.expect_code(code)
            .expect_one_line_error()
            .expect_stderr(message);
        assert_eq!(self.pid(), pid, "{args:?}: the server changed");
        assert_eq!(self.version(), version, "{args:?}");
        assert_eq!(http_get(self.addr(), "/").unwrap().0, 200, "{args:?}");
        let after = (
            fs::read(&self.app).unwrap(),
            fs::read(self.sandbox.join("app.previous")).ok(),
        );
        assert!(before == after, "{args:?}: a file changed");
        let staged: Vec<String> = Sandbox::list(self.sandbox.path())
            .into_iter()
            .filter(|name| name.starts_with(".app"))
            .collect();
        assert!(
            staged.is_empty(),
            "{args:?}: staged copies left: {staged:?}"
        );
    }
}

impl Drop for SignedInstance<'_> {
    fn drop(&mut self) {
        let _ = run(&mut self.cmd(&["stop", "--timeout", "2"]));
    }
}

/// Replaces `target` by a copy of `source` with a rename: `target` may be a
/// hard link to the file the supervisor runs (busy for writing).
fn replace(sandbox: &Sandbox, source: &Path, target: &Path) {
    let temp = sandbox.join("replacement.tmp");
    fs::copy(source, &temp).unwrap();
    fs::rename(&temp, target).unwrap();
}

#[test]
fn a_signed_running_bundle_upgrades_and_rolls_back_only_to_its_signer() {
    let sandbox = Sandbox::new();
    let (secret, _) = keygen(&sandbox, "release.key");
    let (stranger, _) = keygen(&sandbox, "stranger.key");
    let v1 = pack(&sandbox, "1.0.0", Some(&secret));
    let v2 = pack(&sandbox, "2.0.0", Some(&secret));
    let unsigned = pack(&sandbox, "3.0.0", None);
    let foreign = pack(&sandbox, "4.0.0", Some(&stranger));
    let block = fs::read(&v2).unwrap().len() - TRAILER_LEN - SIGNATURE_LEN;
    let bad_signature = tampered(&sandbox, &v2, "5.0.0", |bytes| bytes[block + 100] ^= 0x01);
    // The genuine v1 signature block on v2: the signed statement (which
    // names v2's payload digest) does not match.
    let v1_block = fs::read(&v1).unwrap()[block..block + SIGNATURE_LEN].to_vec();
    let swapped = tampered(&sandbox, &v2, "6.0.0", |bytes| {
        let at = bytes.len() - TRAILER_LEN - SIGNATURE_LEN;
        bytes[at..at + SIGNATURE_LEN].copy_from_slice(&v1_block);
    });

    let app = sandbox.join("app");
    fs::copy(&v1, &app).unwrap();
    let instance = SignedInstance {
        sandbox: &sandbox,
        app,
        port: free_port(),
    };
    run_timeout(&mut instance.cmd(&["daemon"]), START).expect_success();
    // Preconditions: supervised, signed, serving.
    assert!(
        sandbox.cache().join("state/sydney/supervisor").exists(),
        "no supervisor runs"
    );
    run(&mut instance.cmd(&["verify"]))
        .expect_success()
        .expect_stdout("signed by: key ");
    assert_eq!(instance.version(), "sydney 1.0.0");
    assert_eq!(
        wait_for_http(instance.addr(), "/", Duration::from_secs(5)).0,
        200
    );

    let path = |file: &Path| file.to_str().unwrap().to_owned();
    instance.refused(
        &["upgrade", &path(&unsigned)],
        26,
        "the new one is unsigned",
    );
    instance.refused(
        &["upgrade", &path(&foreign)],
        26,
        "an upgrade must be signed by the same key",
    );
    instance.refused(&["upgrade", &path(&bad_signature)], 27, "bad signature");
    instance.refused(&["upgrade", &path(&swapped)], 27, "bad signature");

    // The same key: accepted.
    run_timeout(&mut instance.cmd(&["upgrade", &path(&v2)]), START)
        .expect_success()
        .expect_stdout("upgraded sydney from 1.0.0 to 2.0.0");
    assert_eq!(instance.version(), "sydney 2.0.0");
    assert_eq!(fs::read(&instance.app).unwrap(), fs::read(&v2).unwrap());

    // rollback follows the same rule: a previous file replaced by an
    // unsigned or foreign one is refused, the genuine one accepted.
    let previous = sandbox.join("app.previous");
    assert_eq!(fs::read(&previous).unwrap(), fs::read(&v1).unwrap());

    for (replacement, code, message) in [
        (&unsigned, 26, "the new one is unsigned"),
        (&foreign, 26, "an upgrade must be signed by the same key"),
        (&bad_signature, 27, "bad signature"),
    ] {
        replace(&sandbox, replacement, &previous);
        instance.refused(&["rollback"], code, message);
    }
    replace(&sandbox, &v1, &previous);
    run_timeout(&mut instance.cmd(&["rollback"]), START)
        .expect_success()
        .expect_stdout("rolled back sydney from 2.0.0 to 1.0.0");
    assert_eq!(instance.version(), "sydney 1.0.0");
    assert_eq!(http_get(instance.addr(), "/").unwrap().0, 200);
}
