//! From what the user asked for to complete pack options: every value a
//! flag leaves open is inferred from the folder, and each inference is
//! reported with the flag that overrides it.

use std::path::Path;

use bundle_format::Codec;
use bundle_format::codec::{WHOLE_BUFFER_LIMIT, default_level_for, max_level};
use bundle_format::elf::Arch;
use bundle_format::manifest::{validate_env, validate_label};
use bundle_format::pack::{PackOptions, check_entry, scan};
use bundle_format::portable_pack::PortableOptions;

use crate::error::{Error, Result};
use crate::mix::{self, MixRelease};

/// What the user asked for. `None` (or an empty list) means "infer it".
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--entry`: the program to run, relative to the folder.
    pub entry: Option<String>,
    /// `--arg` (repeatable); `Some(vec![])` is "no arguments" (`--no-args`).
    pub args: Option<Vec<String>>,
    /// `--name`.
    pub name: Option<String>,
    /// `--app-version`.
    pub version: Option<String>,
    /// `--codec`.
    pub codec: Option<Codec>,
    /// `--level`.
    pub level: Option<u32>,
    /// `--needs-tree` / `--no-needs-tree`.
    pub needs_tree: Option<bool>,
    /// `--env NAME=VALUE` (repeatable): added to, or replacing, the
    /// inferred defaults of the same name.
    pub env: Vec<(String, String)>,
    /// `--cache-dir`: a default cache root baked into the bundle.
    pub cache_dir: Option<String>,
    /// `--listen` (repeatable): sockets the bundle's supervisor holds and
    /// hands to the server, e.g. `tcp:8080` (manifest build key `listen`).
    pub listen: Vec<String>,
    /// Modification time for every payload entry (`SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    /// `--portable` (with `--shell`): carry the loader, libraries and shell
    /// the folder's programs need from this machine.
    pub portable: Option<PortableOptions>,
    /// `--target`: the architecture whose stub to use, whatever the
    /// folder's programs are.
    pub target: Option<Arch>,
}

/// One value that was not given and was inferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inferred {
    /// What (e.g. `entry`).
    pub what: &'static str,
    /// The value chosen, as shown to the user.
    pub value: String,
    /// Why this value.
    pub why: String,
    /// The flag that overrides it.
    pub flag: &'static str,
}

/// Complete options, and what was inferred to complete them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to pack with.
    pub options: PackOptions,
    /// The values no flag gave, in the order they were decided.
    pub inferred: Vec<Inferred>,
    /// The release, if the folder is a mix release.
    pub mix: Option<MixRelease>,
    /// The architecture whose stub goes in front of the payload.
    pub arch: Arch,
}

/// Payloads with more file data than this are packed with zstd unless a
/// codec is given: up to it, gzip payloads are inflated in one call by
/// libdeflate (docs/decisions/0032-sydney-pack-mix-defaults.md).
pub const ZSTD_ABOVE: u64 = WHOLE_BUFFER_LIMIT;

/// The environment default that keeps a mix release's temporary files
/// (runtime config, pipes) out of its tree, so a read-only tree works.
pub const RELEASE_TMP: (&str, &str) = ("RELEASE_TMP", "${BUNDLE_STATE_DIR}/tmp");

