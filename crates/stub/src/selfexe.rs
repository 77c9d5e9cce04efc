//! Finding and mapping the bundle file we are running from.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};
use memmap2::Mmap;

/// The bundle file, mapped read-only.
#[derive(Debug)]
pub struct SelfFile {
    /// The path it was opened by (possibly `/proc/self/exe`).
    opened_as: PathBuf,
    /// The whole file.
    pub map: Mmap,
}

impl SelfFile {
    /// The bundle's real path, for messages (resolved only when needed: the
    /// start-up path never asks).
    pub fn path(&self) -> PathBuf {
        std::fs::read_link(&self.opened_as).unwrap_or_else(|_| self.opened_as.clone())
    }
}

/// Opens the running executable: `/proc/self/exe`, else the path the kernel
/// recorded at exec (`AT_EXECFN`, present without /proc), else `argv[0]`
/// (searched in `PATH` when it has no slash).
pub fn open() -> Result<SelfFile> {
    let mut tried = Vec::new();
    for candidate in candidates() {
        match File::open(&candidate) {
            Ok(file) => return map(file, candidate),
            Err(err) => tried.push(format!("{}: {err}", candidate.display())),
        }
    }
    anyhow::bail!(
        "cannot find the bundle file to read its payload (tried {}); run it by its path",
        tried.join("; ")
    )
}

fn candidates() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from("/proc/self/exe")];
    if let Some(path) = crate::sys::exec_path_from_auxv() {
        out.push(path);
    }
    if let Some(argv0) = std::env::args_os().next().map(PathBuf::from) {
        if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
            out.push(argv0);
        } else if let Some(paths) = std::env::var_os("PATH") {
            out.extend(std::env::split_paths(&paths).map(|dir| dir.join(&argv0)));
        }
    }
    out
}

fn map(file: File, path: PathBuf) -> Result<SelfFile> {
    let map = crate::sys::map_own_executable(&file)
        .with_context(|| format!("cannot map {}", path.display()))?;
    Ok(SelfFile {
        opened_as: path,
        map,
    })
}
