//! Reading the stub's own ELF image: how long it is, so a file with no
//! trailer can be explained (nothing appended, or cut short), and where its
//! build-id note lies, so the stub can check that a file is the very image
//! it is running; and which architecture an ELF file is for, so packing can
//! pick the stub that runs beside it.

use std::ops::Range;

use object::Endianness;
use object::elf::{FileHeader64, NT_GNU_BUILD_ID, PF_R, PT_LOAD, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

/// A CPU architecture bundles are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// x86_64 (`EM_X86_64`).
    X86_64,
    /// 64-bit ARM (`EM_AARCH64`).
    Aarch64,
}

impl Arch {
    /// Every architecture, in the order tools list them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The Linux name (`uname -m`): `x86_64` or `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The OCI (Go) name: `amd64` or `arm64`.
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Parses a Linux or OCI name (`x86_64`, `amd64`, `aarch64`, `arm64`).
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The architecture for an ELF `e_machine`, if bundles support it.
    pub fn from_machine(machine: u16) -> Option<Arch> {
        match machine {
            object::elf::EM_X86_64 => Some(Arch::X86_64),
            object::elf::EM_AARCH64 => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The `e_machine` of the ELF file starting with `head` (any class and byte
/// order; the first 20 bytes suffice), `None` if it is not ELF.
pub fn machine(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || !head.starts_with(b"\x7fELF") {
        return None;
    }
    let bytes = [head[18], head[19]];
    Some(match head[5] {
        2 => u16::from_be_bytes(bytes),
        _ => u16::from_le_bytes(bytes),
    })
}

/// A readable name for an ELF `e_machine`: the architecture's, or the
/// number for one bundles do not support.
pub fn machine_name(machine: u16) -> String {
    match Arch::from_machine(machine) {
        Some(arch) => arch.name().to_owned(),
        None => match machine {
            object::elf::EM_386 => "i386".to_owned(),
            object::elf::EM_ARM => "32-bit arm".to_owned(),
            object::elf::EM_RISCV => "riscv".to_owned(),
            other => format!("ELF machine {other}"),
        },
    }
}

/// Length of the ELF image at the start of `file`: the furthest byte any
/// segment, section or the section header table occupies. `None` if `file`
/// does not start with a readable 64-bit ELF header.
///
/// The linker puts the section header table last, so for the stubs we build
/// this is exactly the executable's length before anything was appended.
pub fn image_len(file: &[u8]) -> Option<u64> {
    let header = FileHeader64::<Endianness>::parse(file).ok()?;
    let endian = header.endian().ok()?;
    let mut end = u64::from(header.e_ehsize(endian));

    let phoff = header.e_phoff(endian);
    let ph_table = u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    end = end.max(phoff.checked_add(ph_table)?);
    let shoff = header.e_shoff(endian);
    let sh_table = u64::from(header.e_shnum(endian)) * u64::from(header.e_shentsize(endian));
    end = end.max(shoff.checked_add(sh_table)?);

    // Headers may sit past a truncated file's end; then the tables are not
    // readable, but the table positions above are already a lower bound.
    if let Ok(segments) = header.program_headers(endian, file) {
        for segment in segments {
            end = end.max(
                segment
                    .p_offset(endian)
                    .checked_add(segment.p_filesz(endian))?,
            );
        }
    }
    if let Ok(sections) = header.section_headers(endian, file) {
        // `file_range` is `None` for NOBITS sections (.bss), which occupy no
        // file bytes.
        for (offset, size) in sections.iter().filter_map(|s| s.file_range(endian)) {
            end = end.max(offset.checked_add(size)?);
        }
    }
    Some(end)
}

/// Where the parts of an executable that identify its build lie, in the
/// file and in memory once loaded (addresses before the load bias).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageIdentity {
    /// File range of the program header table.
    pub program_headers: Range<usize>,
    /// Its address when loaded.
    pub program_headers_addr: u64,
    /// File range of the note segment that holds the build id.
    pub build_id_note: Range<usize>,
    /// Its address when loaded.
    pub build_id_note_addr: u64,
}

/// Finds the program header table and the note segment holding an
/// `NT_GNU_BUILD_ID` note of the 64-bit ELF executable at the start of
/// `file`. Both must lie inside readable loadable segments, so that a
/// process running this image has them mapped at their address plus its
/// load bias.
/// `None` if `file` is not such an executable or has no build id.
pub fn image_identity(file: &[u8]) -> Option<ImageIdentity> {
    let header = FileHeader64::<Endianness>::parse(file).ok()?;
    let endian = header.endian().ok()?;
    let segments = header.program_headers(endian, file).ok()?;
    let loaded_addr = |offset: u64, len: u64| {
        segments
            .iter()
            .filter(|s| s.p_type(endian) == PT_LOAD && s.p_flags(endian) & PF_R != 0)
            .find(|s| {
                let start = s.p_offset(endian);
                offset >= start
                    && offset.saturating_add(len) <= start.saturating_add(s.p_filesz(endian))
            })
            .map(|s| s.p_vaddr(endian).wrapping_add(offset - s.p_offset(endian)))
    };
    let to_range = |offset: u64, len: u64| -> Option<Range<usize>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        (end <= file.len()).then_some(start..end)
    };

    let phoff = header.e_phoff(endian);
    let phlen = u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
    let program_headers = to_range(phoff, phlen)?;
    let program_headers_addr = loaded_addr(phoff, phlen)?;

    let note = segments.iter().find(|s| {
        s.p_type(endian) == PT_NOTE
            && s.notes(endian, file)
                .ok()
                .flatten()
                .is_some_and(|mut notes| {
                    std::iter::from_fn(|| notes.next().ok().flatten())
                        .any(|n| n.name() == b"GNU" && n.n_type(endian) == NT_GNU_BUILD_ID)
                })
    })?;
    let (offset, len) = (note.p_offset(endian), note.p_filesz(endian));
    Some(ImageIdentity {
        program_headers,
        program_headers_addr,
        build_id_note: to_range(offset, len)?,
        build_id_note_addr: loaded_addr(offset, len)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 header with no program or section tables
    /// except a section header table of `shnum` entries at `shoff`.
    fn header(shoff: u64, shnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little endian
        h[6] = 1; // EV_CURRENT
        h[16] = 2; // ET_EXEC
        h[18] = 62; // EM_X86_64
        h[20] = 1; // e_version
        h[40..48].copy_from_slice(&shoff.to_le_bytes());
        h[52] = 64; // e_ehsize
        h[58] = 64; // e_shentsize
        h[60..62].copy_from_slice(&shnum.to_le_bytes());
        h
    }

    #[test]
    fn the_machine_names_the_architecture() {
        let mut file = header(0, 0);
        assert_eq!(machine(&file), Some(62));
        assert_eq!(Arch::from_machine(62), Some(Arch::X86_64));
        file[18] = 183; // EM_AARCH64
        assert_eq!(
            machine(&file).and_then(Arch::from_machine),
            Some(Arch::Aarch64)
        );
        assert_eq!(machine_name(40), "32-bit arm");
        assert_eq!(machine(b"#!/bin/sh\n"), None);
        assert_eq!(machine(&file[..19]), None);
        for arch in Arch::ALL {
            assert_eq!(Arch::from_name(arch.name()), Some(arch));
            assert_eq!(Arch::from_name(arch.oci_name()), Some(arch));
        }
    }

    #[test]
    fn header_only_elf_is_64_bytes() {
        assert_eq!(image_len(&header(0, 0)), Some(64));
    }

    #[test]
    fn section_table_at_the_end_sets_the_length() {
        let mut file = header(128, 2);
        file.resize(128 + 2 * 64, 0);
        assert_eq!(image_len(&file), Some(256));
        // Appended bytes do not change the image length.
        file.extend_from_slice(b"payload");
        assert_eq!(image_len(&file), Some(256));
        // A truncated file still reports where the image should end.
        assert_eq!(image_len(&file[..100]), Some(256));
    }

    #[test]
    fn garbage_is_not_elf() {
        assert_eq!(image_len(b"#!/bin/sh\n"), None);
        assert_eq!(image_len(&[]), None);
        let mut huge = header(u64::MAX - 3, 4);
        huge.resize(64, 0);
        assert_eq!(image_len(&huge), None);
    }

    #[test]
    fn this_test_binary_has_an_identity() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let id = image_identity(&exe).expect("cargo links with a build id");
        // A note holds at least its 12-byte header, the name and the id.
        assert!(id.build_id_note.len() > 16);
        assert_eq!(id.program_headers.len() % 56, 0);
        assert!(
            exe[id.build_id_note.clone()]
                .windows(4)
                .any(|w| w == b"GNU\0")
        );
    }

    #[test]
    fn no_identity_without_a_build_id_or_elf() {
        assert_eq!(image_identity(&header(0, 0)), None);
        assert_eq!(image_identity(b"#!/bin/sh\n"), None);
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let id = image_identity(&exe).unwrap();
        // Cut short inside the note: not an identity any more.
        assert_eq!(image_identity(&exe[..id.build_id_note.start + 4]), None);
    }

    #[test]
    fn this_test_binary_has_an_image_length() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(image_len(&exe), Some(exe.len() as u64));
    }
}