/// Completes `request` for the folder `dir`.
pub fn plan(dir: &Path, request: &Request) -> Result<Plan> {
    let entries = scan(dir).map_err(Error::Input)?;
    let file_bytes: u64 = entries.iter().map(|e| e.size).sum();
    let mix = mix::detect(dir)?;
    let mut inferred = Vec::new();
    let mut infer = |what, value: &str, why: String, flag| {
        inferred.push(Inferred {
            what,
            value: value.to_owned(),
            why,
            flag,
        });
    };

    let missing = |flags: &str| Error::NotARelease {
        path: dir.to_owned(),
        reason: format!(
            "no releases/start_erl.data (a mix release has one); pass {flags} to pack any folder"
        ),
    };
    let (entry, name, version) = match &mix {
        Some(release) => {
            let release_said = "from the mix release";
            let entry = request.entry.clone().unwrap_or_else(|| {
                let entry = release.entry();
                infer(
                    "entry",
                    &entry,
                    "the release's launch script".into(),
                    "--entry",
                );
                entry
            });
            let name = request.name.clone().unwrap_or_else(|| {
                infer("name", &release.name, release_said.into(), "--name");
                release.name.clone()
            });
            let version = request.version.clone().unwrap_or_else(|| {
                infer(
                    "version",
                    &release.version,
                    "releases/start_erl.data".into(),
                    "--app-version",
                );
                release.version.clone()
            });
            (entry, name, version)
        }
        None => {
            let absent: Vec<&str> = [
                (request.entry.is_none(), "--entry"),
                (request.name.is_none(), "--name"),
                (request.version.is_none(), "--app-version"),
            ]
            .into_iter()
            .filter_map(|(absent, flag)| absent.then_some(flag))
            .collect();
            if !absent.is_empty() {
                return Err(missing(&absent.join(", ")));
            }
            (
                request.entry.clone().unwrap_or_default(),
                request.name.clone().unwrap_or_default(),
                request.version.clone().unwrap_or_default(),
            )
        }
    };

    // Checked now, so that a bad value fails before anything is printed.
    let label = |what: &str, flag: &str, value: &str| {
        validate_label(what, value).map_err(|why| Error::Option(format!("{flag}: {why}")))
    };
    label("name", "--name", &name)?;
    label("version", "--app-version", &version)?;
    check_entry(dir, &entry, &entries).map_err(Error::Input)?;

    // The stub must run where the programs run. x86_64 for a folder with
    // no ELF file (the stub's architecture before aarch64 existed), and
    // only said when it is not that.
    let arch = match request.target {
        Some(arch) => arch,
        None => match crate::arch::of_folder(&entries)? {
            Some((Arch::X86_64, _)) | None => Arch::X86_64,
            Some((arch, file)) => {
                infer(
                    "target",
                    arch.name(),
                    format!("{file} is an {arch} program"),
                    "--target",
                );
                arch
            }
        },
    };

    let args = match (&request.args, &mix) {
        (Some(args), _) => args.clone(),
        (None, Some(_)) => {
            infer(
                "args",
                "start",
                "`start` boots the release; other commands via `exec --`".into(),
                "--arg/--no-args",
            );
            vec!["start".to_owned()]
        }
        (None, None) => Vec::new(),
    };

    let codec = request.codec.unwrap_or_else(|| {
        let (codec, why) = if file_bytes > ZSTD_ABOVE {
            (
                Codec::Zstd,
                "over 4 MiB of files: zstd unpacks large payloads faster",
            )
        } else {
            (
                Codec::Gzip,
                "4 MiB of files or less: gzip inflates them in one call",
            )
        };
        infer("codec", codec.name(), why.into(), "--codec");
        codec
    });
    let level = match request.level {
        Some(level) => {
            let max = max_level(codec);
            if !(1..=max).contains(&level) {
                return Err(Error::Option(format!(
                    "--level {level} is out of range for {codec} (1 to {max})"
                )));
            }
            level
        }
        None => default_level_for(codec, file_bytes),
    };

    let needs_tree = request.needs_tree.unwrap_or_else(|| {
        let needs = mix.is_some();
        if needs {
            infer(
                "needs tree",
                "yes",
                "a release's scripts and BEAM files run from disk".into(),
                "--no-needs-tree",
            );
        }
        needs
    });

    let mut env: Vec<(String, String)> = Vec::new();
    if mix.is_some() && !request.env.iter().any(|(name, _)| name == RELEASE_TMP.0) {
        infer(
            "env",
            &format!("{}={}", RELEASE_TMP.0, RELEASE_TMP.1),
            "temporary files in the state directory, so a read-only tree works".into(),
            "--env RELEASE_TMP=...",
        );
        env.push((RELEASE_TMP.0.to_owned(), RELEASE_TMP.1.to_owned()));
    }
    for (name, value) in &request.env {
        validate_env(name, value).map_err(|why| Error::Option(format!("--env: {why}")))?;
        env.retain(|(known, _)| known != name);
        env.push((name.clone(), value.clone()));
    }

    Ok(Plan {
        options: PackOptions {
            name,
            version,
            entry,
            args,
            codec,
            level,
            needs_tree,
            default_cache_dir: request.cache_dir.clone(),
            mtime: request.mtime,
            build: build_facts(&request.listen)?,
            env,
            portable: request.portable.clone(),
        },
        inferred,
        mix,
        arch,
    })
}

