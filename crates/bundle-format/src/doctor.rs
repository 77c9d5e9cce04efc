//! What a payload's programs need from a host, and where it can run.
//!
//! Reads ELF files with the `object` crate (interpreter, DT_NEEDED, the
//! GLIBC_* symbol versions required) and `#!` lines of executable scripts,
//! then gives a verdict for three kinds of host: an empty FROM scratch
//! image, alpine (musl), and glibc distributions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Read};

use object::Endianness;
use object::elf::{DT_NEEDED, FileHeader64, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

/// Largest ELF file the doctor reads into memory.
pub const MAX_ELF_FILE: u64 = 512 << 20;

/// Libraries every glibc system has (they are part of glibc itself).
const GLIBC_LIBS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libanl.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// Facts about one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfFacts {
    /// The dynamic loader (PT_INTERP), `None` for static programs.
    pub interpreter: Option<String>,
    /// DT_NEEDED shared libraries.
    pub needed: Vec<String>,
    /// Highest `GLIBC_x.y[.z]` symbol version required.
    pub glibc: Option<GlibcVersion>,
    /// Not a 64-bit little-endian ELF (cannot run on x86_64 as is).
    pub foreign: bool,
    /// The ELF machine (`e_machine`), if the header has one.
    pub machine: Option<u16>,
}

impl ElfFacts {
    /// Static: no loader and no shared libraries.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }

    /// Linked against musl.
    pub fn is_musl(&self) -> bool {
        self.interpreter
            .as_deref()
            .is_some_and(|i| i.contains("ld-musl"))
            || self.needed.iter().any(|n| n.starts_with("libc.musl"))
    }

    /// Linked against glibc.
    pub fn is_glibc(&self) -> bool {
        self.glibc.is_some()
            || self
                .interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux"))
            || self.needed.iter().any(|n| n == "libc.so.6")
    }
}

/// A glibc symbol version, e.g. 2.34.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.2 == 0 {
            write!(f, "{}.{}", self.0, self.1)
        } else {
            write!(f, "{}.{}.{}", self.0, self.1, self.2)
        }
    }
}

impl GlibcVersion {
    fn parse(name: &str) -> Option<GlibcVersion> {
        let mut parts = name.strip_prefix("GLIBC_")?.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(GlibcVersion(major, minor, patch))
    }

    /// Well-known distributions whose glibc is at least this version.
    pub fn example_hosts(self) -> &'static str {
        match (self.0, self.1) {
            (2, 0..=17) => "any current glibc distribution",
            (2, 18..=28) => "Debian 10+, Ubuntu 20.04+, RHEL 8+",
            (2, 29..=31) => "Debian 11+, Ubuntu 20.04+, RHEL 9+",
            (2, 32..=34) => "Debian 12+, Ubuntu 22.04+, RHEL 9+",
            (2, 35) => "Debian 12+, Ubuntu 22.04+",
            (2, 36) => "Debian 12+, Ubuntu 24.04+",
            (2, 37..=39) => "Debian 13+, Ubuntu 24.04+",
            _ => "only recent distributions",
        }
    }
}

