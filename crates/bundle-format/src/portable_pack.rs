//! `pack --portable`: what a payload's programs need from the build host,
//! carried inside the payload, and the placeholders that point at it.
//!
//! For every dynamic ELF file in the folder the build host's own loader is
//! asked which libraries it would load (`<loader> --list FILE`, what `ldd`
//! does: the ld.so cache, standard directories, RPATH and RUNPATH, exactly
//! as at run time). The loader and those libraries are copied under
//! `.sydney-portable/<glibc|musl>/`; each dynamic program gets a
//! PT_INTERP placeholder and a DT_RPATH placeholder (never RUNPATH, which
//! ld.so does not apply to a dependency's dependencies), rewritten with
//! `object-rewrite`. Each `#!/bin/sh` script gets a placeholder interpreter
//! and a static shell is carried as `.sydney-portable/bin/sh`. The stub
//! fills the placeholders at extraction ([`crate::portable`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use object::Endianness;
use object::elf::{DT_RPATH, FileHeader64, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};

use crate::doctor::{ElfFacts, MAX_ELF_FILE, elf_facts};
use crate::error::{FormatError, Result};
use crate::manifest::EntryKind;
use crate::pack::SourceEntry;
use crate::portable::{self, BUILD_KEY, DIR, EPMD_KEY, PATCH_LIST, Pad, Patch, RESERVED};
use crate::shebang;

/// How to make a payload portable.
#[derive(Debug, Clone, Default)]
pub struct PortableOptions {
    /// The static shell to carry for `#!/bin/sh` scripts; default
    /// `/bin/busybox` (Debian's `busybox-static`, whose shell runs its
    /// applets without links or PATH).
    pub shell: Option<PathBuf>,
}

/// Default static shell.
pub const DEFAULT_SHELL: &str = "/bin/busybox";

/// The longest `#!` line the kernel reads whole (its buffer, less the newline).
const SHEBANG_MAX: usize = shebang::BINPRM_BUF_SIZE - 1;

/// Two C libraries, kept apart (both may name a `libz.so.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Libc {
    Glibc,
    Musl,
}

impl Libc {
    fn dir(self) -> &'static str {
        match self {
            Libc::Glibc => "glibc",
            Libc::Musl => "musl",
        }
    }
}

/// A dynamic ELF file of the folder.
struct Dynamic {
    rel: String,
    path: PathBuf,
    libc: Libc,
    /// Its PT_INTERP (programs only).
    interpreter: Option<String>,
    bytes: Vec<u8>,
}

