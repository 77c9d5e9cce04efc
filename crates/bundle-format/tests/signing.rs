//! Signed bundles: pack with a key, read the signer back, and every kind of
//! tampering fails with its own error.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bundle_format::layout::TRAILER_LEN;
use bundle_format::pack::{PackOptions, pack_to_path, pack_to_path_signed};
use bundle_format::signature::{PublicKey, SIGNATURE_LEN, SecretKey, parse_key_list};
use bundle_format::{Bundle, Codec, ErrorKind, FormatError};

const STUB: &[u8] = b"\x7fELF-not-really-a-stub, long enough to flip a byte in";

fn options(version: &str) -> PackOptions {
    PackOptions {
        name: "demo".into(),
        version: version.into(),
        entry: "bin/demo".into(),
        args: Vec::new(),
        codec: Codec::Gzip,
        level: 1,
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: Vec::new(),
        portable: None,
        env: Vec::new(),
    }
}

fn release(root: &Path, text: &str) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/demo"), format!("#!/bin/sh\necho {text}\n")).unwrap();
    fs::set_permissions(root.join("bin/demo"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Packs a release saying `text`, signed by `key` (or not), and returns the bytes.
fn packed(text: &str, key: Option<&SecretKey>) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("rel");
    release(&src, text);
    let out = work.path().join("demo");
    let report = pack_to_path_signed(&src, STUB, &options(text), &out, key, &mut |_| {}).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(report.bundle_len, bytes.len() as u64);
    bytes
}

fn signer(bytes: &[u8]) -> Result<Option<PublicKey>, FormatError> {
    Bundle::open(bytes)?.signer()
}

#[test]
fn a_signed_bundle_names_its_signer_and_an_unsigned_one_none() {
    let key = SecretKey::generate();
    let signed = packed("one", Some(&key));
    let unsigned = packed("one", None);
    assert_eq!(signed.len(), unsigned.len() + SIGNATURE_LEN);
    assert_eq!(signer(&signed).unwrap(), Some(key.public_key()));
    assert_eq!(
        Bundle::open(&signed).unwrap().signer_at_start().unwrap(),
        Some(key.public_key())
    );
    assert_eq!(signer(&unsigned).unwrap(), None);
    // The signed bundle still reads and verifies as a bundle.
    let bundle = Bundle::open(&signed).unwrap();
    bundle.verify_payload().unwrap();
    assert_eq!(bundle.manifest().version, "one");
    // An unsigned bundle is byte for byte what pack_to_path writes.
    let work = tempfile::tempdir().unwrap();
    release(&work.path().join("rel"), "one");
    pack_to_path(
        &work.path().join("rel"),
        STUB,
        &options("one"),
        &work.path().join("out"),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(fs::read(work.path().join("out")).unwrap(), unsigned);
}

#[test]
fn trust_accepts_listed_keys_only() {
    let key = SecretKey::generate();
    let other = SecretKey::generate();
    let signed = packed("one", Some(&key));
    let bundle = Bundle::open(&signed).unwrap();
    let trusted = [other.public_key(), key.public_key()];
    assert_eq!(
        bundle.require_signer(&trusted, false).unwrap(),
        key.public_key()
    );
    let err = bundle
        .require_signer(&[other.public_key()], true)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Untrusted, "{err}");
    assert!(
        err.to_string()
            .contains(&key.public_key().key_id().to_string()),
        "{err}"
    );
    let unsigned = packed("one", None);
    let err = Bundle::open(&unsigned)
        .unwrap()
        .require_signer(&trusted, false)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Untrusted);
    assert!(err.to_string().contains("unsigned"), "{err}");
}

#[test]
fn every_tampering_is_caught() {
    let key = SecretKey::generate();
    let signed = packed("one", Some(&key));
    let len = signed.len();
    let block = len - TRAILER_LEN - SIGNATURE_LEN;
    let bad_signature = |bytes: &[u8], what: &str| {
        let err = signer(bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadSignature, "{what}: {err}");
    };

    // A byte of the stub: the digest of the stub no longer matches.
    let mut stub = signed.clone();
    stub[10] ^= 1;
    bad_signature(&stub, "stub");
    // The start-time check trusts the recorded stub digest (see signer_at_start).
    assert!(
        Bundle::open(&stub)
            .unwrap()
            .signer_at_start()
            .unwrap()
            .is_some()
    );

    // A byte of the payload: the payload digest catches it, as for any bundle,
    // and a payload with a recomputed digest in the trailer breaks the signature.
    let mut payload = signed.clone();
    payload[STUB.len() + 40] ^= 1;
    assert!(Bundle::open(&payload).unwrap().verify_payload().is_err());

    // Each byte of the signature block (magic, key, stub digest, signature).
    for at in block..block + SIGNATURE_LEN {
        let mut bad = signed.clone();
        bad[at] ^= 0x40;
        let err = signer(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadSignature, "flip at {at}: {err}");
    }

    // A signature moved to another bundle signed by the same key.
    let other = packed("two", Some(&key));
    let other_block = other.len() - TRAILER_LEN - SIGNATURE_LEN;
    let mut swapped = other.clone();
    swapped[other_block..other_block + SIGNATURE_LEN]
        .copy_from_slice(&signed[block..block + SIGNATURE_LEN]);
    bad_signature(&swapped, "swapped signature");

    // Another key's signature block over this bundle.
    let stranger = SecretKey::generate();
    let foreign = packed("one", Some(&stranger));
    let mut replaced = signed.clone();
    replaced[block..block + SIGNATURE_LEN].copy_from_slice(&foreign[block..block + SIGNATURE_LEN]);
    // Same contents, same stub: a valid signature, by the stranger.
    assert_eq!(signer(&replaced).unwrap(), Some(stranger.public_key()));
}

