//! Laying out the stub's warm path together (`crates/stub/warm-path.ld`).
//!
//! A warm start runs about 150 functions spread over all of the stub's
//! code. Each first touch of a 64 KB stretch of code costs a page fault (the
//! kernel maps 16 pages around it), and every page touched costs TLB and
//! cache misses. Placing the warm path's functions side by side, in an
//! output section `.text.warm` before `.text`, makes every warm start
//! faster (docs/decisions/0005-warm-path-layout.md).
//!
//! The list is made by `cargo xtask warm-order`: it builds an unstripped
//! stub with a link map, runs one warm start under callgrind up to the
//! `execve` of the entry, and turns the functions that ran into linker
//! input-section patterns (hashes replaced by `*`, so they survive
//! unrelated changes). Every stub build links with the list and reports
//! patterns that no longer match anything; `tests/e2e/run.rs` fails when
//! more than a tenth have gone stale.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bundle_format::Codec;
use bundle_format::pack::PackOptions;

use crate::toolchain::Toolchain;
use crate::util::{self, command};

mod map;

pub use map::Coverage;
use map::{InputSection, code_sections};

/// The linker script, relative to the workspace root.
pub const SCRIPT: &str = "crates/stub/warm-path.ld";

/// The output section the script creates.
const SECTION: &str = ".text.warm";

/// The rustc arguments that link the stub with the warm-path script and
/// write a link map to `map`.
pub fn link_args(map: &Path) -> Vec<String> {
    vec![
        format!("-Clink-arg=-Wl,-T,{}", util::root().join(SCRIPT).display()),
        format!("-Clink-arg=-Wl,-Map={}", map.display()),
    ]
}

/// The functions a callgrind profile (`--demangle=no`) saw run.
fn functions_run(profile: &str) -> BTreeSet<String> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut ran = BTreeSet::new();
    for line in profile.lines() {
        let (is_fn, rest) = if let Some(rest) = line.strip_prefix("fn=") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            (false, rest)
        } else {
            continue;
        };
        // `(id) name` defines a compressed name, `(id)` refers to one.
        let (id, name) = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, name)) => (id.to_owned(), name.trim()),
            None => (rest.to_owned(), rest),
        };
        if !name.is_empty() {
            // Recursion shows as `name'2`; valgrind calls the C library's
            // start function `(below main)`.
            let name = name.split('\'').next().unwrap_or(name);
            let name = if name == "(below main)" {
                "__libc_start_main"
            } else {
                name
            };
            names.insert(id.clone(), name.to_owned());
        }
        if is_fn {
            ran.insert(id);
        }
    }
    ran.iter().filter_map(|id| names.get(id).cloned()).collect()
}

/// A linker-script pattern for `section`, stable across rebuilds: Rust
/// symbol hashes and compiler-made numeric suffixes become `*`.
fn pattern_for(section: &InputSection) -> String {
    let name = wildcard_hashes(&section.name);
    let rust = section.name.starts_with(".text._R");
    match section
        .file
        .rsplit_once('/')
        .map_or(section.file.as_str(), |(_, f)| f)
    {
        // A C function from an archive member, e.g. musl's libc.a(open.lo).
        file if file.ends_with(')') && !rust => {
            let (archive, member) = file
                .trim_end_matches(')')
                .split_once('(')
                .unwrap_or((file, ""));
            format!("*{archive}:{member}({name})")
        }
        // A C start-up object, e.g. rcrt1.o.
        file if !rust && !file.contains(".rcgu.") => {
            format!("*{file}({name})")
        }
        // Rust: the section name alone (object names carry hashes).
        _ => format!("*({name})"),
    }
}

