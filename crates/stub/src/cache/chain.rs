//! The candidate chain: which roots to try, in what order, from an [`Env`]
//! value. Pure: nothing here touches the file system.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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
    /// `SYDNEY_BUNDLE_STATE_DIR`.
    pub state_dir: Option<OsString>,
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
            state_dir: var("SYDNEY_BUNDLE_STATE_DIR"),
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

/// Why a bundle has no state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoStateDir {
    /// No cache root was chosen and `SYDNEY_BUNDLE_STATE_DIR` is unset.
    NoRoot,
    /// `SYDNEY_BUNDLE_STATE_DIR` is relative: `stop` run from another
    /// directory would look elsewhere and say "not running".
    NotAbsolute(PathBuf),
}

/// The state directory (pidfile, lock, log) of bundle `name`:
/// `SYDNEY_BUNDLE_STATE_DIR` if set, else `<root>/state/<name>` under the
/// chosen cache root.
pub fn state_dir(env: &Env, chosen_root: Option<&Path>, name: &str) -> Result<PathBuf, NoStateDir> {
    if let Some(dir) = &env.state_dir {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            Ok(dir)
        } else {
            Err(NoStateDir::NotAbsolute(dir))
        };
    }
    chosen_root
        .map(|root| state_dir_in(root, name))
        .ok_or(NoStateDir::NoRoot)
}

/// Where the state directory of bundle `name` is under cache root `root`.
pub fn state_dir_in(root: &Path, name: &str) -> PathBuf {
    root.join(STATE_DIR).join(name)
}

/// The folder of every cache root that holds the state directories (the
/// housekeeping in `tree` leaves it alone).
pub const STATE_DIR: &str = "state";

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
            state_dir: None,
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
    fn the_state_dir_is_explicit_or_under_the_chosen_root() {
        let mut env = Env::default();
        let root = Path::new("/cache");
        assert_eq!(
            state_dir(&env, Some(root), "app"),
            Ok(PathBuf::from("/cache/state/app"))
        );
        assert_eq!(state_dir(&env, None, "app"), Err(NoStateDir::NoRoot));
        env.state_dir = Some("/run/app".into());
        assert_eq!(state_dir(&env, None, "app"), Ok(PathBuf::from("/run/app")));
        env.state_dir = Some("run/app".into());
        assert_eq!(
            state_dir(&env, Some(root), "app"),
            Err(NoStateDir::NotAbsolute(PathBuf::from("run/app")))
        );
    }
}
