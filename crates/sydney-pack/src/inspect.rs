//! `sydney-pack inspect FILE`: the manifest of any bundle, read without
//! running it (the bundle's own `inspect` runs its stub, which may not run
//! here: another architecture, a noexec mount, a missing file system).

use std::fmt::Write as _;
use std::path::Path;

use bundle_format::Bundle;
use bundle_format::layout::{LEAD_IN_LEN, TRAILER_LEN};
use bundle_format::text::{hex, thousands};

use crate::error::{Error, Result};

/// Describes the bundle `path`; with `files`, also every payload entry.
pub fn inspect(path: &Path, files: bool) -> Result<String> {
    // Read whole: a build tool inspecting a file, not a launcher; a bundle
    // is at most a few hundred MB, and this avoids a map of a file that
    // could be truncated under us.
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_a_bundle = |source| Error::NotABundle {
        path: path.to_owned(),
        source,
    };
    let bundle = Bundle::open(&bytes).map_err(not_a_bundle)?;
    let m = bundle.manifest();
    let layout = bundle.layout();
    let payload_len = bundle.payload().len() as u64;
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{:<12} {value}", format!("{key}:"));
    };
    line("bundle", &path.display().to_string());
    // From the stub's ELF header: the one thing a bundle started on the
    // wrong machine cannot say itself (the kernel refuses to run it).
    line(
        "arch",
        &match bundle_format::elf::machine(&bytes) {
            Some(machine) => format!("{} (Linux)", bundle_format::elf::machine_name(machine)),
            None => "unknown (the stub is not ELF)".to_owned(),
        },
    );
    line("name", &m.name);
    line("version", &m.version);
    line("entry", &m.entry);
    line(
        "args",
        &if m.args.is_empty() {
            "(none)".to_owned()
        } else {
            m.args.join(" ")
        },
    );
    line("codec", m.codec.name());
    line(
        "payload",
        &format!(
            "{} bytes compressed, {} as tar",
            thousands(payload_len),
            thousands(m.tar_len)
        ),
    );
    line(
        "files",
        &format!(
            "{} entries, {} bytes of file data",
            m.file_count,
            thousands(m.unpacked_bytes)
        ),
    );
    let metadata = layout.trailer.index.end - layout.trailer.manifest.start
        + layout.trailer.signature_len
        + (TRAILER_LEN + LEAD_IN_LEN) as u64;
    // Checked in full (stub included): a signature that does not match is
    // an error, not a line.
    let signer = match bundle.signer().map_err(not_a_bundle)? {
        Some(key) => format!("key {} ({key})", key.key_id()),
        None => "unsigned".to_owned(),
    };
    line(
        "size",
        &format!(
            "{} bytes: stub {}, payload {}, metadata {}",
            thousands(bytes.len() as u64),
            thousands(layout.stub_len),
            thousands(payload_len),
            thousands(metadata)
        ),
    );
    line(
        "digest",
        &format!("sha256:{}", hex(bundle.payload_sha256())),
    );
    line("signed by", &signer);
    line("needs tree", if m.needs_tree { "yes" } else { "no" });
    if let Some(dir) = &m.default_cache_dir {
        line("cache dir", dir);
    }
    for (name, value) in &m.env {
        line("env", &format!("{name}={value} (unless set)"));
    }
    for (key, value) in &m.build {
        line("build", &format!("{key}={value}"));
    }
    if files {
        let index = bundle.index().map_err(not_a_bundle)?;
        out.push('\n');
        for entry in index.entries {
            let _ = match (&entry.kind, &entry.link) {
                (_, Some(link)) => writeln!(out, "{} -> {link}", entry.path),
                (bundle_format::EntryKind::Dir, _) => writeln!(out, "{}/", entry.path),
                _ => writeln!(
                    out,
                    "{:o} {:>12} {}",
                    entry.mode,
                    thousands(entry.size),
                    entry.path
                ),
            };
        }
    }
    Ok(out)
}
