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
//!
//! [`chain`] lists the candidates from an [`Env`] value without touching the
//! file system; [`probe`] checks one root on disk; this module walks the
//! list with the probe and decides.

mod chain;
mod probe;

use std::path::PathBuf;

use bundle_format::Bundle;

pub use chain::{Candidate, Env, NoStateDir, STATE_DIR, Source, candidates};
pub use probe::check_private;

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
        let state = match probe::prepare(candidate, create) {
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

/// What the chain would choose here for `bundle`, creating nothing (for
/// `inspect`, `verify --deep`, `clean` and the control commands).
pub fn preview_bundle(env: &Env, bundle: &Bundle<'_>) -> Result<Decision, ExplicitRefused> {
    let candidates = candidates(env, bundle.manifest().default_cache_dir.as_deref());
    preview(&candidates, &bundle.tree_dir_name())
}

/// The state directory of bundle `name` under `decision` (see
/// [`chain::state_dir`]).
pub fn state_dir(env: &Env, decision: &Decision, name: &str) -> Result<PathBuf, NoStateDir> {
    chain::state_dir(
        env,
        decision.root().map(|root| root.candidate.root.as_path()),
        name,
    )
}

/// The state directory for `stop`, `pid` and `restart`: where a running
/// `daemon` recorded itself. With neither `SYDNEY_BUNDLE_DIR` nor
/// `SYDNEY_BUNDLE_STATE_DIR` set, `daemon` may have passed over a full root
/// that the preview, which writes nothing, still picks; so the first
/// private root of the chain holding a pidfile for `name` wins, and the
/// preview's choice otherwise.
pub fn control_state_dir(
    env: &Env,
    bundle: &Bundle<'_>,
    preview: &Decision,
) -> Result<PathBuf, NoStateDir> {
    let name = &bundle.manifest().name;
    if env.bundle_dir.is_none() && env.state_dir.is_none() {
        let baked = bundle.manifest().default_cache_dir.as_deref();
        for candidate in candidates(env, baked) {
            let private = std::fs::symlink_metadata(&candidate.root)
                .is_ok_and(|meta| check_private(&meta).is_ok());
            let dir = chain::state_dir_in(&candidate.root, name);
            if private && std::fs::symlink_metadata(dir.join("pid")).is_ok() {
                return Ok(dir);
            }
        }
    }
    state_dir(env, preview, name)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

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
