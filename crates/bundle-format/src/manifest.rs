//! The manifest (what the bundle is and how to run it) and the file index
//! (every entry of the payload, for `inspect --files` and `verify --deep`).
//!
//! Both are encoded with postcard: compact, no self-description, and cheap to
//! decode in the stub. Field order is part of format version 3 and is listed
//! in `docs/FORMAT.md`. Decoding validates every field that later becomes a
//! path, so code past this point can trust them.

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::paths::validate_relative;
use crate::text::hex;

/// The payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// gzip (deflate), decoded with flate2.
    Gzip,
    /// Zstandard.
    Zstd,
}

impl Codec {
    /// The codec's name as users type it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// Parses a name as accepted on command lines.
    pub fn from_name(name: &str) -> Option<Codec> {
        match name {
            "gzip" | "gz" => Some(Codec::Gzip),
            "zstd" | "zst" => Some(Codec::Zstd),
            _ => None,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the bundle is and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Short name, e.g. `sydney`; part of cache and state paths.
    pub name: String,
    /// Version string, e.g. `0.1.0`; part of the cache path.
    pub version: String,
    /// The program to run, relative to the release root, e.g. `bin/sydney`.
    pub entry: String,
    /// Arguments always passed before the user's, e.g. `["start"]`.
    pub args: Vec<String>,
    /// How the payload is compressed.
    pub codec: Codec,
    /// Length of the uncompressed tar stream.
    pub tar_len: u64,
    /// Sum of the sizes of all regular files.
    pub unpacked_bytes: u64,
    /// Number of entries (directories, files, symlinks) in the payload.
    pub file_count: u64,
    /// True if the entry cannot run without its extracted tree (no
    /// run-from-memory fallback when nothing is writable).
    pub needs_tree: bool,
    /// Cache root baked in at pack time, tried after `SYDNEY_BUNDLE_DIR`.
    pub default_cache_dir: Option<String>,
    /// SHA-256 of the encoded file index.
    pub index_sha256: [u8; 32],
    /// Free-form build facts (packer version, source date, toolchain),
    /// sorted by key.
    pub build: Vec<(String, String)>,
    /// Environment defaults for the entry, `(NAME, VALUE)`: set only when
    /// the variable is not already set. In a value, `${BUNDLE_ROOT}` and
    /// `${BUNDLE_STATE_DIR}` stand for the tree and the state directory; a
    /// default that names one the run does not have is left out.
    pub env: Vec<(String, String)>,
}

/// The placeholders an [`Manifest::env`] value may use.
pub const ENV_PLACEHOLDERS: [&str; 2] = ["${BUNDLE_ROOT}", "${BUNDLE_STATE_DIR}"];

/// Longest name or version accepted; they end up in directory names.
const MAX_LABEL_LEN: usize = 64;

impl Manifest {
    /// Encodes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes and validates a manifest.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = decode_exact(bytes, "manifest")?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field that becomes part of a path or a command line.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| FormatError::InvalidMetadata {
            section: "manifest",
            reason,
        };
        validate_label("name", &self.name).map_err(invalid)?;
        validate_label("version", &self.version).map_err(invalid)?;
        validate_relative(&self.entry)
            .map_err(|why| invalid(format!("entry {:?}: {why}", self.entry)))?;
        if let Some(arg) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(invalid(format!("argument {arg:?} contains a NUL byte")));
        }
        if let Some(dir) = &self.default_cache_dir {
            if !dir.starts_with('/') || dir.contains('\0') {
                return Err(invalid(format!(
                    "default cache dir {dir:?} must be an absolute path"
                )));
            }
        }
        for (name, value) in &self.env {
            validate_env(name, value).map_err(invalid)?;
        }
        Ok(())
    }

    /// The cache directory name of this bundle's tree:
    /// `<name>-<version>-<first 16 hex digits of the payload SHA-256>`.
    pub fn tree_dir_name(&self, payload_sha256: &[u8; 32]) -> String {
        format!(
            "{}-{}-{}",
            self.name,
            self.version,
            hex(&payload_sha256[..8])
        )
    }

    /// Looks up a build metadata value.
    pub fn build_value(&self, key: &str) -> Option<&str> {
        self.build
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks a name or version: it becomes part of a directory name, so only
/// `[A-Za-z0-9._+-]`, not starting with `.` or `-`.
pub fn validate_label(what: &str, value: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    if value.is_empty() || value.len() > MAX_LABEL_LEN {
        return Err(format!("{what} must be 1 to {MAX_LABEL_LEN} characters"));
    }
    if value.starts_with(['.', '-']) || !value.chars().all(ok_char) {
        return Err(format!(
            "{what} {value:?} may only use letters, digits and . _ + - (not first . or -)"
        ));
    }
    Ok(())
}

/// Checks an environment default: a portable name (`[A-Za-z_][A-Za-z0-9_]*`)
/// that is not one of the variables the stub sets or reads (`BUNDLE_*`,
/// `SYDNEY_BUNDLE_*`), and a value without NUL bytes.
pub fn validate_env(name: &str, value: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let portable = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !portable {
        return Err(format!(
            "environment name {name:?} may only use letters, digits and _ (not first a digit)"
        ));
    }
    if name.starts_with("BUNDLE_") || name.starts_with("SYDNEY_BUNDLE_") {
        return Err(format!(
            "environment name {name} is reserved: the bundle itself sets or reads BUNDLE_* and SYDNEY_BUNDLE_*"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte"));
    }
    Ok(())
}

/// The kind of a payload entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link that stays inside the tree.
    Symlink,
}

/// One entry of the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Path relative to the release root, `/`-separated.
    pub path: String,
    /// Directory, file or symlink.
    pub kind: EntryKind,
    /// Permission bits as packed (0o755 or 0o644 for files).
    pub mode: u32,
    /// File size in bytes (0 for directories and symlinks).
    pub size: u64,
    /// SHA-256 of the file's contents (zero for directories and symlinks).
    pub sha256: [u8; 32],
    /// Link target, for symlinks.
    pub link: Option<String>,
}

/// Every entry of the payload, in archive order, and the doctor's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// The entries.
    pub entries: Vec<IndexEntry>,
    /// The doctor's report on the payload as packed (which hosts it runs
    /// on, and what it needs from them), rendered by the packer for
    /// `inspect --doctor`. Since format version 3.
    pub doctor: String,
}

