//! Reading GNU ld and lld link maps: the code input sections of a link,
//! and how much of the warm-path script matched.

use std::fmt::Write as _;

use super::{SCRIPT, SECTION};

/// How much of the script still matches the code, read from a link map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Whether the map lists the script's patterns (GNU ld's does; lld's,
    /// used by the glibc fallback, lists only what was placed).
    pub checked: bool,
    /// Patterns in the script.
    pub patterns: usize,
    /// Patterns that matched no input section.
    pub stale: Vec<String>,
    /// Size of the `.text.warm` output section.
    pub bytes: u64,
}

impl Coverage {
    /// Reads the coverage of the script from a link map.
    pub fn from_map(map: &str) -> Coverage {
        if map
            .lines()
            .next()
            .is_some_and(|l| l.contains("VMA") && l.contains("LMA"))
        {
            return Self::from_lld_map(map);
        }
        let mut coverage = Coverage {
            checked: true,
            patterns: 0,
            stale: Vec::new(),
            bytes: 0,
        };
        let mut inside = false;
        let mut pending: Option<String> = None;
        for line in map.lines() {
            if !line.starts_with(' ') && !line.is_empty() {
                if inside {
                    break;
                }
                if let Some(rest) = line.strip_prefix(SECTION)
                    && rest.starts_with(' ')
                {
                    inside = true;
                    coverage.bytes = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(parse_hex)
                        .unwrap_or(0);
                }
                continue;
            }
            if !inside {
                continue;
            }
            if let Some(pattern) = line.strip_prefix(" *")
                && !pattern.starts_with("fill*")
            {
                coverage.stale.extend(pending.take());
                coverage.patterns += 1;
                pending = Some(format!("*{pattern}"));
            } else if line.starts_with(" .") {
                pending = None;
            }
        }
        coverage.stale.extend(pending);
        coverage
    }

    /// An lld map (`VMA LMA Size Align Out In Symbol` columns): only the
    /// size of the section can be read.
    fn from_lld_map(map: &str) -> Coverage {
        let bytes = map
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 5 && f[4] == SECTION)
            .and_then(|f| u64::from_str_radix(f[2], 16).ok())
            .unwrap_or(0);
        Coverage {
            checked: false,
            patterns: 0,
            stale: Vec::new(),
            bytes,
        }
    }

    /// Patterns that still match something.
    pub fn matched(&self) -> usize {
        self.patterns - self.stale.len()
    }

    /// The summary kept next to the stub, read by the end-to-end tests.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "checked={}\npatterns={}\nmatched={}\nbytes={}\n",
            u8::from(self.checked),
            self.patterns,
            self.matched(),
            self.bytes
        );
        for pattern in &self.stale {
            let _ = writeln!(out, "stale={pattern}");
        }
        out
    }

    /// Tells the developer when the list has drifted from the code.
    pub fn report(&self) {
        if self.bytes == 0 {
            eprintln!("note: the stub was linked without {SCRIPT}: its warm path is not grouped");
        } else if !self.stale.is_empty() {
            eprintln!(
                "note: {} of {} warm-path patterns in {SCRIPT} match nothing (e.g. {}); \
                 `cargo xtask warm-order` regenerates the list",
                self.stale.len(),
                self.patterns,
                self.stale[0]
            );
        }
    }
}

/// One input section of the link, as the map lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSection {
    /// Section name, e.g. `.text.open`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The object file, or `archive(member)`.
    pub file: String,
    /// Global symbols the map lists in it.
    pub symbols: Vec<String>,
}

