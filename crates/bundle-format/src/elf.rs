//! How long the stub's ELF image is, so a file with no trailer can be
//! explained: nothing appended (stripped) or cut short (truncated).

use object::Endianness;
use object::elf::FileHeader64;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};

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
    fn this_test_binary_has_an_image_length() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(image_len(&exe), Some(exe.len() as u64));
    }
}
