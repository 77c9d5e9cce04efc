//! Choosing where a bundle's tree lives: the cache root chain.
//!
//! Candidates, in order: `SYDNEY_BUNDLE_DIR` (explicit: any problem is an
//! error), the default baked in at pack time, `$XDG_CACHE_HOME/sydney-bundle`,
//! `$HOME/.cache/sydney-bundle`, `$TMPDIR/sydney-bundle-<uid>` and
//! `/tmp/sydney-bundle-<uid>` (creating `/tmp` if it is missing, as in a
//! FROM scratch image). A root must be a real directory (not a symlink),
//! owned by us and not writable by group or others; we create it 0700.
//!
//! The first root that already holds our tree on an exec-capable mount wins
//! (even if read-only); otherwise the first writable, exec-capable root. A
//! writable root mounted noexec is the fallback (the entry then runs from
//! memory with the tree's data files on disk); with nothing writable the
//! entry runs from memory without a tree.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bundle_format::error::IoCause;

use crate::sys;

/// Name of the directory we create under a cache base.
const DIR_NAME: &str = "sydney-bundle";

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `SYDNEY_BUNDLE_DIR`.
    Explicit,
    /// The default baked into the bundle at pack time.
    Baked,
    /// `$XDG_CACHE_HOME`.
    XdgCache,
    /// `$HOME/.cache`.
    HomeCache,
    /// `$TMPDIR`.
    TmpDir,
    /// `/tmp`.
    Tmp,
}

impl Source {
    /// How users know it.
    pub fn label(self) -> &'static str {
        match self {
            Source::Explicit => "SYDNEY_BUNDLE_DIR",
            Source::Baked => "pack-time default",
            Source::XdgCache => "XDG_CACHE_HOME",
            Source::HomeCache => "HOME",
            Source::TmpDir => "TMPDIR",
            Source::Tmp => "/tmp",
        }
    }
}

/// The environment the chain reads, captured once (and built by hand in tests).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `SYDNEY_BUNDLE_DIR`.
    pub bundle_dir: Option<OsString>,
    /// `XDG_CACHE_HOME`.
    pub xdg_cache_home: Option<OsString>,
    /// `HOME`.
    pub home: Option<OsString>,
    /// `TMPDIR`.
    pub tmpdir: Option<OsString>,
    /// The effective uid.
    pub uid: u32,
}

impl Env {
    /// Reads the process environment. Empty values count as unset.
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Env {
            bundle_dir: var("SYDNEY_BUNDLE_DIR"),
            xdg_cache_home: var("XDG_CACHE_HOME"),
            home: var("HOME"),
            tmpdir: var("TMPDIR"),
            uid: sys::geteuid(),
        }
    }
}

/// A place the tree could go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Where it came from.
    pub source: Source,
    /// The root directory itself (trees go directly below it).
    pub root: PathBuf,
}

/// Lists the candidates for this environment, in order, without touching
/// the file system.
pub fn candidates(env: &Env, baked: Option<&str>) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut push = |source, root: PathBuf| {
        if !out.iter().any(|c: &Candidate| c.root == root) {
            out.push(Candidate { source, root });
        }
    };
    if let Some(dir) = &env.bundle_dir {
        push(Source::Explicit, PathBuf::from(dir));
    }
    if let Some(dir) = baked {
        push(Source::Baked, PathBuf::from(dir));
    }
    if let Some(dir) = &env.xdg_cache_home {
        push(Source::XdgCache, Path::new(dir).join(DIR_NAME));
    }
    if let Some(home) = &env.home {
        push(
            Source::HomeCache,
            Path::new(home).join(".cache").join(DIR_NAME),
        );
    }
    let per_user = format!("{DIR_NAME}-{}", env.uid);
    if let Some(dir) = &env.tmpdir {
        push(Source::TmpDir, Path::new(dir).join(&per_user));
    }
    push(Source::Tmp, Path::new("/tmp").join(&per_user));
    out
}

/// How the entry will run from a chosen root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Executed from the extracted tree.
    Exec,
    /// The tree is extracted (data files), but the mount is noexec: the
    /// entry is executed from memory.
    NoExec,
}

