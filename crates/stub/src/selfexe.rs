//! Finding and mapping the bundle file we are running from.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::Mmap;

/// The running executable, when /proc is mounted.
const PROC_SELF_EXE: &str = "/proc/self/exe";

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
        let real = if self.opened_as == Path::new(PROC_SELF_EXE) {
            std::fs::read_link(&self.opened_as)
        } else {
            std::fs::canonicalize(&self.opened_as)
        };
        real.unwrap_or_else(|_| self.opened_as.clone())
    }
}

/// Opens the running executable.
///
/// First the path we were started by (`AT_EXECFN`), if the file there is
/// still the image we are running (same program headers and build id; it
/// is not if it was replaced since exec). Opening it costs a path lookup;
/// `/proc/self/exe` costs building the /proc entries of a new process, a
/// visible part of every start
/// (docs/decisions/0007-self-location-at-execfn.md). Then `/proc/self/exe`,
/// which is right even if the file was replaced; then `AT_EXECFN` whatever
/// it holds now (no /proc, as in an empty chroot); then `argv[0]` (searched
/// in `PATH` when it has no slash).
pub fn open() -> Result<SelfFile> {
    let exec_path = crate::sys::exec_path_from_auxv();
    if let Some(path) = &exec_path {
        if let Some(map) = File::open(path)
            .ok()
            .and_then(|file| crate::sys::map_own_executable(&file).ok())
            .filter(|map| is_running_image(map))
        {
            return Ok(SelfFile {
                opened_as: path.clone(),
                map,
            });
        }
    }
    let mut tried = Vec::new();
    let mut unreadable = None;
    for candidate in candidates(exec_path) {
        match File::open(&candidate) {
            Ok(file) => return map(file, candidate),
            Err(err) => {
                // Name the bundle's own path rather than /proc/self/exe.
                if err.kind() == std::io::ErrorKind::PermissionDenied
                    && candidate.exists()
                    && unreadable
                        .as_deref()
                        .is_none_or(|p| p == Path::new(PROC_SELF_EXE))
                {
                    unreadable = Some(candidate.clone());
                }
                tried.push(format!("{}: {err}", candidate.display()));
            }
        }
    }
    if let Some(path) = unreadable {
        // Mode 0111 and the like: exec works, reading our own payload not.
        return Err(crate::exit::coded(
            crate::exit::Exit::PermissionDenied,
            format!(
                "the bundle must be readable as well as executable by this user to read its \
                 payload ({} cannot be read); run chmod a+r on it",
                path.display()
            ),
        ));
    }
    anyhow::bail!(
        "cannot find the bundle file to read its payload (tried {}); run it by its path",
        tried.join("; ")
    )
}

/// Where to look when `AT_EXECFN` is not the running image as it stands.
fn candidates(exec_path: Option<PathBuf>) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(PROC_SELF_EXE)];
    out.extend(exec_path);
    if let Some(argv0) = std::env::args_os().next().map(PathBuf::from) {
        if argv0.as_os_str().as_encoded_bytes().contains(&b'/') {
            out.push(argv0);
        } else if let Some(paths) = std::env::var_os("PATH") {
            out.extend(std::env::split_paths(&paths).map(|dir| dir.join(&argv0)));
        }
    }
    out
}

/// True if `file` holds the executable image this process is running: its
/// program headers are the ones the kernel loaded us by (`AT_PHDR`), and
/// its build-id note is the one in our memory. A file replaced since exec
/// by another build fails this; one without a build id always does.
pub fn is_running_image(file: &[u8]) -> bool {
    let Some(id) = bundle_format::elf::image_identity(file) else {
        return false;
    };
    let Some((phdr, ours)) = crate::sys::loaded_program_headers() else {
        return false;
    };
    if ours != &file[id.program_headers.clone()] {
        return false;
    }
    // Same program headers, so every segment sits where the file says,
    // moved by one load bias.
    let bias = (phdr as u64).wrapping_sub(id.program_headers_addr);
    let note = id.build_id_note_addr.wrapping_add(bias) as *const u8;
    // SAFETY: image_identity checked that the note lies inside a readable
    // loadable segment of these very program headers (equal to the ones the
    // kernel loaded us by), which the kernel mapped at its address plus the
    // load bias for our whole life.
    let ours = unsafe { std::slice::from_raw_parts(note, id.build_id_note.len()) };
    ours == &file[id.build_id_note]
}

fn map(file: File, path: PathBuf) -> Result<SelfFile> {
    let map = crate::sys::map_own_executable(&file)
        .with_context(|| format!("cannot map {}", path.display()))?;
    Ok(SelfFile {
        opened_as: path,
        map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_image_is_recognised_and_nothing_else() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_running_image(&exe));

        // Another build: the same file with one byte of the build id changed.
        let id = bundle_format::elf::image_identity(&exe).unwrap();
        let mut other = exe.clone();
        other[id.build_id_note.end - 1] ^= 0x01;
        assert!(!is_running_image(&other));

        // Another program, and not a program at all.
        let true_program = std::fs::read("/bin/true").unwrap();
        assert!(!is_running_image(&true_program));
        assert!(!is_running_image(b"#!/bin/sh\n"));
        assert!(!is_running_image(&exe[..64]));
    }
}
