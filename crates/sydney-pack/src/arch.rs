//! Which architecture a folder's programs are built for, so that packing
//! puts the stub for that architecture in front of them
//! (docs/decisions/0101-stub-by-payload-architecture.md).

use std::io::Read;

use bundle_format::EntryKind;
use bundle_format::elf::{self, Arch};
use bundle_format::pack::SourceEntry;

use crate::error::{Error, Result};

/// The architecture every ELF file among `entries` (a folder's scan) is
/// built for: `None` if there is no ELF file (scripts and data only).
/// A folder that mixes architectures, or holds programs for one no stub
/// exists for, is refused, naming one file of each.
pub fn of_folder(entries: &[SourceEntry]) -> Result<Option<(Arch, String)>> {
    let machines = machines(entries);
    let found: Vec<String> = machines
        .iter()
        .map(|(machine, file)| format!("{file} is {}", elf::machine_name(*machine)))
        .collect();
    match machines.first() {
        None => Ok(None),
        Some(_) if machines.len() > 1 => Err(Error::Arch(format!(
            "the folder mixes architectures ({}); a bundle runs on one: pack each \
             architecture's release separately, or pass --target to choose the stub",
            found.join(", ")
        ))),
        Some((machine, file)) => match Arch::from_machine(*machine) {
            Some(arch) => Ok(Some((arch, file.clone()))),
            None => Err(Error::Arch(format!(
                "{}; bundles run on x86_64 and aarch64 only",
                found.join(", ")
            ))),
        },
    }
}

/// Each ELF `e_machine` among `entries` with the first file that has it,
/// in the folder's (sorted) order.
fn machines(entries: &[SourceEntry]) -> Vec<(u16, String)> {
    let mut machines: Vec<(u16, String)> = Vec::new();
    for entry in entries {
        if entry.kind != EntryKind::File || entry.size < 20 {
            continue;
        }
        let mut head = [0u8; 20];
        let read = match &entry.contents {
            Some(contents) => contents.get(..20).map(|h| head.copy_from_slice(h)),
            None => std::fs::File::open(&entry.path)
                .and_then(|mut file| file.read_exact(&mut head))
                .ok(),
        };
        if read.is_none() {
            continue;
        }
        if let Some(machine) = elf::machine(&head)
            && !machines.iter().any(|(known, _)| *known == machine)
        {
            machines.push((machine, entry.rel.clone()));
        }
    }
    machines
}

/// The architecture of the stub `stub` (an ELF executable), if known.
pub fn of_stub(stub: &[u8]) -> Option<Arch> {
    elf::machine(stub).and_then(Arch::from_machine)
}

/// Parses `--target`: x86_64 (amd64) or aarch64 (arm64).
pub fn parse(value: &str) -> std::result::Result<Arch, String> {
    Arch::from_name(value)
        .ok_or_else(|| format!("unknown target {value:?}: use x86_64 (amd64) or aarch64 (arm64)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn elf_file(rel: &str, machine: u16) -> SourceEntry {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = 2;
        head[5] = 1;
        head[18..20].copy_from_slice(&machine.to_le_bytes());
        SourceEntry {
            rel: rel.to_owned(),
            path: PathBuf::from("/nonexistent"),
            kind: EntryKind::File,
            mode: 0o755,
            size: head.len() as u64,
            link: None,
            contents: Some(head.into()),
        }
    }

    #[test]
    fn one_architecture_is_found_and_named_by_its_first_file() {
        let entries = [elf_file("bin/a", 183), elf_file("lib/b.so", 183)];
        assert_eq!(
            of_folder(&entries).unwrap(),
            Some((Arch::Aarch64, "bin/a".to_owned()))
        );
        assert_eq!(of_folder(&[]).unwrap(), None);
    }

    #[test]
    fn mixed_and_unsupported_architectures_are_refused() {
        let mixed = of_folder(&[elf_file("bin/a", 62), elf_file("bin/b", 183)]).unwrap_err();
        let text = mixed.to_string();
        assert!(text.contains("mixes architectures"), "{text}");
        assert!(text.contains("bin/a is x86_64, bin/b is aarch64"), "{text}");
        assert!(!text.contains('\n'));
        let riscv = of_folder(&[elf_file("bin/r", 243)])
            .unwrap_err()
            .to_string();
        assert!(riscv.contains("bin/r is riscv"), "{riscv}");
    }
}
