//! Getting from a verified bundle to a running entry: choose a cache root,
//! make sure the tree exists (extracting it if needed), decide how to exec,
//! and exec (or, as PID 1, stay as a minimal init).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bundle_format::{Bundle, EntryKind, ErrorKind, FormatError};

use crate::cache::{self, Decision, Mode, Placement, Source};
use crate::exit::{Exit, coded};
use crate::sys::{self, ExecTarget};
use crate::tree::{self, Tree};
use crate::ui::note;

/// How the entry will be executed.
#[derive(Debug)]
pub enum Plan {
    /// `execve` of a file in the tree.
    Path(PathBuf),
    /// `execveat` of an in-memory copy (noexec mount, or nothing writable).
    Memory(File),
    /// A `#!` script on a noexec mount: exec its interpreter on it.
    Script {
        /// The interpreter from the `#!` line.
        interpreter: PathBuf,
        /// Its optional single argument.
        argument: Option<OsString>,
        /// The script in the tree.
        script: PathBuf,
    },
}

/// Everything needed to exec the entry, made by [`prepare`] and consumed
/// by [`exec`], `init::run` and `lifecycle::daemon`.
#[derive(Debug)]
pub struct Launch {
    /// How to exec.
    pub plan: Plan,
    /// The tree (its lock must stay open across exec), if any.
    pub tree: Option<Tree>,
    /// The chain's decision (for the state dir).
    pub decision: Decision,
    /// The environment the chain was read from (for the state dir).
    pub cache_env: cache::Env,
    /// The entry's argument vector.
    pub argv: Vec<CString>,
    /// The variables the stub sets for the entry (see [`command_line`]).
    pub env: Vec<CString>,
}

impl Launch {
    /// The entry's path as argv[0] and for messages.
    pub fn argv0(&self, bundle: &Bundle<'_>) -> OsString {
        match &self.tree {
            Some(tree) => tree.path.join(&bundle.manifest().entry).into_os_string(),
            None => OsString::from(&bundle.manifest().entry),
        }
    }
}

/// Walks the cache chain and gets the entry ready to exec, with the
/// manifest's default arguments first if `default_args`, then `user_args`.
pub fn prepare(bundle: &Bundle<'_>, default_args: bool, user_args: &[String]) -> Result<Launch> {
    let manifest = bundle.manifest();
    let tree_name = bundle.tree_dir_name();
    let cache_env = cache::Env::from_process();
    let candidates = cache::candidates(&cache_env, manifest.default_cache_dir.as_deref());
    let mut skip = Vec::new();
    let mut launch = loop {
        let decision = cache::choose(&candidates, &tree_name, &skip)
            .map_err(cache::ExplicitRefused::into_error)?;
        let root = match &decision.placement {
            Placement::Root(root) => root.clone(),
            Placement::Memory => break prepare_in_memory(bundle, decision, cache_env)?,
        };
        announce(&decision);
        let tree_path = root.candidate.root.join(&tree_name);
        let existing = tree::open_existing(&tree_path).map_err(|err| match err.raw_os_error() {
            Some(libc::ENOTDIR | libc::ELOOP) => coded(
                Exit::NoCacheDir,
                format!(
                    "{} is in the way: this bundle's tree belongs there, but it is a file \
                         or a symlink, not a directory; remove it",
                    tree_path.display()
                ),
            ),
            _ => anyhow::Error::new(err).context(format!("cannot open {}", tree_path.display())),
        })?;
        let tree = match existing {
            Some(tree) => tree,
            None => match extract_into(bundle, &root.candidate.root) {
                Ok(tree) => tree,
                Err(err)
                    if err.kind() == ErrorKind::NoSpace
                        && root.candidate.source != Source::Explicit =>
                {
                    note(&format!(
                        "{} is full; trying the next cache directory",
                        root.candidate.root.display()
                    ));
                    skip.push(root.candidate.root.clone());
                    continue;
                }
                Err(err) => return Err(extraction_error(err, &root.candidate)),
            },
        };
        let plan = match root.mode {
            Mode::Exec => Plan::Path(tree.path.join(&manifest.entry)),
            Mode::NoExec => plan_noexec(&tree.path.join(&manifest.entry))?,
        };
        break Launch {
            plan,
            tree: Some(tree),
            decision,
            cache_env,
            argv: Vec::new(),
            env: Vec::new(),
        };
    };
    command_line(bundle, &mut launch, default_args, user_args)?;
    Ok(launch)
}