/// Rewrites `entries` (from [`crate::pack::scan`] of `dir`) so that the
/// payload carries what its programs need; returns the build facts to
/// record in the manifest.
pub fn carry(
    dir: &Path,
    entries: &mut Vec<SourceEntry>,
    options: &PortableOptions,
) -> Result<Vec<(String, String)>> {
    let unpackable = |path: &Path, reason: String| FormatError::Unpackable {
        path: path.to_owned(),
        reason,
    };
    if entries.iter().any(|e| e.rel == DIR) {
        return Err(unpackable(
            &dir.join(DIR),
            format!("{DIR} is reserved for what --portable carries; rename it"),
        ));
    }
    let canonical_dir =
        fs::canonicalize(dir).map_err(|err| FormatError::io("cannot resolve", dir, err))?;

    let mut dynamics = Vec::new();
    let mut scripts = Vec::new();
    let mut epmd = None;
    for entry in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let mut head = Vec::with_capacity(256);
        {
            use std::io::Read;
            let file = fs::File::open(&entry.path)
                .map_err(|err| FormatError::io("cannot open", &entry.path, err))?;
            file.take(256)
                .read_to_end(&mut head)
                .map_err(|err| FormatError::io("cannot read", &entry.path, err))?;
        }
        if head.starts_with(b"\x7fELF") && entry.size <= MAX_ELF_FILE {
            let bytes = fs::read(&entry.path)
                .map_err(|err| FormatError::io("cannot read", &entry.path, err))?;
            let Some(facts) = elf_facts(&bytes) else {
                continue;
            };
            if is_epmd(&entry.rel) {
                epmd = Some(entry.rel.clone());
            }
            if facts.foreign || facts.is_static() {
                continue;
            }
            let arch = crate::elf::machine(&bytes).and_then(crate::elf::Arch::from_machine);
            if let Some(arch) = arch.filter(|a| a.name() != std::env::consts::ARCH) {
                return Err(unpackable(
                    &entry.path,
                    format!(
                        "it is an {arch} program, and --portable carries this machine's ({}) \
                         loader and libraries; pack it --portable on an {arch} machine",
                        std::env::consts::ARCH
                    ),
                ));
            }
            dynamics.push(Dynamic {
                rel: entry.rel.clone(),
                path: entry.path.clone(),
                libc: libc_of(&facts),
                interpreter: facts.interpreter.clone(),
                bytes,
            });
        } else if entry.mode & 0o111 != 0 && head.starts_with(b"#!") {
            scripts.push((entry.rel.clone(), entry.path.clone()));
        }
    }

    // The loaders: each program's own; libraries use the one of their C library.
    let mut loaders: BTreeMap<Libc, PathBuf> = BTreeMap::new();
    for program in &dynamics {
        if let Some(interp) = &program.interpreter {
            let known = loaders
                .entry(program.libc)
                .or_insert_with(|| PathBuf::from(interp));
            if known.as_path() != Path::new(interp) {
                return Err(unpackable(
                    &program.path,
                    format!(
                        "its loader {interp} differs from {} used by other programs; \
                         one loader per C library is supported",
                        known.display()
                    ),
                ));
            }
        }
    }
    // Programs with no loader of their own (shared libraries) use the
    // standard one of their C library on this machine's architecture.
    for program in &dynamics {
        loaders.entry(program.libc).or_insert_with(|| {
            PathBuf::from(match (program.libc, std::env::consts::ARCH) {
                (Libc::Glibc, "aarch64") => "/lib/ld-linux-aarch64.so.1",
                (Libc::Musl, "aarch64") => "/lib/ld-musl-aarch64.so.1",
                (Libc::Glibc, _) => "/lib64/ld-linux-x86-64.so.2",
                (Libc::Musl, _) => "/lib/ld-musl-x86_64.so.1",
            })
        });
    }

    // Ask each loader what it would load, as the build host resolves it.
    let mut libraries: BTreeMap<(Libc, String), PathBuf> = BTreeMap::new();
    for program in &dynamics {
        let loader = &loaders[&program.libc];
        let loader_real = fs::canonicalize(loader).map_err(|err| {
            unpackable(
                &program.path,
                format!(
                    "its loader {} is not on this machine ({err}); pack --portable on the \
                     machine (or in the image) the release was built on",
                    loader.display()
                ),
            )
        })?;
        for (name, found) in list_libraries(loader, &program.path)? {
            let real = fs::canonicalize(&found)
                .map_err(|err| FormatError::io("cannot resolve", &found, err))?;
            if real == loader_real || real.starts_with(&canonical_dir) {
                continue;
            }
            let key = (program.libc, name.clone());
            if let Some(other) = libraries.get(&key) {
                if *other != real {
                    return Err(unpackable(
                        &program.path,
                        format!(
                            "needs {name} from {}, but another program needs it from {}",
                            real.display(),
                            other.display()
                        ),
                    ));
                }
            }
            libraries.insert(key, real);
        }
    }

    let mut added = Vec::new();
    let mut patches = Vec::new();
    let add_dir = |added: &mut Vec<SourceEntry>, rel: String| {
        added.push(SourceEntry {
            path: dir.join(&rel),
            rel,
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            link: None,
            contents: None,
        });
    };
    let add_file = |added: &mut Vec<SourceEntry>, rel: String, bytes: Vec<u8>, from: &Path| {
        added.push(SourceEntry {
            rel,
            path: from.to_owned(),
            kind: EntryKind::File,
            mode: 0o755,
            size: bytes.len() as u64,
            link: None,
            contents: Some(Arc::from(bytes)),
        });
    };
    add_dir(&mut added, DIR.to_owned());

    // Programs and the folder's own libraries.
    let mut replaced: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for item in &dynamics {
        let loader_name = file_name(&loaders[&item.libc]);
        let lib_dir = format!("{DIR}/{}", item.libc.dir());
        if item.interpreter.is_some() {
            let (bytes, interp_at, rpath_at) =
                rewrite_program(&item.bytes).map_err(|reason| unpackable(&item.path, reason))?;
            patches.push(Patch {
                offset: interp_at,
                len: RESERVED as u64,
                pad: Pad::Nul,
                suffix: format!("{lib_dir}/{loader_name}"),
                path: item.rel.clone(),
            });
            patches.push(Patch {
                offset: rpath_at,
                len: RESERVED as u64,
                pad: Pad::Nul,
                suffix: lib_dir,
                path: item.rel.clone(),
            });
            replaced.insert(item.rel.clone(), bytes);
        } else if let Some(bytes) =
            runpath_to_rpath(&item.bytes, false).map_err(|reason| unpackable(&item.path, reason))?
        {
            replaced.insert(item.rel.clone(), bytes);
        }
    }

    // The loaders and libraries.
    for (libc, loader) in &loaders {
        let lib_dir = format!("{DIR}/{}", libc.dir());
        add_dir(&mut added, lib_dir.clone());
        let mut files: BTreeMap<String, (Vec<u8>, PathBuf)> = BTreeMap::new();
        let bytes = fs::read(loader).map_err(|err| FormatError::io("cannot read", loader, err))?;
        files.insert(file_name(loader), (bytes, loader.clone()));
        for ((_, name), path) in libraries.iter().filter(|((l, _), _)| l == libc) {
            let bytes = fs::read(path).map_err(|err| FormatError::io("cannot read", path, err))?;
            // A bundled library's RUNPATH names build-host directories and
            // would make ld.so skip the program's RPATH for its needs.
            let bytes = runpath_to_rpath(&bytes, true)
                .map_err(|reason| unpackable(path, reason))?
                .unwrap_or(bytes);
            files.insert(name.clone(), (bytes, path.clone()));
        }
        for (name, (bytes, from)) in files {
            add_file(&mut added, format!("{lib_dir}/{name}"), bytes, &from);
        }
    }

    // The shell and the scripts.
    let mut shell_note = String::new();
    if !scripts.is_empty() {
        let mut rewritten = Vec::new();
        for (rel, path) in &scripts {
            let text = fs::read(path).map_err(|err| FormatError::io("cannot read", path, err))?;
            let (bytes, patch) =
                rewrite_script(rel, &text).map_err(|reason| unpackable(path, reason))?;
            if let Some(patch) = patch {
                patches.push(patch);
                rewritten.push((rel.clone(), bytes));
            }
        }
        if !rewritten.is_empty() {
            let shell = options
                .shell
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SHELL));
            let bytes = fs::read(&shell).map_err(|err| {
                unpackable(
                    &shell,
                    format!(
                        "the static shell for the #!/bin/sh scripts is missing ({err}); \
                         apt install busybox-static, or pass a static shell"
                    ),
                )
            })?;
            match elf_facts(&bytes) {
                Some(facts) if facts.is_static() && !facts.foreign => {}
                _ => {
                    return Err(unpackable(
                        &shell,
                        "the shell is not a static program for this machine; install \
                         busybox-static or pass a static shell"
                            .to_owned(),
                    ));
                }
            }
            add_dir(&mut added, format!("{DIR}/bin"));
            add_file(&mut added, format!("{DIR}/bin/sh"), bytes, &shell);
            shell_note = format!(", shell {}", file_name(&shell));
            replaced.extend(rewritten);
        }
    }

    patches.sort_by(|a, b| (&a.path, a.offset).cmp(&(&b.path, b.offset)));
    let list = portable::render(&patches).into_bytes();
    add_file(
        &mut added,
        PATCH_LIST.to_owned(),
        list,
        &dir.join(PATCH_LIST),
    );
    if let Some(list) = added.last_mut() {
        list.mode = 0o644;
    }

    for entry in entries.iter_mut() {
        if let Some(bytes) = replaced.remove(&entry.rel) {
            entry.size = bytes.len() as u64;
            entry.contents = Some(Arc::from(bytes));
        }
    }
    added.sort_by(|a, b| a.rel.cmp(&b.rel));
    entries.extend(added);

    let carried: Vec<String> = loaders
        .keys()
        .map(|libc| {
            let count = libraries.keys().filter(|(l, _)| l == libc).count();
            format!("the {} loader and {count} libraries", libc.dir())
        })
        .collect();
    let mut build = vec![(
        BUILD_KEY.to_owned(),
        format!(
            "{}{shell_note}; {} placeholders",
            if carried.is_empty() {
                "no loader or libraries (no dynamic programs)".to_owned()
            } else {
                carried.join(", ")
            },
            patches.len()
        ),
    )];
    if let Some(epmd) = epmd {
        build.push((EPMD_KEY.to_owned(), epmd));
    }
    Ok(build)
}