/// A chosen root.
#[derive(Debug, Clone)]
pub struct Root {
    /// The candidate chosen.
    pub candidate: Candidate,
    /// How the entry runs from it.
    pub mode: Mode,
    /// Whether our tree is already there.
    pub warm: bool,
}

/// The chain's answer.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Use this root.
    Root(Root),
    /// Nothing usable: run from memory, without a tree.
    Memory,
}

/// A candidate passed over, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The candidate.
    pub candidate: Candidate,
    /// Why it was not used, in words.
    pub reason: String,
    /// What kind of problem it is.
    pub kind: Problem,
}

/// Kinds of refusal, which decide the exit code when the user named the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Someone else could tamper with it (owner, mode, symlink).
    Unsafe,
    /// Permission denied or read-only.
    Denied,
    /// No space left.
    Full,
    /// Anything else (missing parent, not a directory, ...).
    Unusable,
}

impl Problem {
    fn of(err: &io::Error) -> Problem {
        match IoCause::of(err) {
            IoCause::ReadOnly | IoCause::Denied => Problem::Denied,
            IoCause::Full => Problem::Full,
            IoCause::NotFound | IoCause::NotADirectory | IoCause::Other => Problem::Unusable,
        }
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What was chosen.
    pub placement: Placement,
    /// Candidates passed over before it, with reasons.
    pub refusals: Vec<Refusal>,
}

impl Decision {
    /// The chosen root, if any.
    pub fn root(&self) -> Option<&Root> {
        match &self.placement {
            Placement::Root(root) => Some(root),
            Placement::Memory => None,
        }
    }