/// Extracts, then cleans up crash leftovers and old versions.
///
/// This and the other paths a warm start does not take are never inlined
/// into [`prepare`]: their stack (about 10 KB in all) would make its frame
/// that large, and a frame over a page is probed page by page on entry,
/// which cost every warm start two or three page faults.
#[inline(never)]
fn extract_into(bundle: &Bundle<'_>, root: &Path) -> Result<Tree, FormatError> {
    let extracted = tree::extract(bundle, root)?;
    if extracted.ours {
        let current = bundle.tree_dir_name();
        let report = tree::housekeeping(
            root,
            &bundle.manifest().name,
            Some(&current),
            tree::KEEP_OLDER,
        );
        if report.foreign {
            note(&format!(
                "{} also holds files the bundle did not create, so old versions are never \
                 removed from it; give the cache a directory of its own",
                root.display()
            ));
        }
    }
    Ok(extracted.tree)
}

fn extraction_error(err: FormatError, candidate: &cache::Candidate) -> anyhow::Error {
    let root = candidate.root.display();
    let message = match err.kind() {
        ErrorKind::NoSpace => format!(
            "disk full: cannot extract the payload into {root}; free some space or point \
             SYDNEY_BUNDLE_DIR at a file system with room"
        ),
        ErrorKind::PermissionDenied => format!(
            "permission denied: cannot extract the payload into {root}; point \
             SYDNEY_BUNDLE_DIR at a directory you can write"
        ),
        _ => format!("cannot extract the payload into {root}"),
    };
    anyhow::Error::new(err).context(message)
}

/// Says once, on stderr, when the chain fell back from its first choice.
fn announce(decision: &Decision) {
    let Some(root) = decision.root() else {
        return;
    };
    let place = root.candidate.root.display();
    if root.mode == Mode::NoExec {
        note(&format!(
            "{place} is mounted noexec: its tree holds the data files and the entry runs from memory{}",
            skipped(decision)
        ));
    } else if !decision.refusals.is_empty() {
        note(&format!("using {place}{}", skipped(decision)));
    }
}

fn skipped(decision: &Decision) -> String {
    if decision.refusals.is_empty() {
        String::new()
    } else {
        format!(" (skipped {})", decision.refusal_summary())
    }
}

/// Nothing writable: run the entry from memory, without a tree.
#[inline(never)]
fn prepare_in_memory(
    bundle: &Bundle<'_>,
    decision: Decision,
    cache_env: cache::Env,
) -> Result<Launch> {
    let manifest = bundle.manifest();
    if manifest.needs_tree {
        return Err(coded(
            Exit::NoCacheDir,
            format!(
                "no usable cache directory, and {} needs its extracted tree (tried {}); \
                 set SYDNEY_BUNDLE_DIR to a writable directory",
                manifest.name,
                decision.refusal_summary()
            ),
        ));
    }
    let index = bundle.index()?;
    let entry = resolve_entry(&index, &manifest.entry)?;
    let unavailable: Vec<&str> = index
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.path != entry)
        .map(|e| e.path.as_str())
        .collect();
    let listed = if unavailable.is_empty() {
        "none".to_owned()
    } else if unavailable.len() > 8 {
        format!(
            "{} and {} more",
            unavailable[..8].join(", "),
            unavailable.len() - 8
        )
    } else {
        unavailable.join(", ")
    };
    note(&format!(
        "no writable directory for the cache ({}); running {} from memory without its tree \
         (BUNDLE_ROOT unset); unavailable files: {listed}",
        decision.refusal_summary(),
        manifest.entry
    ));
    bundle.verify_payload()?;
    let memfd = entry_from_payload(bundle, &entry)?;
    Ok(Launch {
        plan: Plan::Memory(memfd),
        tree: None,
        decision,
        cache_env,
        argv: Vec::new(),
        env: Vec::new(),
    })
}