#[test]
fn a_stripped_signature_leaves_an_unsigned_bundle_and_a_cut_one_a_corrupt_one() {
    let key = SecretKey::generate();
    let signed = packed("one", Some(&key));
    // Cut out the block without fixing the trailer: the layout no longer holds.
    let block = signed.len() - TRAILER_LEN - SIGNATURE_LEN;
    let mut cut = signed[..block].to_vec();
    cut.extend_from_slice(&signed[signed.len() - TRAILER_LEN..]);
    assert!(matches!(
        Bundle::open(&cut),
        Err(FormatError::CorruptTrailer(_))
    ));
    // A careful strip (block removed, lead-in and trailer rewritten) gives
    // exactly the unsigned bundle (signing adds nothing else): trust must
    // then refuse it as unsigned.
    let unsigned = packed("one", None);
    assert_eq!(cut.len(), unsigned.len());
    let lead_in = STUB.len()..STUB.len() + 32;
    assert_eq!(cut[..lead_in.start], unsigned[..lead_in.start]);
    assert_eq!(
        cut[lead_in.end..cut.len() - TRAILER_LEN],
        unsigned[lead_in.end..unsigned.len() - TRAILER_LEN]
    );
    assert_eq!(signer(&unsigned).unwrap(), None);
}

#[test]
fn a_bundle_is_signed_once() {
    let key = SecretKey::generate();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("demo");
    fs::write(&path, packed("one", Some(&key))).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let err = bundle_format::signature::sign_file(&file, &key).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
}

#[test]
fn keys_round_trip_through_their_text() {
    let key = SecretKey::generate();
    let again = SecretKey::parse(&key.to_file_text()).unwrap();
    assert_eq!(again.public_key(), key.public_key());
    let public = key.public_key().to_string();
    assert!(public.starts_with("sydney-ed25519:"));
    assert_eq!(PublicKey::parse(&public).unwrap(), key.public_key());
    assert_eq!(key.public_key().key_id().to_string().len(), 16);
    // The trusted-keys list: commas and/or white space.
    let other = SecretKey::generate().public_key();
    let list = parse_key_list(&format!(" {public},\n{other} ")).unwrap();
    assert_eq!(list, [key.public_key(), other]);
    assert!(parse_key_list(" , ").unwrap_err().contains("no keys"));
    assert!(parse_key_list("ssh-ed25519 AAAA").is_err());
    assert!(PublicKey::parse("sydney-ed25519:abcd").is_err());
    // A public key is not a secret key, and the error says which file to use.
    assert!(
        SecretKey::parse(&public)
            .unwrap_err()
            .contains("public key")
    );
}

#[test]
fn an_upgrade_keeps_the_running_bundle_s_key() {
    let key = SecretKey::generate();
    let stranger = SecretKey::generate();
    let running = packed("one", Some(&key));
    let running = Bundle::open(&running).unwrap();
    let same = packed("two", Some(&key));
    assert_eq!(
        running
            .require_same_signer(&Bundle::open(&same).unwrap())
            .unwrap(),
        Some(key.public_key())
    );
    for (what, new) in [
        ("foreign", packed("two", Some(&stranger))),
        ("unsigned", packed("two", None)),
    ] {
        let err = running
            .require_same_signer(&Bundle::open(&new).unwrap())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Untrusted, "{what}: {err}");
    }
    // An unsigned running bundle accepts any new bundle.
    let unsigned = packed("one", None);
    let unsigned = Bundle::open(&unsigned).unwrap();
    let new = packed("two", Some(&stranger));
    assert_eq!(
        unsigned
            .require_same_signer(&Bundle::open(&new).unwrap())
            .unwrap(),
        None
    );
    // A new bundle whose signature does not match is a bad signature.
    let mut tampered = packed("two", Some(&key));
    let at = tampered.len() - TRAILER_LEN - 10;
    tampered[at] ^= 1;
    let err = running
        .require_same_signer(&Bundle::open(&tampered).unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadSignature, "{err}");
}
