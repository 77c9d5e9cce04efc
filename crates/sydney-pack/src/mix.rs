//! Recognising an Elixir `mix release` folder.
//!
//! A release holds `releases/start_erl.data` (`ERTS_VSN REL_VSN`),
//! `releases/REL_VSN/NAME.rel`, and the launch script `bin/NAME`. That is
//! enough to run it: `bin/NAME start` boots it, and its own commands
//! (`remote`, `rpc`, `eval`) need only the same script.

use std::path::Path;

use crate::error::{Error, Result};

/// What a mix release says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixRelease {
    /// The release name (`bin/NAME`).
    pub name: String,
    /// The release version (`REL_VSN`).
    pub version: String,
    /// The ERTS version it was assembled with.
    pub erts_version: String,
}

impl MixRelease {
    /// The launch script, relative to the release root.
    pub fn entry(&self) -> String {
        format!("bin/{}", self.name)
    }
}

/// Reads the release facts of `dir`: `Ok(None)` when it is not a mix
/// release (no `releases/start_erl.data`), an error when it looks like one
/// but is incomplete.
pub fn detect(dir: &Path) -> Result<Option<MixRelease>> {
    let data_path = dir.join("releases/start_erl.data");
    let Ok(data) = std::fs::read_to_string(&data_path) else {
        return Ok(None);
    };
    let broken = |reason: String| Error::NotARelease {
        path: dir.to_owned(),
        reason,
    };
    let (erts_version, version) = parse_start_erl_data(&data).ok_or_else(|| {
        broken(format!(
            "{} should hold `ERTS_VSN REL_VSN`, not {:?}; run `mix release` again",
            data_path.display(),
            data.trim()
        ))
    })?;
    let release_dir = dir.join("releases").join(&version);
    let name = rel_file_name(&release_dir).ok_or_else(|| {
        broken(format!(
            "{} has no NAME.rel file, so the release name is unknown; pass --name and --entry",
            release_dir.display()
        ))
    })?;
    let script = dir.join("bin").join(&name);
    if !script.is_file() {
        return Err(broken(format!(
            "the launch script bin/{name} is missing; pass --entry, or run `mix release` again"
        )));
    }
    Ok(Some(MixRelease {
        name,
        version,
        erts_version,
    }))
}

/// `13.1.5 0.1.0\n` → `("13.1.5", "0.1.0")`.
pub fn parse_start_erl_data(data: &str) -> Option<(String, String)> {
    let mut words = data.split_whitespace();
    let erts = words.next()?;
    let version = words.next()?;
    words
        .next()
        .is_none()
        .then(|| (erts.to_owned(), version.to_owned()))
}

/// The `NAME` of the one `NAME.rel` in `releases/VSN/`.
fn rel_file_name(release_dir: &Path) -> Option<String> {
    let mut names = std::fs::read_dir(release_dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|file| file.strip_suffix(".rel").map(str::to_owned));
    let name = names.next()?;
    names.next().is_none().then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_erl_data_is_two_words() {
        assert_eq!(
            parse_start_erl_data("13.1.5 0.1.0\n"),
            Some(("13.1.5".into(), "0.1.0".into()))
        );
        assert_eq!(parse_start_erl_data("13.1.5"), None);
        assert_eq!(parse_start_erl_data(""), None);
        assert_eq!(parse_start_erl_data("a b c"), None);
    }

    fn release(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        dir
    }

    #[test]
    fn a_release_names_itself() {
        let dir = release(&[
            ("releases/start_erl.data", "13.1.5 1.2.3\n"),
            ("releases/1.2.3/shop.rel", ""),
            ("bin/shop", "#!/bin/sh\n"),
        ]);
        let found = detect(dir.path()).unwrap().unwrap();
        assert_eq!(found.name, "shop");
        assert_eq!(found.version, "1.2.3");
        assert_eq!(found.entry(), "bin/shop");
    }

    #[test]
    fn other_folders_are_not_releases() {
        let dir = release(&[("bin/server", "")]);
        assert_eq!(detect(dir.path()).unwrap(), None);
    }

    #[test]
    fn incomplete_releases_say_what_is_missing() {
        let no_script = release(&[
            ("releases/start_erl.data", "13.1.5 1.2.3\n"),
            ("releases/1.2.3/shop.rel", ""),
        ]);
        let err = detect(no_script.path()).unwrap_err().to_string();
        assert!(err.contains("bin/shop is missing"), "{err}");
        let garbled = release(&[("releases/start_erl.data", "nonsense\n")]);
        let err = detect(garbled.path()).unwrap_err().to_string();
        assert!(err.contains("ERTS_VSN REL_VSN"), "{err}");
    }
}