/// Follows in-tree symlinks from the entry to the regular file it names.
fn resolve_entry(index: &bundle_format::Index, entry: &str) -> Result<String> {
    index.resolve(entry).map(|e| e.path.clone()).ok_or_else(|| {
        coded(
            Exit::Corrupt,
            format!("the entry {entry} is not in the payload"),
        )
    })
}

/// Streams the payload until the entry's file and copies it into a memfd.
fn entry_from_payload(bundle: &Bundle<'_>, entry: &str) -> Result<File> {
    bundle
        .read_file(entry, |file| {
            let mut head = [0u8; 4];
            let n = read_head(&mut *file.contents, &mut head)?;
            to_memfd(&head[..n], file.contents, entry)
        })?
        .ok_or_else(|| {
            coded(
                Exit::Corrupt,
                format!("the entry {entry} is not in the payload"),
            )
        })
}

/// The tree is on a noexec mount: copy an ELF entry to memory, or run a
/// script through its interpreter.
#[inline(never)]
fn plan_noexec(entry: &Path) -> Result<Plan> {
    let mut file =
        File::open(entry).with_context(|| format!("cannot open the entry {}", entry.display()))?;
    let mut head = [0u8; bundle_format::shebang::BINPRM_BUF_SIZE];
    let n = read_head(&mut file, &mut head)?;
    if let Some((interpreter, argument)) = parse_shebang(&head[..n]) {
        return Ok(Plan::Script {
            interpreter,
            argument,
            script: entry.to_owned(),
        });
    }
    let memfd = to_memfd(&head[..n], &mut file, &entry.display().to_string())?;
    Ok(Plan::Memory(memfd))
}