/// Replaces v0 crate disambiguators (`Cs<base62>_`), legacy hashes
/// (`17h<16 hex>E`) and trailing `.llvm.N` / `.N` suffixes with `*`.
fn wildcard_hashes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"Cs") {
            let run = bytes[i + 2..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if run > 0 && bytes.get(i + 2 + run) == Some(&b'_') {
                out.push_str("Cs*_");
                i += 3 + run;
                continue;
            }
        }
        if bytes[i..].starts_with(b"17h")
            && bytes.len() >= i + 20
            && bytes[i + 3..i + 19].iter().all(u8::is_ascii_hexdigit)
            && bytes[i + 19] == b'E'
        {
            out.push_str("17h*E");
            i += 20;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    // `.llvm.123` and `.123`: numbering that changes with unrelated code.
    if let Some((head, tail)) = out.rsplit_once('.')
        && !tail.is_empty()
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        let head = head.strip_suffix(".llvm").unwrap_or(head);
        out = format!("{head}.*");
    }
    out
}

/// The input sections holding the functions that ran, smallest first (so
/// the small, fully used ones share pages and the few large functions that
/// are only partly run go last).
fn warm_sections(sections: &[InputSection], ran: &BTreeSet<String>) -> Vec<InputSection> {
    let mut name_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for section in sections {
        *name_counts.entry(section.name.as_str()).or_default() += 1;
    }
    let mut chosen: BTreeMap<String, InputSection> = BTreeMap::new();
    for section in sections {
        let function = section.name.strip_prefix(".text.").unwrap_or("");
        // Static C functions have no symbol in the map, only their section
        // (`.text.__do_init`); a name shared by many sections (musl's
        // `.text.dummy`) says nothing about which one ran.
        let by_name = ran.contains(function) && name_counts[section.name.as_str()] == 1;
        let by_symbol = section.symbols.iter().any(|s| ran.contains(s));
        if by_symbol || by_name {
            chosen
                .entry(pattern_for(section))
                .or_insert_with(|| section.clone());
        }
    }
    // A shared name that ran (musl's `dummy` stubs behind weak aliases, as
    // `close` calls `__aio_close`) is taken from the members already chosen.
    let chosen_files: BTreeSet<String> = chosen.values().map(|s| s.file.clone()).collect();
    for section in sections {
        let function = section.name.strip_prefix(".text.").unwrap_or("");
        if ran.contains(function) && chosen_files.contains(&section.file) {
            chosen
                .entry(pattern_for(section))
                .or_insert_with(|| section.clone());
        }
    }
    let mut warm: Vec<InputSection> = chosen.into_values().collect();
    warm.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)));
    warm
}

/// The linker script for `warm`.
fn script(warm: &[InputSection], ran: usize) -> String {
    let bytes: u64 = warm.iter().map(|s| s.size).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "/* The stub's warm path, laid out together: see xtask/src/warm_order/.\n   \
         Generated by `cargo xtask warm-order` from one warm start under\n   \
         callgrind ({ran} functions ran; {} input sections, {bytes} bytes).\n   \
         Do not edit by hand; regenerate after changing the warm path. */",
        warm.len()
    );
    out.push_str("SECTIONS\n{\n  .text.warm :\n  {\n");
    // `warm_sections` keeps one section per pattern, so none repeats.
    for section in warm {
        let _ = writeln!(out, "    {}", pattern_for(section));
    }
    out.push_str("  }\n}\nINSERT BEFORE .text;\n");
    out
}