    /// One line per refused candidate, for error messages.
    pub fn refusal_summary(&self) -> String {
        self.refusals
            .iter()
            .map(|r| {
                format!(
                    "{} ({}): {}",
                    r.candidate.root.display(),
                    r.candidate.source.label(),
                    r.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Why the explicit `SYDNEY_BUNDLE_DIR` cannot be used.
#[derive(Debug)]
pub struct ExplicitRefused {
    /// The refusal.
    pub refusal: Refusal,
}

impl ExplicitRefused {
    /// The error reported to the user, with its exit code.
    pub fn into_error(self) -> anyhow::Error {
        let r = self.refusal;
        let exit = match r.kind {
            Problem::Unsafe => crate::exit::Exit::UnsafeCacheDir,
            Problem::Denied => crate::exit::Exit::PermissionDenied,
            Problem::Full => crate::exit::Exit::DiskFull,
            Problem::Unusable => crate::exit::Exit::NoCacheDir,
        };
        crate::exit::coded(
            exit,
            format!(
                "cannot use SYDNEY_BUNDLE_DIR={}: {}",
                r.candidate.root.display(),
                r.reason
            ),
        )
    }
}

/// Walks the chain for a tree called `tree_name`, skipping roots in `skip`
/// (roots that already failed this run, e.g. because the disk is full).
/// Creates the chosen root if it does not exist.
pub fn choose(
    candidates: &[Candidate],
    tree_name: &str,
    skip: &[PathBuf],
) -> Result<Decision, ExplicitRefused> {
    walk(candidates, tree_name, skip, true)
}

/// Like [`choose`], but creates nothing: what the chain would choose here
/// (for `inspect`, `verify --deep` and `clean`).
pub fn preview(candidates: &[Candidate], tree_name: &str) -> Result<Decision, ExplicitRefused> {
    walk(candidates, tree_name, &[], false)
}

fn walk(
    candidates: &[Candidate],
    tree_name: &str,
    skip: &[PathBuf],
    create: bool,
) -> Result<Decision, ExplicitRefused> {
    let mut refusals = Vec::new();
    let mut noexec_fallback = None;
    for candidate in candidates.iter().filter(|c| !skip.contains(&c.root)) {
        let explicit = candidate.source == Source::Explicit;
        let refuse = |reason: String, kind: Problem| Refusal {
            candidate: candidate.clone(),
            reason,
            kind,
        };
        let state = match prepare(candidate, create) {
            Ok(state) => state,
            Err((reason, kind)) => {
                let refusal = refuse(reason, kind);
                if explicit {
                    return Err(ExplicitRefused { refusal });
                }
                refusals.push(refusal);
                continue;
            }
        };
        let warm = candidate.root.join(tree_name).is_dir();
        let mode = if state.no_exec {
            Mode::NoExec
        } else {
            Mode::Exec
        };
        let chosen = |mode, warm| Root {
            candidate: candidate.clone(),
            mode,
            warm,
        };
        if warm && mode == Mode::Exec {
            return Ok(Decision {
                placement: Placement::Root(chosen(mode, true)),
                refusals,
            });
        }
        if !warm && !state.writable() {
            let reason = if state.read_only {
                "read-only file system"
            } else {
                "not writable by this user"
            };
            let refusal = refuse(reason.to_owned(), Problem::Denied);
            if explicit {
                return Err(ExplicitRefused { refusal });
            }
            refusals.push(refusal);
            continue;
        }
        if mode == Mode::NoExec && !explicit {
            if noexec_fallback.is_none() {
                noexec_fallback = Some(chosen(mode, warm));
            }
            refusals.push(refuse("mounted noexec".to_owned(), Problem::Unusable));
            continue;
        }
        return Ok(Decision {
            placement: Placement::Root(chosen(mode, warm)),
            refusals,
        });
    }
    let placement = match noexec_fallback {
        Some(root) => Placement::Root(root),
        None => Placement::Memory,
    };
    Ok(Decision {
        placement,
        refusals,
    })
}

/// What we learned about a usable root.
#[derive(Debug, Clone)]
struct RootState {
    read_only: bool,
    no_exec: bool,
    /// The directory whose writability decides (the root, or for a root not
    /// yet created, its nearest existing ancestor). Checked only when needed:
    /// a warm start never asks.
    write_probe: PathBuf,
}

impl RootState {
    fn writable(&self) -> bool {
        !self.read_only && sys::can_write_dir(&self.write_probe)
    }
}

/// Creates the root if needed (and `create`) and checks it is safe. On
/// refusal returns the reason and its kind.
fn prepare(candidate: &Candidate, create: bool) -> Result<RootState, (String, Problem)> {
    let root = &candidate.root;
    let io_refusal = |err: io::Error| (describe_io(&err), Problem::of(&err));
    if !root.is_absolute() {
        return Err(("it is not an absolute path".to_owned(), Problem::Unusable));
    }
    let meta = match fs::symlink_metadata(root) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !create => {
            return preview_missing(root);
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            create_root(candidate).map_err(io_refusal)?;
            fs::symlink_metadata(root).map_err(io_refusal)?
        }
        Err(err) => return Err(io_refusal(err)),
    };
    check_private(&meta).map_err(|reason| (reason, Problem::Unsafe))?;
    let flags = sys::mount_flags(root).map_err(io_refusal)?;
    Ok(RootState {
        read_only: flags.read_only,
        no_exec: flags.no_exec,
        write_probe: root.clone(),
    })
}

/// A root that does not exist yet: judge it by its nearest existing ancestor.
fn preview_missing(root: &Path) -> Result<RootState, (String, Problem)> {
    let ancestor = root
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let flags = sys::mount_flags(ancestor).map_err(|err| (describe_io(&err), Problem::of(&err)))?;
    Ok(RootState {
        read_only: flags.read_only,
        no_exec: flags.no_exec,
        write_probe: ancestor.to_owned(),
    })
}

/// Refuses roots that someone else could tamper with.
pub fn check_private(meta: &fs::Metadata) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err(
            "it is a symlink, which someone may have planted; use a real directory".to_owned(),
        );
    }
    if !meta.is_dir() {
        return Err("it is not a directory".to_owned());
    }
    let uid = sys::geteuid();
    if meta.uid() != uid {
        return Err(format!(
            "it is owned by uid {}, not by this user (uid {uid}); remove it or choose another directory",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "it is writable by group or others (mode {mode:o}); run chmod 700 on it"
        ));
    }
    Ok(())
}

fn create_root(candidate: &Candidate) -> io::Result<()> {
    let root = &candidate.root;
    let parent = root.parent().unwrap_or(Path::new("/"));
    match candidate.source {
        // FROM scratch images have no /tmp: make a normal sticky one.
        Source::Tmp if !parent.exists() => match DirBuilder::new().mode(0o1777).create(parent) {
            Ok(()) => fs::set_permissions(parent, fs::Permissions::from_mode(0o1777))?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        },
        // `~/.cache` (or an explicit path's parents) may not exist yet.
        Source::HomeCache | Source::XdgCache | Source::Explicit | Source::Baked => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        Source::Tmp | Source::TmpDir => {}
    }
    match DirBuilder::new().mode(0o700).create(root) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    }
}

/// A short reason for an I/O failure on a cache root.
pub fn describe_io(err: &io::Error) -> String {
    match IoCause::of(err) {
        IoCause::ReadOnly => "read-only file system".to_owned(),
        IoCause::Denied => "permission denied".to_owned(),
        IoCause::Full => "disk full".to_owned(),
        IoCause::NotFound => "parent directory does not exist".to_owned(),
        IoCause::NotADirectory => "a parent is not a directory".to_owned(),
        IoCause::Other => err.to_string(),
    }
}

/// The state directory (pidfile, lock, log) for bundle `name`:
/// `SYDNEY_BUNDLE_STATE_DIR` if set, else `<root>/state/<name>` under the
/// chosen cache root.
pub fn state_dir(decision: &Decision, name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SYDNEY_BUNDLE_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    decision
        .root()
        .map(|root| root.candidate.root.join("state").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_documented_order() {
        let env = Env {
            bundle_dir: Some("/explicit".into()),
            xdg_cache_home: Some("/xdg".into()),
            home: Some("/home/u".into()),
            tmpdir: Some("/var/tmp".into()),
            uid: 1000,
        };
        let roots: Vec<_> = candidates(&env, Some("/baked"))
            .into_iter()
            .map(|c| (c.source, c.root))
            .collect();
        assert_eq!(
            roots,
            [
                (Source::Explicit, PathBuf::from("/explicit")),
                (Source::Baked, PathBuf::from("/baked")),
                (Source::XdgCache, PathBuf::from("/xdg/sydney-bundle")),
                (
                    Source::HomeCache,
                    PathBuf::from("/home/u/.cache/sydney-bundle")
                ),
                (Source::TmpDir, PathBuf::from("/var/tmp/sydney-bundle-1000")),
                (Source::Tmp, PathBuf::from("/tmp/sydney-bundle-1000")),
            ]
        );
    }

    #[test]
    fn empty_environment_still_has_tmp() {
        let env = Env::default();
        let roots = candidates(&env, None);
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].root, PathBuf::from("/tmp/sydney-bundle-0"));
    }

