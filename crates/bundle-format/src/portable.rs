//! Portable payloads (`pack --portable`): the patch list, and writing the
//! tree's path into the placeholders after extraction.
//!
//! A portable payload carries its own ELF loader, shared libraries and
//! static shell under [`DIR`]. Its programs name them by absolute path, and
//! that path is only known once the tree's location is chosen, so the packer
//! reserves fixed-size placeholders (the PT_INTERP string, a DT_RPATH string,
//! the path in a `#!` line) and lists them in [`PATCH_LIST`]. After unpacking
//! and before the atomic rename, the stub writes `<tree>/<suffix>` into each
//! one ([`apply`]); `verify --deep` checks each region holds exactly that and
//! compares the rest of the file with the index ([`restore`]). Why this
//! design: docs/decisions/0060-portable-payloads.md.

use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{FormatError, Result};
use crate::paths::validate_relative;

/// The folder, at the top of the tree, holding what a portable payload
/// carries: `glibc/` or `musl/` (a loader and its libraries), `bin/` (the
/// shell) and the patch list.
pub const DIR: &str = ".sydney-portable";

/// The patch list, relative to the tree.
pub const PATCH_LIST: &str = ".sydney-portable/patches";

/// Manifest build fact present in every portable bundle; its value
/// describes what was carried (e.g. `glibc 2.36, busybox`).
pub const BUILD_KEY: &str = "portable";

/// Manifest build fact naming an Erlang `epmd` to start before the entry
/// where the host has no `/bin/sh` (`erlexec` starts epmd with `system()`,
/// which needs one).
pub const EPMD_KEY: &str = "portable.epmd";

/// Bytes reserved for each placeholder, including the terminating NUL of
/// an ELF string. The kernel reads at most 256 bytes of a `#!` line, which
/// bounds it.
pub const RESERVED: usize = 200;

/// First line of a patch list.
const HEADER: &str = "# sydney-bundle portable patch list 1";

/// What fills a placeholder after the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// NUL bytes: an ELF string (PT_INTERP, DT_RPATH).
    Nul,
    /// Spaces: the interpreter of a `#!` line (the kernel strips trailing
    /// blanks; the shell reads the line as a comment).
    Space,
}

/// One placeholder in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// File offset of the placeholder.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// What follows the path.
    pub pad: Pad,
    /// Written after `<tree>/`, e.g. `.sydney-portable/glibc`.
    pub suffix: String,
    /// The file, relative to the tree.
    pub path: String,
}

impl Patch {
    /// The bytes the packer wrote: `/` then `X`s (and a NUL for ELF
    /// strings). A program whose placeholder was never patched fails with
    /// "no such file" naming `/XXX...`.
    pub fn placeholder(&self) -> Vec<u8> {
        placeholder(self.len as usize, self.pad)
    }

    /// The bytes to write for a tree at `tree` (absolute).
    pub fn value(&self, tree: &Path) -> Result<Vec<u8>> {
        let mut value = tree.as_os_str().as_bytes().to_vec();
        value.push(b'/');
        value.extend_from_slice(self.suffix.as_bytes());
        let room = self.len as usize - usize::from(self.pad == Pad::Nul);
        if value.len() > room {
            return Err(FormatError::PathTooLong {
                path: tree.to_owned(),
                len: tree.as_os_str().len(),
                max: room.saturating_sub(self.suffix.len() + 1),
            });
        }
        let fill = match self.pad {
            Pad::Nul => 0,
            Pad::Space => b' ',
        };
        value.resize(self.len as usize, fill);
        Ok(value)
    }
}

/// A placeholder of `len` bytes.
pub fn placeholder(len: usize, pad: Pad) -> Vec<u8> {
    let mut bytes = vec![b'X'; len];
    if let Some(first) = bytes.first_mut() {
        *first = b'/';
    }
    if pad == Pad::Nul {
        if let Some(last) = bytes.last_mut() {
            *last = 0;
        }
    }
    bytes
}