impl Index {
    /// Encodes the index.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Finds the regular file `path` names, following in-tree symlinks.
    pub fn resolve(&self, path: &str) -> Option<&IndexEntry> {
        let mut current = crate::paths::normalize(path);
        for _ in 0..40 {
            let entry = self.entries.iter().find(|e| e.path == current)?;
            match (&entry.kind, &entry.link) {
                (EntryKind::File, _) => return Some(entry),
                (EntryKind::Symlink, Some(target)) => {
                    current = crate::paths::symlink_destination(&entry.path, target);
                }
                _ => return None,
            }
        }
        None
    }

    /// Decodes and validates an index.
    pub fn decode(bytes: &[u8]) -> Result<Index> {
        let index: Index = decode_exact(bytes, "index")?;
        for entry in &index.entries {
            validate_relative(&entry.path).map_err(|why| FormatError::InvalidMetadata {
                section: "index",
                reason: format!("path {:?}: {why}", entry.path),
            })?;
        }
        Ok(index)
    }
}

/// Decodes `bytes` as exactly one `T`, with no bytes left over.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8], section: &'static str) -> Result<T> {
    let invalid = |reason: String| FormatError::InvalidMetadata { section, reason };
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|err| invalid(format!("cannot decode: {err}")))?;
    if !rest.is_empty() {
        return Err(invalid(format!("{} unexpected trailing bytes", rest.len())));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            name: "sydney".into(),
            version: "0.1.0".into(),
            entry: "bin/sydney".into(),
            args: vec![],
            codec: Codec::Gzip,
            tar_len: 10240,
            unpacked_bytes: 700,
            file_count: 3,
            needs_tree: false,
            default_cache_dir: None,
            index_sha256: [7; 32],
            build: vec![("packer".into(), "test".into())],
            env: vec![("RELEASE_TMP".into(), "${BUNDLE_STATE_DIR}/tmp".into())],
        }
    }

    #[test]
    fn environment_defaults_are_checked() {
        assert!(validate_env("RELEASE_TMP", "${BUNDLE_STATE_DIR}/tmp").is_ok());
        assert!(validate_env("_X1", "").is_ok());
        for bad in ["", "1X", "A-B", "A=B", "BUNDLE_ROOT", "SYDNEY_BUNDLE_DIR"] {
            assert!(validate_env(bad, "v").is_err(), "{bad:?} accepted");
        }
        assert!(validate_env("X", "a\0b").is_err());
        let mut m = sample();
        m.env.push(("BUNDLE_NAME".into(), "x".into()));
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    #[test]
    fn manifest_round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn manifest_byte_literal_decodes() {
        // postcard: strings are varint length + bytes, vecs varint count,
        // enums varint discriminant, u64 varint, bool one byte, arrays raw.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"\x01a"); // name "a"
        bytes.extend_from_slice(b"\x011"); // version "1"
        bytes.extend_from_slice(b"\x05bin/x"); // entry
        bytes.extend_from_slice(b"\x01\x05start"); // args ["start"]
        bytes.push(1); // codec Zstd
        bytes.extend_from_slice(&[0x80, 0x01]); // tar_len 128
        bytes.push(5); // unpacked_bytes
        bytes.push(2); // file_count
        bytes.push(1); // needs_tree
        bytes.push(0); // default_cache_dir None
        bytes.extend_from_slice(&[9; 32]); // index_sha256
        bytes.push(0); // build []
        bytes.extend_from_slice(b"\x01\x01X\x01y"); // env [("X", "y")]
        let m = Manifest::decode(&bytes).unwrap();
        assert_eq!(m.name, "a");
        assert_eq!(m.entry, "bin/x");
        assert_eq!(m.args, ["start"]);
        assert_eq!(m.codec, Codec::Zstd);
        assert_eq!(m.tar_len, 128);
        assert!(m.needs_tree);
        assert_eq!(m.env, [("X".to_owned(), "y".to_owned())]);
        // One byte more is an error, one byte less too.
        bytes.push(0);
        assert!(Manifest::decode(&bytes).is_err());
        bytes.truncate(bytes.len() - 2);
        assert!(Manifest::decode(&bytes).is_err());
    }

    #[test]
    fn hostile_manifests_are_refused() {
        type Tweak = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Tweak)> = vec![
            ("absolute entry", Box::new(|m| m.entry = "/bin/sh".into())),
            ("dotdot entry", Box::new(|m| m.entry = "../x".into())),
            ("slash in name", Box::new(|m| m.name = "a/b".into())),
            ("dot name", Box::new(|m| m.name = "..".into())),
            ("empty version", Box::new(|m| m.version = String::new())),
            ("nul arg", Box::new(|m| m.args = vec!["a\0b".into()])),
            (
                "relative cache dir",
                Box::new(|m| m.default_cache_dir = Some("cache".into())),
            ),
        ];
        for (what, tweak) in cases {
            let mut m = sample();
            tweak(&mut m);
            assert!(Manifest::decode(&m.encode()).is_err(), "{what}");
        }
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // A vec claiming 2^63 elements in a 12-byte input must fail fast.
        let bytes = [
            0x01, b'a', 0x01, b'1', 0x01, b'x', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x7f,
        ];
        assert!(Manifest::decode(&bytes).is_err());
        assert!(Index::decode(&bytes[6..]).is_err());
    }

    #[test]
    fn tree_dir_name_uses_the_digest_prefix() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[7] = 0x01;
        assert_eq!(
            sample().tree_dir_name(&digest),
            "sydney-0.1.0-ab00000000000001"
        );
    }

    #[test]
    fn index_round_trips_and_validates_paths() {
        let index = Index {
            entries: vec![IndexEntry {
                path: "bin/sydney".into(),
                kind: EntryKind::File,
                mode: 0o755,
                size: 3,
                sha256: [1; 32],
                link: None,
            }],
            doctor: "runs on: FROM scratch\n".into(),
        };
        assert_eq!(Index::decode(&index.encode()).unwrap(), index);
        let mut bad = index.clone();
        bad.entries[0].path = "../../etc/passwd".into();
        assert!(Index::decode(&bad.encode()).is_err());
    }
}