fn read_head(file: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Copies a program (whose first bytes, `head`, were already read from
/// `rest`) into an executable memfd. Only ELF programs can run from memory.
fn to_memfd(head: &[u8], rest: &mut (impl Read + ?Sized), name: &str) -> Result<File> {
    if !head.starts_with(b"\x7fELF") {
        let what = if head.starts_with(b"#!") {
            "a #! script, which needs its extracted tree to run"
        } else {
            "not an ELF program"
        };
        return Err(coded(
            Exit::CannotRun,
            format!(
                "cannot run {name} from memory: it is {what}; \
                 make a writable, exec-capable directory available via SYDNEY_BUNDLE_DIR"
            ),
        ));
    }
    let label = Path::new(name)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or("entry");
    let mut memfd = sys::memfd_exec(label).map_err(|err| {
        coded(
            Exit::CannotRun,
            format!("cannot run {name} from memory: memfd_create failed: {err}"),
        )
    })?;
    memfd
        .write_all(head)
        .and_then(|()| io::copy(rest, &mut memfd).map(drop))
        .with_context(|| format!("cannot copy {name} into memory"))?;
    Ok(memfd)
}

/// Parses `#!interpreter [argument]` by the kernel's rules
/// ([`bundle_format::shebang`]).
pub fn parse_shebang(head: &[u8]) -> Option<(PathBuf, Option<OsString>)> {
    let line = bundle_format::shebang::parse(head)?;
    let argument = line.argument.map(|arg| OsString::from_vec(arg.to_vec()));
    Some((PathBuf::from(OsStr::from_bytes(line.interpreter)), argument))
}

/// Fills in the argument vector for the entry, and the variables the stub
/// sets for it (`BUNDLE_ROOT`, `BUNDLE_NAME`, `BUNDLE_VERSION`, and the
/// manifest's defaults). The rest of the environment is passed on as it is,
/// by [`sys::exec`], without copying it: copying every variable was most of
/// the warm start's instructions. Not inlined, so that [`prepare`]'s frame
/// stays as small as its warm path needs (see [`extract_into`]).
#[inline(never)]
fn command_line(
    bundle: &Bundle<'_>,
    launch: &mut Launch,
    default_args: bool,
    user_args: &[String],
) -> Result<()> {
    let manifest = bundle.manifest();
    let argv0 = launch.argv0(bundle);
    let mut argv: Vec<Vec<u8>> = Vec::new();
    match &launch.plan {
        Plan::Script {
            interpreter,
            argument,
            script,
        } => {
            argv.push(interpreter.as_os_str().as_bytes().to_vec());
            if let Some(argument) = argument {
                argv.push(argument.as_bytes().to_vec());
            }
            argv.push(script.as_os_str().as_bytes().to_vec());
        }
        Plan::Path(_) | Plan::Memory(_) => argv.push(argv0.as_bytes().to_vec()),
    }
    if default_args {
        argv.extend(manifest.args.iter().map(|a| a.as_bytes().to_vec()));
    }
    argv.extend(user_args.iter().map(|a| a.as_bytes().to_vec()));

    let mut bundle_env: Vec<Vec<u8>> = Vec::with_capacity(3 + manifest.env.len());
    let tree = launch
        .tree
        .as_ref()
        .map(|tree| tree.path.as_os_str().as_bytes());
    if let Some(tree) = tree {
        bundle_env.push([b"BUNDLE_ROOT=", tree].concat());
    }
    bundle_env.push(format!("BUNDLE_NAME={}", manifest.name).into_bytes());
    bundle_env.push(format!("BUNDLE_VERSION={}", manifest.version).into_bytes());
    if !manifest.env.is_empty() {
        let state = cache::state_dir(&launch.cache_env, &launch.decision, &manifest.name).ok();
        let state = state.as_ref().map(|dir| dir.as_os_str().as_bytes());
        for (name, value) in &manifest.env {
            // Defaults only: the caller's environment wins.
            if std::env::var_os(name).is_some() {
                continue;
            }
            if let Some(value) = expand(value, tree, state) {
                bundle_env.push([name.as_bytes(), b"=", &value].concat());
            }
        }
    }
    let to_c = |v: Vec<u8>| CString::new(v).context("an argument or variable contains a NUL byte");
    launch.argv = argv.into_iter().map(to_c).collect::<Result<_>>()?;
    launch.env = bundle_env.into_iter().map(to_c).collect::<Result<_>>()?;
    Ok(())
}

/// An environment default's value with `${BUNDLE_ROOT}` and
/// `${BUNDLE_STATE_DIR}` replaced; `None` (leave the variable unset) when it
/// names one this run does not have. Anything else is kept as written.
fn expand(value: &str, tree: Option<&[u8]>, state: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len() + 64);
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'$') {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
        let (with, len) = if rest.starts_with(b"${BUNDLE_ROOT}") {
            (tree?, 14)
        } else if rest.starts_with(b"${BUNDLE_STATE_DIR}") {
            (state?, 19)
        } else {
            (&b"$"[..], 1)
        };
        out.extend_from_slice(with);
        rest = &rest[len..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// Replaces this process with the entry. Returns only on failure, with an
/// error explaining why the entry could not run.
pub fn exec(bundle: &Bundle<'_>, launch: &Launch) -> anyhow::Error {
    let (argv, bundle_env) = (&launch.argv[..], &launch.env[..]);
    if let Some(tree) = &launch.tree {
        if let Err(err) = sys::keep_across_exec(&tree.lock) {
            return anyhow::Error::new(err).context("cannot keep the tree lock across exec");
        }
    }
    let err = match &launch.plan {
        Plan::Path(path) => sys::exec(ExecTarget::Path(path), argv, bundle_env),
        Plan::Memory(file) => sys::exec(
            ExecTarget::Fd(std::os::fd::AsRawFd::as_raw_fd(file)),
            argv,
            bundle_env,
        ),
        Plan::Script { interpreter, .. } => {
            sys::exec(ExecTarget::Path(interpreter), argv, bundle_env)
        }
    };
    explain_exec_error(bundle, launch, err)
}

/// Turns an exec failure into a message that names the real cause.
fn explain_exec_error(bundle: &Bundle<'_>, launch: &Launch, err: io::Error) -> anyhow::Error {
    let entry = launch.argv0(bundle).to_string_lossy().into_owned();
    match (err.raw_os_error(), &launch.plan) {
        (Some(libc::ENOENT), Plan::Script { interpreter, .. }) => coded(
            Exit::NotFound,
            format!(
                "cannot run {entry}: its interpreter {} does not exist on this host; \
                 run `inspect --doctor` to see what the payload needs",
                interpreter.display()
            ),
        ),
        (Some(libc::ENOENT), Plan::Path(path)) if path.exists() => {
            let needs = missing_interpreter(path).unwrap_or_else(|| "its loader".to_owned());
            coded(
                Exit::NotFound,
                format!(
                    "cannot run {entry}: {needs} does not exist on this host; \
                     run `inspect --doctor` to see what the payload needs"
                ),
            )
        }
        (Some(libc::ENOENT), _) => coded(Exit::NotFound, format!("cannot run {entry}: not found")),
        (Some(libc::EACCES), Plan::Path(path)) => coded(
            Exit::NotExecutable,
            format!("cannot run {entry}: {}", why_denied(path)),
        ),
        (Some(libc::EPERM | libc::EACCES), Plan::Memory(_)) => coded(
            Exit::CannotRun,
            format!(
                "cannot run {entry} from memory: the system forbids it ({err}; e.g. systemd's \
                 MemoryDenyWriteExecute or vm.memfd_noexec); point SYDNEY_BUNDLE_DIR at a \
                 writable, exec-capable directory"
            ),
        ),
        (Some(libc::ENOEXEC), _) => coded(
            Exit::NotExecutable,
            format!("cannot run {entry}: not an executable format for this host"),
        ),
        _ => coded(Exit::NotExecutable, format!("cannot run {entry}: {err}")),
    }
}

/// Why exec of `path` was refused with EACCES: no exec bit, or a noexec mount.
fn why_denied(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => format!(
            "it is not executable (mode {:o}); the payload's entry needs an exec bit, pack it \
             again after chmod +x",
            meta.permissions().mode() & 0o7777
        ),
        Ok(meta) if !meta.is_file() => "it is not a regular file".to_owned(),
        _ if sys::mount_flags(path).is_ok_and(|f| f.no_exec) => {
            "its file system is mounted noexec".to_owned()
        }
        _ => "permission denied".to_owned(),
    }
}

/// Names the `#!` interpreter or ELF loader of `path`, for "not found" errors.
fn missing_interpreter(path: &Path) -> Option<String> {
    let mut head = [0u8; bundle_format::shebang::BINPRM_BUF_SIZE];
    let n = read_head(&mut File::open(path).ok()?, &mut head).ok()?;
    if let Some((interpreter, _)) = parse_shebang(&head[..n]) {
        return Some(format!("its interpreter {}", interpreter.display()));
    }
    let bytes = std::fs::read(path).ok()?;
    bundle_format::doctor::elf_interpreter(&bytes)
        .map(|loader| format!("its dynamic loader {loader}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults_expand() {
        let (tree, state) = (Some(&b"/c/app-1-ab"[..]), Some(&b"/c/state/app"[..]));
        let expanded = |value| expand(value, tree, state).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            expanded("${BUNDLE_STATE_DIR}/tmp").as_deref(),
            Some("/c/state/app/tmp")
        );
        assert_eq!(
            expanded("${BUNDLE_ROOT}:${BUNDLE_ROOT}/lib").as_deref(),
            Some("/c/app-1-ab:/c/app-1-ab/lib")
        );
        assert_eq!(expanded("$HOME ${X} $").as_deref(), Some("$HOME ${X} $"));
        assert_eq!(expand("${BUNDLE_STATE_DIR}/tmp", tree, None), None);
        assert_eq!(expand("${BUNDLE_ROOT}", None, state), None);
    }

    #[test]
    fn shebangs() {
        assert_eq!(
            parse_shebang(b"#!/bin/sh\necho"),
            Some((PathBuf::from("/bin/sh"), None))
        );
        assert_eq!(
            parse_shebang(b"#! /usr/bin/env  bash -e \nx"),
            Some((PathBuf::from("/usr/bin/env"), Some("bash -e".into())))
        );
        assert_eq!(parse_shebang(b"#!\n"), None);
        assert_eq!(parse_shebang(b"\x7fELF"), None);
        assert_eq!(
            parse_shebang(b"#!/bin/sh"),
            Some((PathBuf::from("/bin/sh"), None))
        );
    }
}