/// Writes a patch list.
pub fn render(patches: &[Patch]) -> String {
    let mut out = format!("{HEADER}\n");
    for p in patches {
        let pad = match p.pad {
            Pad::Nul => "nul",
            Pad::Space => "space",
        };
        out.push_str(&format!(
            "{} {} {pad} {} {}\n",
            p.offset, p.len, p.suffix, p.path
        ));
    }
    out
}

/// Reads a patch list, validating every path and range.
pub fn parse(text: &str) -> Result<Vec<Patch>> {
    let invalid = |reason: String| FormatError::InvalidMetadata {
        section: "portable patch list",
        reason,
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(invalid("unknown header".to_owned()));
    }
    let mut patches = Vec::new();
    for line in lines {
        let mut fields = line.splitn(5, ' ');
        let mut next = || {
            fields
                .next()
                .ok_or_else(|| invalid(format!("short line {line:?}")))
        };
        let offset: u64 = next()?
            .parse()
            .map_err(|_| invalid(format!("bad offset in {line:?}")))?;
        let len: u64 = next()?
            .parse()
            .map_err(|_| invalid(format!("bad length in {line:?}")))?;
        let pad = match next()? {
            "nul" => Pad::Nul,
            "space" => Pad::Space,
            other => return Err(invalid(format!("bad pad {other:?}"))),
        };
        let suffix = next()?.to_owned();
        let path = next()?.to_owned();
        if !(2..=4096).contains(&len) || offset.checked_add(len).is_none() {
            return Err(invalid(format!("bad range in {line:?}")));
        }
        validate_relative(&suffix).map_err(|why| invalid(format!("suffix {suffix:?}: {why}")))?;
        validate_relative(&path).map_err(|why| invalid(format!("path {path:?}: {why}")))?;
        patches.push(Patch {
            offset,
            len,
            pad,
            suffix,
            path,
        });
    }
    Ok(patches)
}

/// Reads the patch list of the tree unpacked at `dir`.
pub fn read_list(dir: &Path) -> Result<Vec<Patch>> {
    let path = dir.join(PATCH_LIST);
    let text =
        fs::read_to_string(&path).map_err(|err| FormatError::io("cannot read", &path, err))?;
    parse(&text)
}

