//! Where tests run and what they run: the artifacts under test, a scratch
//! directory per test, file helpers, a cache root's contents, and the
//! host requirements a test states before it relies on them.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use bundle_format::Codec;

/// Paths of the real artifacts under test.
#[derive(Debug)]
pub struct Artifacts {
    /// `target/bundle/sydney-bundle`.
    pub bundle: PathBuf,
    /// The release folder packed into it.
    pub release: PathBuf,
    /// The static server.
    pub server: PathBuf,
    /// The gzip-only stub.
    pub stub_gzip: PathBuf,
    /// The zstd-only stub.
    pub stub_zstd: PathBuf,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The artifacts, checked to exist (once per test binary).
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        let bundle_dir = root().join("target/bundle");
        let pick = |var: &str, default: PathBuf| -> PathBuf {
            let path = std::env::var_os(var).map_or(default, PathBuf::from);
            assert!(
                path.exists(),
                "{} not found ({var}). Run the tests with `cargo xtask test`, which builds the \
                 static bundle, stubs and server first.",
                path.display()
            );
            path
        };
        Artifacts {
            bundle: pick("SYDNEY_TEST_BUNDLE", bundle_dir.join("sydney-bundle")),
            release: pick("SYDNEY_TEST_RELEASE", bundle_dir.join("release")),
            server: pick("SYDNEY_TEST_SERVER", bundle_dir.join("release/bin/sydney")),
            stub_gzip: pick(
                "SYDNEY_TEST_STUB_GZIP",
                bundle_dir.join("stubs/bundle-stub-gzip"),
            ),
            stub_zstd: pick(
                "SYDNEY_TEST_STUB_ZSTD",
                bundle_dir.join("stubs/bundle-stub-zstd"),
            ),
        }
    })
}

/// The static `sydney-pack` that `cargo xtask dist` builds
/// (`SYDNEY_TEST_SYDNEY_PACK`, else target/dist/sydney-pack).
pub fn sydney_pack() -> PathBuf {
    let path = std::env::var_os("SYDNEY_TEST_SYDNEY_PACK")
        .map_or_else(|| root().join("target/dist/sydney-pack"), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (SYDNEY_TEST_SYDNEY_PACK). Run the tests with `cargo xtask test`, which \
         runs `cargo xtask dist` first.",
        path.display()
    );
    path
}

/// The stub for `codec`.
pub fn stub(codec: Codec) -> Vec<u8> {
    let a = artifacts();
    let path = match codec {
        Codec::Gzip => &a.stub_gzip,
        Codec::Zstd => &a.stub_zstd,
    };
    fs::read(path).unwrap()
}

/// A scratch directory for one test, with a private HOME.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// Creates it, with `home/` inside.
    pub fn new() -> Sandbox {
        // Not under /tmp: some tests mount a fresh tmpfs there.
        let base = root().join("target/e2e-tmp");
        fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sydney-e2e-")
            .tempdir_in(base)
            .unwrap();
        fs::create_dir(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command with a clean environment: PATH, HOME in the sandbox, and
    /// `SYDNEY_BUNDLE_DIR` in the sandbox (so tests never share a cache).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.join("home"))
            .env("SYDNEY_BUNDLE_DIR", self.cache())
            .current_dir(self.path());
        command
    }

    /// The cache root tests use.
    pub fn cache(&self) -> PathBuf {
        self.join("cache")
    }

    /// Copies the sydney bundle into the sandbox and returns its path.
    pub fn sydney_bundle(&self) -> PathBuf {
        let path = self.join("sydney-bundle");
        fs::copy(&artifacts().bundle, &path).unwrap();
        path
    }

    /// Names of the entries directly in `dir` (sorted), or empty if missing.
    pub fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Writes an executable file.
pub fn write_exec(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of the sydney release folder at `dest`.
pub fn copy_release(dest: &Path) {
    copy_tree(&artifacts().release, dest);
}

/// Copies a directory tree (files, dirs, symlinks).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Tree directories and temp leftovers in a cache root.
pub fn cache_contents(root: &Path) -> (Vec<String>, Vec<String>) {
    let names = Sandbox::list(root);
    let trees = names
        .iter()
        .filter(|n| !n.starts_with('.') && n.as_str() != "state")
        .cloned()
        .collect();
    let temps = names
        .iter()
        .filter(|n| n.starts_with(".tmp-"))
        .cloned()
        .collect();
    (trees, temps)
}

/// Fails loudly unless we are root: chroot, mount namespaces and tmpfs
/// mounts need it, and these tests must not silently skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (chroot, mount namespaces, tmpfs); run the suite as root as CI does"
    );
}

/// Is `program` on PATH? Tests that need it fail with this message if not.
#[track_caller]
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not installed; install the Debian package `{package}` (.ci/run does)"
    );
}
