//! `sydney-pack keygen KEYFILE`: a new ed25519 key pair for signing bundles.
//!
//! KEYFILE gets the secret key (mode 0600), KEYFILE.pub the public key
//! (one line, `sydney-ed25519:<64 hex digits>`, what
//! `SYDNEY_BUNDLE_TRUSTED_KEYS` lists). Neither file is ever overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bundle_format::signature::{PublicKey, SecretKey};

use crate::error::{Error, Result};

/// The public key file beside `secret`: its name with `.pub` added.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes a new key pair to `secret` and `secret.pub`; returns the public
/// key. Refuses if either file exists; on failure, writes nothing.
pub fn keygen(secret: &Path) -> Result<PublicKey> {
    let public = public_path(secret);
    for path in [secret, public.as_path()] {
        if path.symlink_metadata().is_ok() {
            return Err(Error::Output {
                path: path.to_owned(),
                reason: "it exists, and keygen never overwrites a key; choose another name, \
                         or remove it if you really mean to replace that key"
                    .to_owned(),
            });
        }
    }
    let key = SecretKey::generate();
    let write = |path: &Path, mode: u32, text: &str| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .map_err(|err| Error::Output {
                path: path.to_owned(),
                reason: format!("{err}; check the folder exists and is writable"),
            })
    };
    write(secret, 0o600, &key.to_file_text())?;
    if let Err(err) = write(&public, 0o644, &format!("{}\n", key.public_key())) {
        let _ = std::fs::remove_file(secret);
        return Err(err);
    }
    Ok(key.public_key())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keygen_writes_a_private_secret_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("release.key");
        let public = keygen(&secret).unwrap();
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(public_path(&secret)).unwrap();
        assert_eq!(PublicKey::parse(&text).unwrap(), public);
        let again = SecretKey::parse(&std::fs::read_to_string(&secret).unwrap()).unwrap();
        assert_eq!(again.public_key(), public);
        let before = std::fs::read(&secret).unwrap();
        assert!(matches!(keygen(&secret), Err(Error::Output { .. })));
        assert_eq!(std::fs::read(&secret).unwrap(), before);
        // Only the .pub exists: still refused, and no secret is written.
        let lone = dir.path().join("lone.key");
        std::fs::write(public_path(&lone), "x").unwrap();
        assert!(keygen(&lone).is_err());
        assert!(!lone.exists());
    }
}