/// Patches the tree unpacked at `dir`, which will be renamed to `tree` (an
/// absolute path): every placeholder must still hold its placeholder bytes.
/// Returns the number of placeholders written.
pub fn apply(dir: &Path, tree: &Path) -> Result<usize> {
    let patches = read_list(dir)?;
    // Check every length before writing anything, so that a path that is
    // too long fails before any file changes.
    let values = patches
        .iter()
        .map(|p| p.value(tree))
        .collect::<Result<Vec<_>>>()?;
    for (patch, value) in patches.iter().zip(values) {
        let path = dir.join(&patch.path);
        let corrupt = |why: &str| {
            FormatError::CorruptPayload(format!(
                "portable patch of {} at offset {}: {why}",
                patch.path, patch.offset
            ))
        };
        // `&Path`, not `&PathBuf`: the stub's warm path has its own
        // `symlink_metadata::<&PathBuf>` and must keep calling that copy.
        let meta = fs::symlink_metadata(path.as_path())
            .map_err(|err| FormatError::io("cannot open", &path, err))?;
        if !meta.is_file() || meta.len() < patch.offset + patch.len {
            return Err(corrupt("not a regular file that long"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|err| FormatError::io("cannot open", &path, err))?;
        let mut current = vec![0; patch.len as usize];
        file.read_exact_at(&mut current, patch.offset)
            .map_err(|err| FormatError::io("cannot read", &path, err))?;
        if current != patch.placeholder() {
            return Err(corrupt("no placeholder there"));
        }
        file.write_all_at(&value, patch.offset)
            .map_err(|err| FormatError::io("cannot write", &path, err))?;
    }
    Ok(patches.len())
}

/// For `verify --deep`: checks that each of `patches` (all of one file,
/// whose contents are `bytes`) holds the path of `tree`, then puts the
/// placeholder back, so that `bytes` can be compared with the index.
pub fn restore(patches: &[&Patch], tree: &Path, bytes: &mut [u8]) -> Result<(), String> {
    for patch in patches {
        let start = usize::try_from(patch.offset).map_err(|_| "offset out of range")?;
        let end = start + patch.len as usize;
        let region = bytes
            .get_mut(start..end)
            .ok_or("the file is shorter than its patch list says")?;
        let expected = patch.value(tree).map_err(|err| err.to_string())?;
        if region != expected.as_slice() {
            return Err(format!(
                "patched bytes at offset {} do not hold this tree's path",
                patch.offset
            ));
        }
        region.copy_from_slice(&patch.placeholder());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Patch {
        Patch {
            offset: 4,
            len: 40,
            pad: Pad::Nul,
            suffix: ".sydney-portable/glibc".to_owned(),
            path: "bin/app".to_owned(),
        }
    }

    #[test]
    fn lists_round_trip_and_hostile_ones_are_refused() {
        let patches = vec![
            sample(),
            Patch {
                pad: Pad::Space,
                path: "bin/with space".to_owned(),
                ..sample()
            },
        ];
        assert_eq!(parse(&render(&patches)).unwrap(), patches);
        for bad in [
            "nonsense\n",
            "# sydney-bundle portable patch list 1\n4 24 nul x ../etc/passwd\n",
            "# sydney-bundle portable patch list 1\n4 24 nul /abs bin/app\n",
            "# sydney-bundle portable patch list 1\n4 1 nul x bin/app\n",
            "# sydney-bundle portable patch list 1\n18446744073709551615 24 nul x bin/app\n",
            "# sydney-bundle portable patch list 1\n4 24 zero x bin/app\n",
            "# sydney-bundle portable patch list 1\n4 24 nul\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_fit_or_fail_clearly() {
        let patch = Patch {
            len: 40,
            ..sample()
        };
        let value = patch.value(Path::new("/t")).unwrap();
        assert_eq!(value.len(), 40);
        assert!(value.starts_with(b"/t/.sydney-portable/glibc\0"));
        // 40 bytes hold 39 of path: "/" + 16 + "/" + 22 = 40 is one too many.
        let err = patch.value(Path::new("/0123456789abcdef")).unwrap_err();
        assert!(
            err.to_string().contains("too long") && err.to_string().contains("at most 16"),
            "{err}"
        );
        let space = Patch {
            pad: Pad::Space,
            ..patch
        };
        let value = space.value(Path::new("/t")).unwrap();
        assert!(value.starts_with(b"/t/.sydney-portable/glibc "));
        assert!(value.ends_with(b"   "));
    }

    #[test]
    fn apply_then_restore_gives_back_the_packed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let patch = sample();
        let mut packed = b"ELF.".to_vec();
        packed.extend_from_slice(&patch.placeholder());
        packed.extend_from_slice(b"rest");
        fs::create_dir_all(dir.path().join(DIR)).unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/app"), &packed).unwrap();
        fs::write(
            dir.path().join(PATCH_LIST),
            render(std::slice::from_ref(&patch)),
        )
        .unwrap();
        assert_eq!(apply(dir.path(), Path::new("/a")).unwrap(), 1);
        let mut patched = fs::read(dir.path().join("bin/app")).unwrap();
        assert!(patched.starts_with(b"ELF./a/.sydney-portable/glibc\0"));
        // A second apply finds no placeholder: refused, not doubled.
        assert!(apply(dir.path(), Path::new("/a")).is_err());
        // Restoring for another tree path is refused; for this one, exact.
        assert!(restore(&[&patch], Path::new("/b"), &mut patched.clone()).is_err());
        restore(&[&patch], Path::new("/a"), &mut patched).unwrap();
        assert_eq!(patched, packed);
    }
}