/// `cargo xtask warm-order`: regenerates [`SCRIPT`].
pub fn generate() -> Result<()> {
    util::ensure_programs(&[("valgrind", "valgrind")])?;
    let work = util::target_dir().join("warm-order");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    let mut toolchain = Toolchain::detect()?;
    toolchain.keep_symbols = true;
    // Held until the profile is read: a concurrent stub build would relink
    // over the map and the executable.
    let _lock = toolchain.lock_stub_builds()?;
    let (built, map) = toolchain.link_stub(Codec::Gzip)?;
    // The next stub build links over it (stripped); keep this copy.
    fs::create_dir_all(&work)?;
    let stub = work.join("bundle-stub-symbols");
    fs::copy(&built, &stub)?;

    let mut ran = profile_warm_start(&work, &stub)?;
    // Valgrind reports assembly functions without a symbol size by address
    // only: the entry point, the thread-pointer set-up and the C library's
    // string functions, which every start runs. `execve` itself is where
    // the profile stops. They are named here.
    ran.extend(["_start", "__set_thread_area", "memcpy", "memset", "execve"].map(str::to_owned));
    let map_text =
        fs::read_to_string(&map).with_context(|| format!("cannot read {}", map.display()))?;
    let warm = warm_sections(&code_sections(&map_text), &ran);
    if warm.len() < 20 {
        bail!(
            "only {} of the {} functions that ran were found in the link map {}",
            warm.len(),
            ran.len(),
            map.display()
        );
    }
    let out = util::root().join(SCRIPT);
    fs::write(&out, script(&warm, ran.len()))
        .with_context(|| format!("cannot write {}", out.display()))?;
    let bytes: u64 = warm.iter().map(|s| s.size).sum();
    println!(
        "wrote {SCRIPT}: {} input sections, {} bytes, from {} functions that ran",
        warm.len(),
        util::grouped(bytes),
        ran.len()
    );
    Ok(())
}