fn is_epmd(rel: &str) -> bool {
    let mut parts = rel.rsplit('/');
    parts.next() == Some("epmd")
        && parts.next() == Some("bin")
        && parts.next().is_some_and(|erts| erts.starts_with("erts-"))
}

fn libc_of(facts: &ElfFacts) -> Libc {
    if facts.is_musl() {
        Libc::Musl
    } else {
        Libc::Glibc
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `(name, path)` of every library `loader` would load for `file`.
fn list_libraries(loader: &Path, file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let output = Command::new(loader)
        .arg("--list")
        .arg(file)
        .env_clear()
        .output()
        .map_err(|err| FormatError::io("cannot run", loader, err))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed = |why: String| FormatError::Unpackable {
        path: file.to_owned(),
        reason: why,
    };
    let mut found = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        let Some((name, rest)) = line.split_once(" => ") else {
            continue;
        };
        if rest.starts_with("not found") {
            return Err(failed(format!(
                "its library {name} is not found on this machine; install it (or pack where \
                 the release runs)"
            )));
        }
        let path = rest.split(" (").next().unwrap_or(rest);
        found.push((name.to_owned(), PathBuf::from(path)));
    }
    if !output.status.success() {
        return Err(failed(format!(
            "{} --list failed: {}",
            loader.display(),
            stderr.trim()
        )));
    }
    Ok(found)
}

/// Sets a program's interpreter and RPATH to placeholders; returns the new
/// bytes and the file offsets of the two placeholders.
fn rewrite_program(bytes: &[u8]) -> Result<(Vec<u8>, u64, u64), String> {
    let mut rewriter = object_rewrite::Rewriter::read(bytes).map_err(|e| e.to_string())?;
    let interp = &portable::placeholder(RESERVED, Pad::Nul)[..RESERVED - 1];
    let rpath_placeholder = &portable::placeholder(RESERVED, Pad::Nul)[..RESERVED - 1];
    let mut rpath = Vec::new();
    if let Some(old) = rewriter.elf_runpath() {
        if !old.is_empty() {
            rpath.extend_from_slice(old);
            rpath.push(b':');
        }
    }
    let placeholder_at = rpath.len() as u64;
    rpath.extend_from_slice(rpath_placeholder);
    rewriter
        .elf_set_interpreter(interp.to_vec())
        .and_then(|()| rewriter.elf_set_runpath(rpath))
        .and_then(|()| rewriter.elf_use_rpath())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    rewriter.write(&mut out).map_err(|e| e.to_string())?;
    let (interp_at, rpath_at) =
        locate(&out).ok_or("the rewritten program has no interpreter or RPATH string")?;
    let rpath_at = rpath_at + placeholder_at;
    let expected = portable::placeholder(RESERVED, Pad::Nul);
    for at in [interp_at, rpath_at] {
        if out.get(at as usize..at as usize + RESERVED) != Some(&expected[..]) {
            return Err("the rewritten program's placeholder is not where it should be".into());
        }
    }
    Ok((out, interp_at, rpath_at))
}

/// File offsets of the PT_INTERP string and of the DT_RPATH string.
fn locate(bytes: &[u8]) -> Option<(u64, u64)> {
    let header = FileHeader64::<Endianness>::parse(bytes).ok()?;
    let endian = header.endian().ok()?;
    let interp = header
        .program_headers(endian, bytes)
        .ok()?
        .iter()
        .find(|s| s.p_type(endian) == PT_INTERP)?
        .p_offset(endian);
    let sections = header.sections(endian, bytes).ok()?;
    let (entries, link) = sections.dynamic(endian, bytes).ok()??;
    let strtab = sections.section(link).ok()?;
    let rpath = entries
        .iter()
        .find(|d| d.d_tag(endian) == u64::from(DT_RPATH))?
        .d_val(endian);
    Some((interp, strtab.sh_offset(endian) + rpath))
}

/// A library with a DT_RUNPATH: turned into DT_RPATH (a folder's own
/// library keeps its directories), or removed (`delete`, for a carried
/// build-host library). `None` if it has none.
fn runpath_to_rpath(bytes: &[u8], delete: bool) -> Result<Option<Vec<u8>>, String> {
    let facts = has_runpath(bytes);
    if !facts {
        return Ok(None);
    }
    let mut rewriter = object_rewrite::Rewriter::read(bytes).map_err(|e| e.to_string())?;
    if delete {
        rewriter.elf_delete_runpath().map_err(|e| e.to_string())?;
    } else {
        rewriter.elf_use_rpath().map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    rewriter.write(&mut out).map_err(|e| e.to_string())?;
    Ok(Some(out))
}

fn has_runpath(bytes: &[u8]) -> bool {
    let Ok(header) = FileHeader64::<Endianness>::parse(bytes) else {
        return false;
    };
    let Ok(endian) = header.endian() else {
        return false;
    };
    let Ok(sections) = header.sections(endian, bytes) else {
        return false;
    };
    let Ok(Some((entries, _))) = sections.dynamic(endian, bytes) else {
        return false;
    };
    entries
        .iter()
        .any(|d| d.d_tag(endian) == u64::from(object::elf::DT_RUNPATH))
}

/// Points a `#!/bin/sh` (or `#!/bin/ash`) script at the carried shell.
/// Other interpreters are refused: the payload would still need them.
fn rewrite_script(rel: &str, text: &[u8]) -> Result<(Vec<u8>, Option<Patch>), String> {
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        return Err("its #! line does not end".to_owned());
    };
    let Some(line) = shebang::parse(text) else {
        return Err("its #! line names no interpreter the kernel can read".to_owned());
    };
    let interpreter = String::from_utf8_lossy(line.interpreter);
    if !matches!(&*interpreter, "/bin/sh" | "/bin/ash" | "/usr/bin/sh") {
        return Err(format!(
            "its interpreter {} cannot be carried by --portable (only /bin/sh \
             scripts can); rewrite it as a /bin/sh script or drop its exec bit",
            interpreter.escape_debug()
        ));
    }
    let mut out = b"#!".to_vec();
    out.extend_from_slice(&portable::placeholder(RESERVED, Pad::Space));
    if let Some(argument) = line.argument.filter(|a| !a.is_empty()) {
        out.push(b' ');
        out.extend_from_slice(argument);
    }
    if out.len() > SHEBANG_MAX {
        return Err("its #! line is too long to hold the carried shell's path".to_owned());
    }
    out.extend_from_slice(&text[end..]);
    Ok((
        out,
        Some(Patch {
            offset: 2,
            len: RESERVED as u64,
            pad: Pad::Space,
            suffix: format!("{DIR}/bin/sh"),
            path: rel.to_owned(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_get_a_placeholder_and_keep_their_argument() {
        let (out, patch) = rewrite_script("bin/x", b"#!/bin/sh -e\necho hi\n").unwrap();
        let patch = patch.unwrap();
        assert_eq!(&out[2..2 + RESERVED], &patch.placeholder()[..]);
        assert!(out.ends_with(b" -e\necho hi\n"));
        assert!(rewrite_script("bin/x", b"#!/usr/bin/python3\n").is_err());
        assert!(rewrite_script("bin/x", b"#!/bin/sh").is_err());
        // The kernel's rules: a DOS line ending is part of the interpreter.
        let err = rewrite_script("bin/x", b"#!/bin/sh\r\necho\r\n").unwrap_err();
        assert!(err.contains("/bin/sh\\r cannot be carried"), "{err}");
        assert!(rewrite_script("bin/x", b"#!  \n").is_err());
    }

    #[test]
    fn epmd_is_found_by_its_place_in_erts() {
        assert!(is_epmd("erts-13.1.5/bin/epmd"));
        assert!(!is_epmd("bin/epmd"));
        assert!(!is_epmd("erts-13.1.5/bin/epmd.sh"));
    }

    #[test]
    fn a_dynamic_program_is_rewritten_with_both_placeholders() {
        // A dynamic glibc program every Debian machine has. (Programs linked
        // by lld, such as this test binary, are refused by object-rewrite:
        // "Overlapping immovable sections"; see decision 0060.)
        let bytes = fs::read("/bin/true").unwrap();
        let (out, interp, rpath) = rewrite_program(&bytes).unwrap();
        let facts = elf_facts(&out).unwrap();
        assert_eq!(
            facts.interpreter.as_deref().map(str::len),
            Some(RESERVED - 1)
        );
        assert_ne!(interp, rpath);
        assert!(!has_runpath(&out));
    }
}