    #[test]
    fn tmpdir_equal_to_tmp_is_listed_once() {
        let env = Env {
            tmpdir: Some("/tmp".into()),
            uid: 5,
            ..Env::default()
        };
        assert_eq!(candidates(&env, None).len(), 1);
    }

    #[test]
    fn unsafe_roots_are_refused_and_safe_ones_created_private() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let explicit = |root: &Path| {
            vec![Candidate {
                source: Source::Explicit,
                root: root.to_owned(),
            }]
        };
        // Created 0700 when missing.
        let decision = choose(&explicit(&root), "t", &[]).unwrap();
        assert!(decision.root().is_some());
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = choose(&explicit(&root), "t", &[]).unwrap_err();
        assert_eq!(err.refusal.kind, Problem::Unsafe);
        assert!(err.refusal.reason.contains("writable by group or others"));

        let link = base.path().join("link");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let err = choose(&explicit(&link), "t", &[]).unwrap_err();
        assert!(err.refusal.reason.contains("symlink"));

        // Not explicit: the chain moves on and records why.
        let chain = vec![
            Candidate {
                source: Source::XdgCache,
                root: link.clone(),
            },
            Candidate {
                source: Source::HomeCache,
                root: root.clone(),
            },
        ];
        let decision = choose(&chain, "t", &[]).unwrap();
        assert_eq!(decision.root().unwrap().candidate.root, root);
        assert_eq!(decision.refusals.len(), 1);
    }
}