/// Reads the facts of an ELF file; `None` if `bytes` is not ELF.
pub fn elf_facts(bytes: &[u8]) -> Option<ElfFacts> {
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let Ok(header) = FileHeader64::<Endianness>::parse(bytes) else {
        return Some(ElfFacts {
            foreign: true,
            ..ElfFacts::default()
        });
    };
    let mut facts = ElfFacts {
        machine: crate::elf::machine(bytes),
        ..ElfFacts::default()
    };
    let Ok(endian) = header.endian() else {
        facts.foreign = true;
        return Some(facts);
    };
    if let Ok(segments) = header.program_headers(endian, bytes) {
        for segment in segments {
            if segment.p_type(endian) == PT_INTERP {
                if let Ok(Some(interp)) = segment.interpreter(endian, bytes) {
                    facts.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
                }
            }
        }
    }
    if let Ok(sections) = header.sections(endian, bytes) {
        if let Ok(Some((entries, link))) = sections.dynamic(endian, bytes) {
            if let Ok(strings) = sections.strings(endian, bytes, link) {
                for entry in entries {
                    if entry.d_tag(endian) == u64::from(DT_NEEDED) {
                        if let Ok(name) = entry.string(endian, strings) {
                            facts
                                .needed
                                .push(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        }
        if let Ok(Some((mut needs, link))) = sections.gnu_verneed(endian, bytes) {
            if let Ok(strings) = sections.strings(endian, bytes, link) {
                while let Ok(Some((_, mut auxes))) = needs.next() {
                    while let Ok(Some(aux)) = auxes.next() {
                        let Ok(name) = aux.name(endian, strings) else {
                            continue;
                        };
                        let name = String::from_utf8_lossy(name);
                        if let Some(version) = GlibcVersion::parse(&name) {
                            facts.glibc = facts.glibc.max(Some(version));
                        }
                    }
                }
            }
        }
    }
    Some(facts)
}

/// The dynamic loader an ELF file asks for, if any.
pub fn elf_interpreter(bytes: &[u8]) -> Option<String> {
    elf_facts(bytes)?.interpreter
}

/// What one payload file needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// An ELF program or library.
    Elf(ElfFacts),
    /// An executable script and its `#!` interpreter.
    Script {
        /// The interpreter path.
        interpreter: String,
    },
}

/// The doctor's findings for a whole payload.
#[derive(Debug, Default)]
pub struct Report {
    /// Path → what it needs, for every ELF file and executable script.
    pub files: BTreeMap<String, Needs>,
    /// File names present in the payload (to spot bundled libraries).
    pub names: BTreeSet<String>,
    /// Set for a portable payload (`pack --portable`): what it carries. Its
    /// programs then need nothing from any host.
    pub portable: Option<String>,
}

/// The doctor's line for a portable payload.
pub const PORTABLE_RUNS_ON: &str = "runs on: FROM scratch, musl hosts, glibc hosts (any version)";

impl Report {
    /// Records a payload file. `head` is at least its first bytes; for ELF
    /// files it must be the whole file.
    pub fn add(&mut self, path: &str, executable: bool, bytes: &[u8]) {
        if let Some(name) = path.rsplit('/').next() {
            self.names.insert(name.to_owned());
        }
        if let Some(facts) = elf_facts(bytes) {
            self.files.insert(path.to_owned(), Needs::Elf(facts));
        } else if executable {
            if let Some(interpreter) = shebang(bytes) {
                self.files
                    .insert(path.to_owned(), Needs::Script { interpreter });
            }
        }
    }

    /// Reads one file from `reader` (`size` bytes in all) and records it:
    /// only its first bytes, unless it is an ELF file (then all of it, up to
    /// [`MAX_ELF_FILE`]).
    pub fn add_from(
        &mut self,
        path: &str,
        executable: bool,
        size: u64,
        reader: &mut impl Read,
    ) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(256);
        reader.take(256).read_to_end(&mut bytes)?;
        if bytes.starts_with(b"\x7fELF") && size <= MAX_ELF_FILE {
            reader.read_to_end(&mut bytes)?;
        }
        self.add(path, executable, &bytes);
        Ok(())
    }

    fn elves(&self) -> impl Iterator<Item = (&String, &ElfFacts)> {
        self.files.iter().filter_map(|(p, n)| match n {
            Needs::Elf(f) => Some((p, f)),
            Needs::Script { .. } => None,
        })
    }

    /// The line naming the architecture of the payload's ELF files (each
    /// machine with the first file built for it), `None` without ELF files.
    pub fn architecture_line(&self) -> Option<String> {
        let mut machines: Vec<(u16, &str)> = Vec::new();
        for (path, facts) in self.elves() {
            if let Some(machine) = facts.machine
                && !machines.iter().any(|(known, _)| *known == machine)
            {
                machines.push((machine, path));
            }
        }
        match &machines[..] {
            [] => None,
            [(machine, _)] => Some(format!(
                "architecture: {}",
                crate::elf::machine_name(*machine)
            )),
            several => Some(format!(
                "architectures: {} (a bundle runs on one; pack them separately)",
                several
                    .iter()
                    .map(|(machine, file)| {
                        format!("{file} is {}", crate::elf::machine_name(*machine))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// `#!` interpreters and the scripts that use them.
    pub fn interpreters(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (path, needs) in &self.files {
            if let Needs::Script { interpreter } = needs {
                out.entry(interpreter).or_default().push(path);
            }
        }
        out
    }

    /// Shared libraries needed and not shipped in the payload, beyond glibc's own.
    pub fn external_libraries(&self) -> BTreeSet<&str> {
        self.elves()
            .flat_map(|(_, f)| f.needed.iter())
            .map(String::as_str)
            .filter(|lib| !self.names.contains(*lib))
            .filter(|lib| !GLIBC_LIBS.contains(lib) && !lib.starts_with("libc.musl"))
            .collect()
    }

    /// The newest glibc symbol version required by any file.
    pub fn min_glibc(&self) -> Option<GlibcVersion> {
        self.elves().filter_map(|(_, f)| f.glibc).max()
    }

    /// The verdicts, one line per kind of host.
    pub fn verdicts(&self) -> Vec<Verdict> {
        if self.portable.is_some() {
            return [Host::Scratch, Host::Alpine, Host::Glibc]
                .into_iter()
                .map(|host| Verdict::new(host, Vec::new()))
                .collect();
        }
        let elves: Vec<_> = self.elves().collect();
        let glibc_files: Vec<&str> = elves
            .iter()
            .filter(|(_, f)| f.is_glibc())
            .map(|(p, _)| p.as_str())
            .collect();
        let musl_files: Vec<&str> = elves
            .iter()
            .filter(|(_, f)| f.is_musl())
            .map(|(p, _)| p.as_str())
            .collect();
        let loaders: BTreeSet<&str> = elves
            .iter()
            .filter_map(|(_, f)| f.interpreter.as_deref())
            .collect();
        let interpreters = self.interpreters();
        let libraries = self.external_libraries();
        let foreign: Vec<&str> = elves
            .iter()
            .filter(|(_, f)| f.foreign)
            .map(|(p, _)| p.as_str())
            .collect();

        let mut scratch = Vec::new();
        for (interp, users) in &interpreters {
            scratch.push(format!("{interp} (for {})", few(users)));
        }
        for loader in &loaders {
            scratch.push(format!("the loader {loader}"));
        }
        let mut all_libs: BTreeSet<&str> = elves
            .iter()
            .flat_map(|(_, f)| f.needed.iter().map(String::as_str))
            .filter(|lib| !self.names.contains(*lib))
            .collect();
        if !all_libs.is_empty() {
            scratch.push(format!("libraries {}", join(&mut all_libs)));
        }

        let mut alpine = Vec::new();
        if !glibc_files.is_empty() {
            alpine.push(format!(
                "glibc-linked programs ({}) that musl cannot load (they fail with \"not found\"); \
                 build them for musl or add gcompat",
                few(&glibc_files)
            ));
        }
        for interp in interpreters.keys() {
            if !matches!(*interp, "/bin/sh" | "/usr/bin/env" | "/bin/ash") {
                alpine.push(format!("{interp} (apk add it)"));
            }
        }
        if !libraries.is_empty() {
            alpine.push(format!(
                "libraries {} (apk add their packages)",
                join(&mut libraries.clone())
            ));
        }

        let mut glibc = Vec::new();
        if let Some(version) = self.min_glibc() {
            glibc.push(format!("glibc >= {version} ({})", version.example_hosts()));
        }
        for interp in interpreters.keys() {
            glibc.push(interp.to_string());
        }
        if !musl_files.is_empty() {
            glibc.push(format!(
                "the musl loader for {} (apt install musl)",
                few(&musl_files)
            ));
        }
        if !libraries.is_empty() {
            glibc.push(format!("libraries {}", join(&mut libraries.clone())));
        }

        let mut verdicts = vec![
            Verdict::new(Host::Scratch, scratch),
            Verdict::new(Host::Alpine, alpine),
            Verdict::new(Host::Glibc, glibc),
        ];
        if !foreign.is_empty() {
            for verdict in &mut verdicts {
                verdict.needs.push(format!(
                    "a host that runs non-x86_64 programs ({})",
                    few(&foreign)
                ));
                verdict.runs = false;
            }
        }
        verdicts
    }

    /// The full report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.files.is_empty() {
            out.push_str("no programs found in the payload\n");
        }
        for (path, needs) in &self.files {
            match needs {
                Needs::Elf(f) => {
                    let kind = if f.foreign {
                        "ELF, not x86_64-64-bit".to_owned()
                    } else if f.is_static() {
                        "ELF, static".to_owned()
                    } else {
                        format!(
                            "ELF, dynamic, loader {}",
                            f.interpreter
                                .as_deref()
                                .map_or("(none: shared library)", carried)
                        )
                    };
                    let _ = writeln!(out, "{path}: {kind}");
                    if !f.needed.is_empty() {
                        let _ = writeln!(out, "    needs {}", f.needed.join(", "));
                    }
                    if let Some(v) = f.glibc {
                        let _ = writeln!(out, "    requires GLIBC_{v}");
                    }
                }
                Needs::Script { interpreter } => {
                    let _ = writeln!(out, "{path}: script, #!{}", carried(interpreter));
                }
            }
        }
        out.push('\n');
        if let Some(line) = self.architecture_line() {
            let _ = writeln!(out, "{line}");
        }
        if let Some(carried) = &self.portable {
            let _ = writeln!(out, "{PORTABLE_RUNS_ON}");
            let _ = writeln!(
                out,
                "portable: carries {carried}; nothing is needed from the host"
            );
            return out;
        }
        for verdict in self.verdicts() {
            let _ = writeln!(out, "{verdict}");
        }
        out
    }
}

/// A kind of host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// An empty FROM scratch image.
    Scratch,
    /// Alpine Linux (musl).
    Alpine,
    /// A glibc distribution.
    Glibc,
}

/// Whether the payload runs on a kind of host, and what it needs there.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The host.
    pub host: Host,
    /// True if it runs with nothing added (for glibc: given the versions listed).
    pub runs: bool,
    /// What the host must provide.
    pub needs: Vec<String>,
}

impl Verdict {
    fn new(host: Host, needs: Vec<String>) -> Verdict {
        // On glibc hosts, needing glibc itself is expected, not a blocker.
        let runs = match host {
            Host::Glibc => needs.iter().all(|n| n.starts_with("glibc >=")),
            _ => needs.is_empty(),
        };
        Verdict { host, runs, needs }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host {
            Host::Scratch => "FROM scratch",
            Host::Alpine => "alpine (musl)",
            Host::Glibc => "glibc hosts",
        };
        match (self.runs, self.needs.is_empty()) {
            (true, true) => write!(f, "{host}: ok, needs nothing from the host"),
            (true, false) => write!(f, "{host}: ok with {}", self.needs.join(", ")),
            (false, _) => write!(f, "{host}: needs {}", self.needs.join("; ")),
        }
    }
}

/// A portable payload's placeholder (`/XXX...`, see [`crate::portable`])
/// is shown as what it becomes.
fn carried(path: &str) -> &str {
    let placeholder = path
        .strip_prefix('/')
        .is_some_and(|rest| rest.len() > 64 && rest.bytes().all(|b| b == b'X'));
    if placeholder {
        "(carried in the payload; path set at extraction)"
    } else {
        path
    }
}

/// The interpreter of a `#!` script, read as the kernel reads it.
fn shebang(bytes: &[u8]) -> Option<String> {
    let line = crate::shebang::parse(bytes)?;
    Some(String::from_utf8_lossy(line.interpreter).into_owned())
}

fn few(items: &[&str]) -> String {
    if items.len() <= 3 {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..3].join(", "), items.len() - 3)
    }
}

fn join(items: &mut BTreeSet<&str>) -> String {
    items.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_is_named_by_the_first_file_of_each_machine() {
        let elf = |machine| {
            Needs::Elf(ElfFacts {
                machine: Some(machine),
                ..ElfFacts::default()
            })
        };
        let mut report = Report::default();
        assert_eq!(report.architecture_line(), None);
        report.files.insert("bin/a".into(), elf(183));
        report.files.insert("lib/b.so".into(), elf(183));
        assert_eq!(
            report.architecture_line().as_deref(),
            Some("architecture: aarch64")
        );
        report.files.insert("bin/c".into(), elf(62));
        let line = report.architecture_line().unwrap();
        assert!(line.contains("bin/a is aarch64, bin/c is x86_64"), "{line}");
        assert!(report.render().contains(&line));
    }

    #[test]
    fn glibc_versions_parse_and_order() {
        assert_eq!(
            GlibcVersion::parse("GLIBC_2.34"),
            Some(GlibcVersion(2, 34, 0))
        );
        assert_eq!(
            GlibcVersion::parse("GLIBC_2.2.5"),
            Some(GlibcVersion(2, 2, 5))
        );
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        assert!(GlibcVersion(2, 34, 0) > GlibcVersion(2, 2, 5));
        assert_eq!(GlibcVersion(2, 2, 5).to_string(), "2.2.5");
    }

    #[test]
    fn this_test_binary_is_dynamic_glibc() {
        // The test harness is built for the host's default target.
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let facts = elf_facts(&bytes).unwrap();
        if cfg!(target_env = "gnu") {
            assert!(facts.is_glibc(), "{facts:?}");
            assert!(facts.needed.iter().any(|n| n == "libc.so.6"));
            assert!(facts.glibc.is_some());
        }
    }

    #[test]
    fn scripts_and_static_programs() {
        let mut report = Report::default();
        report.add("bin/app", true, b"#!/bin/sh\nexec erl\n");
        report.add("README", false, b"#!/bin/sh\nnot executable\n");
        assert_eq!(report.files.len(), 1);
        let verdicts = report.verdicts();
        assert!(!verdicts[0].runs);
        assert!(verdicts[0].to_string().contains("/bin/sh (for bin/app)"));
        assert!(verdicts[1].runs, "{}", verdicts[1]);
        assert!(!verdicts[2].runs, "{}", verdicts[2]);

        let empty = Report::default();
        assert!(empty.verdicts().iter().all(|v| v.runs));
    }

    #[test]
    fn garbage_elf_does_not_panic() {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.resize(100, 0xff);
        let facts = elf_facts(&bytes).unwrap();
        assert!(facts.foreign);
        assert_eq!(elf_facts(b"plain"), None);
    }
}