/// Packs a release around `stub`, starts it once (cold), then profiles a
/// warm start under callgrind up to the entry's `execve`; returns the
/// functions that ran (raw symbol names).
fn profile_warm_start(work: &Path, stub: &Path) -> Result<BTreeSet<String>> {
    // A release whose entry exits at once (a copy of the static stub, given
    // --help as the user's argument, the way users pass `-- --port N`): only
    // the stub's own part is profiled.
    let release = work.join("release");
    fs::create_dir_all(release.join("bin"))?;
    let entry = release.join("bin/entry");
    fs::copy(stub, &entry)?;
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o755))?;
    let bundle = work.join("warm-order-bundle");
    let options = PackOptions {
        name: "warm-order".to_owned(),
        version: "0.0.0".to_owned(),
        entry: "bin/entry".to_owned(),
        args: Vec::new(),
        codec: Codec::Gzip,
        level: 1,
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: Vec::new(),
        portable: None,
        env: Vec::new(),
    };
    crate::pack::pack(&release, &fs::read(stub)?, &options, &bundle)?;

    // The default cache chain ($HOME/.cache), as most users run it.
    let home = work.join("home");
    fs::create_dir_all(&home)?;
    let start = |program: &Path, args: &[&str]| {
        let mut run = command(program);
        run.args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .stdout(std::process::Stdio::null());
        run
    };
    let start_args = ["start", "--", "--help"];
    util::run(&mut start(&bundle, &start_args)).context("the cold start failed")?;
    let profile_base = work.join("callgrind.out");
    let out_file = format!("--callgrind-out-file={}", profile_base.display());
    let mut profiled = start(
        Path::new("valgrind"),
        &[
            "--tool=callgrind",
            "--demangle=no",
            "--dump-before=execve",
            &out_file,
        ],
    );
    profiled.arg(&bundle).args(start_args);
    util::run(&mut profiled).context("the warm start under callgrind failed")?;
    // Dumps are numbered; the first is the one taken at the entry's execve.
    let profile_path = PathBuf::from(format!("{}.1", profile_base.display()));
    let profile = fs::read_to_string(&profile_path).with_context(|| {
        format!(
            "no profile at {}: the stub did not reach execve under callgrind",
            profile_path.display()
        )
    })?;
    Ok(functions_run(&profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use map::tests::MAP;

    #[test]
    fn hashes_and_numbering_become_wildcards() {
        assert_eq!(
            wildcard_hashes(".text._RNvNtCsfRUcGsUHpLb_11bundle_stub6launch7prepare"),
            ".text._RNvNtCs*_11bundle_stub6launch7prepare"
        );
        assert_eq!(
            wildcard_hashes(".text._ZN4core3fmt5write17h0123456789abcdefE"),
            ".text._ZN4core3fmt5write17h*E"
        );
        assert_eq!(
            wildcard_hashes(".text._RNvCsab_3foo3bar.llvm.1234"),
            ".text._RNvCs*_3foo3bar.*"
        );
        assert_eq!(
            wildcard_hashes(".text._RNvCsab_3foo3fmt.876"),
            ".text._RNvCs*_3foo3fmt.*"
        );
        assert_eq!(wildcard_hashes(".text.open"), ".text.open");
    }

    #[test]
    fn patterns_name_archive_members_and_startup_objects_but_not_rust_objects() {
        let sections = code_sections(MAP);
        assert_eq!(pattern_for(&sections[0]), "*libc.a:open.lo(.text.open)");
        assert_eq!(
            pattern_for(&sections[1]),
            "*(.text._RNvNtCs*_11bundle_stub6launch7prepare)"
        );
        assert_eq!(pattern_for(&sections[4]), "*rcrt1.o(.text)");
    }

    #[test]
    fn profile_names_are_resolved_and_only_functions_that_ran_count() {
        let profile = "\
fn=(1) _start_c
cfn=(2) _RNvCsfRUcGsUHpLb_11bundle_stub4main
calls=1 0
fn=(2)
cfn=(3) dummy
fn=(4) open'2
fn=(6) (below main)
fn=(5) _RNvXsq_NtCsaBc_5alloc6StringNtNtCsdEf_4core3fmt7Display3fmt.876
";
        let ran = functions_run(profile);
        let expected: BTreeSet<String> = [
            "_start_c",
            "_RNvCsfRUcGsUHpLb_11bundle_stub4main",
            "open",
            "__libc_start_main",
            "_RNvXsq_NtCsaBc_5alloc6StringNtNtCsdEf_4core3fmt7Display3fmt.876",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(
            ran, expected,
            "dummy was only called, never profiled as run"
        );
    }

    #[test]
    fn a_shared_static_name_is_taken_only_from_members_that_ran() {
        let map = "\
.text           0x0000000000002000     0x1000
 .text.dummy    0x0000000000002000        0x4 /x/libc.a(close.lo)
                0x0000000000002000                __aio_close
 .text.close    0x0000000000002004       0x40 /x/libc.a(close.lo)
                0x0000000000002004                close
 .text.dummy    0x0000000000002044        0x4 /x/libc.a(lseek.lo)
";
        let ran = functions_run("fn=(1) close\nfn=(2) dummy\n");
        let patterns: Vec<String> = warm_sections(&code_sections(map), &ran)
            .iter()
            .map(pattern_for)
            .collect();
        assert_eq!(
            patterns,
            [
                "*libc.a:close.lo(.text.dummy)",
                "*libc.a:close.lo(.text.close)"
            ]
        );
    }

    #[test]
    fn warm_sections_are_the_ones_that_ran_smallest_first_without_ambiguous_c_names() {
        let mut ran = functions_run("fn=(1) _start_c\nfn=(2) open\nfn=(3) dummy\n");
        ran.insert("_RNvCsfRUcGsUHpLb_11bundle_stub4main".to_owned());
        let warm = warm_sections(&code_sections(MAP), &ran);
        let patterns: Vec<String> = warm.iter().map(pattern_for).collect();
        assert_eq!(
            patterns,
            [
                "*rcrt1.o(.text)",
                "*libc.a:open.lo(.text.open)",
                "*(.text._RNvCs*_11bundle_stub4main)",
            ]
        );
        let text = script(&warm, ran.len());
        assert!(text.contains("INSERT BEFORE .text;"), "{text}");
        assert!(text.contains("    *libc.a:open.lo(.text.open)\n"), "{text}");
    }
}