/// The code input sections (`.text*`) of a GNU ld link map.
pub fn code_sections(map: &str) -> Vec<InputSection> {
    let mut sections: Vec<InputSection> = Vec::new();
    let mut in_code = false;
    let mut wrapped: Option<String> = None;
    for line in map.lines().filter(|l| !l.is_empty()) {
        if !line.starts_with(' ') {
            // An output section header (or a heading): code starts at .text*.
            in_code = line.starts_with(".text");
            wrapped = None;
            continue;
        }
        if !in_code {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(name) = wrapped.take() {
            // The address, size and file of a section whose long name
            // filled the line before.
            if let [addr, size, file @ ..] = fields.as_slice()
                && parse_hex(addr).is_some()
            {
                push_section(&mut sections, name, size, file);
                continue;
            }
        }
        match fields.as_slice() {
            [name] if name.starts_with('.') => wrapped = Some((*name).to_owned()),
            [name, addr, size, file @ ..] if name.starts_with('.') && parse_hex(addr).is_some() => {
                push_section(&mut sections, (*name).to_owned(), size, file);
            }
            [addr, symbol] if parse_hex(addr).is_some() && line.starts_with("                ") => {
                if let Some(last) = sections.last_mut() {
                    last.symbols.push((*symbol).to_owned());
                }
            }
            _ => {}
        }
    }
    sections
}

fn push_section(sections: &mut Vec<InputSection>, name: String, size: &str, file: &[&str]) {
    let (Some(size), false) = (parse_hex(size), file.is_empty()) else {
        return;
    };
    sections.push(InputSection {
        name,
        size,
        file: file.join(" "),
        symbols: Vec::new(),
    });
}

fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A GNU ld map excerpt: the warm section with a matched and a stale
    /// pattern, then `.text` with wrapped names, ambiguous musl names and a
    /// start-up object.
    pub const MAP: &str = "\
Memory Configuration

.text.warm      0x0000000000001040      0x200
 *libc.a:open.lo(.text.open)
 .text.open     0x0000000000001040       0x92 /x/self-contained/libc.a(open.lo)
                0x0000000000001040                open
 *(.text._RNvNtCs*_11bundle_stub6launch7prepare)
 .text._RNvNtCsfRUcGsUHpLb_11bundle_stub6launch7prepare
                0x00000000000010e0      0x9dd /x/deps/bundle_stub-1.bundle_stub.a1b2-cgu.0.rcgu.o
 *(.text._RNvNtCs*_11bundle_stub6launch4gone)
 *fill*         0x0000000000001abd        0x3 
.text           0x0000000000002000     0x1000
 *(.text.unlikely .text.*_unlikely .text.unlikely.*)
 .text.dummy    0x0000000000002000        0x4 /x/self-contained/libc.a(close.lo)
 .text.dummy    0x0000000000002004        0x4 /x/self-contained/libc.a(lseek.lo)
 .text          0x0000000000002010       0x20 /x/self-contained/rcrt1.o
                0x0000000000002010                _start_c
 .text._RNvCsfRUcGsUHpLb_11bundle_stub4main
                0x0000000000002030      0x100 /x/deps/bundle_stub-1.bundle_stub.a1b2-cgu.0.rcgu.o
 .text._RNvXsq_NtCsaBc_5alloc6StringNtNtCsdEf_4core3fmt7Display3fmt.876
                0x0000000000002130       0x13 /x/deps/alloc-9.rcgu.o
.rodata         0x0000000000003000      0x100
 .rodata.open   0x0000000000003000       0x10 /x/self-contained/libc.a(open.lo)
";

    #[test]
    fn coverage_counts_patterns_that_matched_nothing() {
        let coverage = Coverage::from_map(MAP);
        assert_eq!(coverage.patterns, 3);
        assert_eq!(
            coverage.stale,
            vec!["*(.text._RNvNtCs*_11bundle_stub6launch4gone)".to_owned()]
        );
        assert_eq!(coverage.bytes, 0x200);
        assert_eq!(coverage.matched(), 2);
        assert!(coverage.summary().contains("matched=2\n"));
    }

    #[test]
    fn an_lld_map_gives_the_size_but_no_patterns() {
        let map = "             VMA              LMA     Size Align Out     In      Symbol
          244200           244200    12b54    16 .text.warm
          244200           244200       8c    16         /x/libc.a(_Fork.lo):(.text.__post_Fork)
";
        let coverage = Coverage::from_map(map);
        assert!(!coverage.checked);
        assert_eq!(coverage.bytes, 0x12b54);
        assert!(coverage.summary().starts_with("checked=0\n"));
    }

    #[test]
    fn a_map_without_the_section_has_no_patterns() {
        let coverage = Coverage::from_map(".text 0x0 0x10\n .text 0x0 0x10 a.o\n");
        assert_eq!(coverage.patterns, 0);
        assert_eq!(coverage.bytes, 0);
    }

    #[test]
    fn code_sections_reads_wrapped_names_and_symbols_and_skips_data() {
        let sections = code_sections(MAP);
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ".text.open",
                ".text._RNvNtCsfRUcGsUHpLb_11bundle_stub6launch7prepare",
                ".text.dummy",
                ".text.dummy",
                ".text",
                ".text._RNvCsfRUcGsUHpLb_11bundle_stub4main",
                ".text._RNvXsq_NtCsaBc_5alloc6StringNtNtCsdEf_4core3fmt7Display3fmt.876",
            ]
        );
        assert_eq!(sections[0].symbols, ["open"]);
        assert_eq!(sections[1].size, 0x9dd);
        assert_eq!(sections[4].symbols, ["_start_c"]);
    }
}