/// The manifest's build facts: the packer, and `listen` if declared
/// (comma-separated `tcp:[ADDRESS:]PORT`, or `reuseport`; read by the stub's
/// supervisor).
fn build_facts(listen: &[String]) -> Result<Vec<(String, String)>> {
    let mut build = Vec::new();
    if !listen.is_empty() {
        for socket in listen {
            if socket == "reuseport" {
                continue;
            }
            let port = socket
                .strip_prefix("tcp:")
                .map(|address| address.rsplit_once(':').map_or(address, |(_, port)| port));
            if !port.is_some_and(|port| port == "$PORT" || port.parse::<u16>().is_ok()) {
                return Err(Error::Option(format!(
                    "--listen {socket:?}: expected tcp:[ADDRESS:]PORT, e.g. tcp:8080 or \
                     tcp:127.0.0.1:$PORT, or reuseport"
                )));
            }
        }
        build.push(("listen".to_owned(), listen.join(",")));
    }
    build.push(("packer".to_owned(), crate::PACKER.to_owned()));
    Ok(build)
}

/// Parses `NAME=VALUE` (for `--env`).
pub fn parse_env(pair: &str) -> std::result::Result<(String, String), String> {
    let (name, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not NAME=VALUE"))?;
    validate_env(name, value)?;
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str, bool)]) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (path, contents, exec) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    fn mix_release() -> tempfile::TempDir {
        folder(&[
            ("releases/start_erl.data", "13.1.5 0.2.0\n", false),
            ("releases/0.2.0/shop.rel", "", false),
            ("bin/shop", "#!/bin/sh\n", true),
        ])
    }

    #[test]
    fn a_mix_release_needs_no_flags() {
        let dir = mix_release();
        let plan = plan(dir.path(), &Request::default()).unwrap();
        let o = &plan.options;
        assert_eq!(
            (o.entry.as_str(), o.name.as_str(), o.version.as_str()),
            ("bin/shop", "shop", "0.2.0")
        );
        assert_eq!(o.args, ["start"]);
        assert_eq!(o.codec, Codec::Gzip);
        assert!(o.needs_tree);
        assert_eq!(
            o.env,
            [(
                "RELEASE_TMP".to_owned(),
                "${BUNDLE_STATE_DIR}/tmp".to_owned()
            )]
        );
        let said: Vec<_> = plan.inferred.iter().map(|i| i.what).collect();
        assert_eq!(
            said,
            [
                "entry",
                "name",
                "version",
                "args",
                "codec",
                "needs tree",
                "env"
            ]
        );
    }

    #[test]
    fn every_inferred_value_yields_to_its_flag() {
        let dir = mix_release();
        let request = Request {
            entry: Some("bin/shop".into()),
            args: Some(vec![]),
            name: Some("store".into()),
            version: Some("9".into()),
            codec: Some(Codec::Zstd),
            level: Some(3),
            needs_tree: Some(false),
            env: vec![("RELEASE_TMP".into(), "/run/shop".into())],
            cache_dir: None,
            listen: vec!["tcp:127.0.0.1:$PORT".into()],
            mtime: 0,
            portable: Some(PortableOptions {
                shell: Some("/opt/busybox".into()),
            }),
            target: Some(Arch::Aarch64),
        };
        let plan = plan(dir.path(), &request).unwrap();
        assert!(plan.inferred.is_empty(), "{:?}", plan.inferred);
        let carried = plan
            .options
            .portable
            .as_ref()
            .and_then(|p| p.shell.as_deref());
        assert_eq!(carried, Some(Path::new("/opt/busybox")));
        let o = &plan.options;
        assert_eq!((o.name.as_str(), o.version.as_str()), ("store", "9"));
        assert!(o.args.is_empty() && !o.needs_tree);
        assert_eq!((o.codec, o.level), (Codec::Zstd, 3));
        assert_eq!(o.env, [("RELEASE_TMP".to_owned(), "/run/shop".to_owned())]);
        assert_eq!(plan.arch, Arch::Aarch64);
        assert_eq!(o.build[0], ("listen".into(), "tcp:127.0.0.1:$PORT".into()));
    }

    #[test]
    fn listen_sockets_are_checked() {
        assert!(build_facts(&["tcp:8080".into()]).is_ok());
        assert!(build_facts(&["tcp:[::1]:$PORT".into()]).is_ok());
        assert!(build_facts(&["reuseport".into()]).is_ok());
        for bad in ["8080", "udp:53", "tcp:", "tcp:host:http"] {
            let err = build_facts(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains("expected tcp:[ADDRESS:]PORT"), "{bad}: {err}");
        }
    }

    /// The promise of the README and `--help`: above 64 MiB of files, zstd
    /// packs at level 9 (19 below), unless `--level` says otherwise.
    #[test]
    fn the_default_level_follows_the_folder_size() {
        use bundle_format::codec::ZSTD_MAX_LEVEL_INPUT;
        let sized = |bytes: u64| {
            let dir = folder(&[("bin/server", "x", true)]);
            std::fs::File::create(dir.path().join("data"))
                .unwrap()
                .set_len(bytes)
                .unwrap();
            dir
        };
        let request = |level| Request {
            entry: Some("bin/server".into()),
            name: Some("server".into()),
            version: Some("1".into()),
            codec: Some(Codec::Zstd),
            level,
            ..Request::default()
        };
        let small = sized(1 << 20);
        let large = sized(ZSTD_MAX_LEVEL_INPUT + 1);
        let level_of = |dir: &tempfile::TempDir, level| {
            plan(dir.path(), &request(level)).unwrap().options.level
        };
        assert_eq!(level_of(&small, None), 19);
        assert_eq!(level_of(&large, None), 9);
        assert_eq!(level_of(&large, Some(19)), 19);
    }

    #[test]
    fn any_folder_packs_with_the_three_flags() {
        let dir = folder(&[("bin/server", "x", true)]);
        let err = plan(dir.path(), &Request::default()).unwrap_err();
        assert!(matches!(err, Error::NotARelease { .. }));
        assert!(
            err.to_string()
                .contains("pass --entry, --name, --app-version"),
            "{err}"
        );
        let request = Request {
            entry: Some("bin/server".into()),
            name: Some("server".into()),
            version: Some("1".into()),
            ..Request::default()
        };
        let plan = plan(dir.path(), &request).unwrap();
        assert!(plan.options.args.is_empty() && plan.options.env.is_empty());
        assert!(!plan.options.needs_tree);
    }

    #[test]
    fn bad_option_values_are_named() {
        let dir = mix_release();
        let level = Request {
            level: Some(30),
            ..Request::default()
        };
        let err = plan(dir.path(), &level).unwrap_err().to_string();
        assert!(err.contains("--level 30 is out of range"), "{err}");
        assert!(parse_env("NOEQUALS").is_err());
        assert!(parse_env("BUNDLE_ROOT=/x").is_err());
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
    }
}
