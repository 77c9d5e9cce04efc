//! Maintenance commands: `inspect`, `verify`, `extract`, `clean`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bundle_format::checksum::{content_sha256, file_sha256};
use bundle_format::portable::{self, Patch};
use bundle_format::text::{hex, thousands};
use bundle_format::{Bundle, EntryKind, IndexEntry};

use crate::cache::{self, Decision, Mode, Placement};
use crate::exit::{Exit, coded};
use crate::tree;

/// What the chain would choose here, without creating anything.
pub fn preview(bundle: &Bundle<'_>) -> Result<Decision> {
    cache::preview_bundle(&cache::Env::from_process(), bundle)
        .map_err(cache::ExplicitRefused::into_error)
}

/// `inspect`: the manifest, sizes, digest, and where it would run from.
pub fn inspect(bundle: &Bundle<'_>, path: &Path, files: bool, doctor: bool) -> Result<String> {
    let m = bundle.manifest();
    let layout = bundle.layout();
    let payload_len = bundle.payload().len() as u64;
    let mut out = String::new();
    let _ = writeln!(out, "bundle:      {}", path.display());
    // The stub's own architecture: the same line as `sydney-pack inspect`.
    let _ = writeln!(out, "arch:        {} (Linux)", std::env::consts::ARCH);
    let _ = writeln!(out, "name:        {}", m.name);
    let _ = writeln!(out, "version:     {}", m.version);
    let _ = writeln!(out, "entry:       {}", m.entry);
    let args = if m.args.is_empty() {
        "(none)".to_owned()
    } else {
        m.args.join(" ")
    };
    let _ = writeln!(out, "args:        {args}");
    let _ = writeln!(out, "codec:       {}", m.codec);
    // Tenths of a percent, in integers: float formatting would add ~20 KB.
    let permille = (payload_len * 1000).checked_div(m.tar_len).unwrap_or(0);
    let ratio = format!("{}.{}", permille / 10, permille % 10);
    let _ = writeln!(
        out,
        "payload:     {} compressed, {} as tar ({ratio}%)",
        bytes(payload_len),
        bytes(m.tar_len)
    );
    let _ = writeln!(
        out,
        "files:       {} entries, {} of file data",
        m.file_count,
        bytes(m.unpacked_bytes)
    );
    let _ = writeln!(
        out,
        "size:        {} in all: stub {}, payload {}, metadata {}",
        bytes(
            layout.trailer.index.end
                + layout.trailer.signature_len
                + bundle_format::layout::TRAILER_LEN as u64
        ),
        bytes(layout.stub_len),
        bytes(payload_len),
        bytes(
            layout.trailer.index.end - layout.trailer.manifest.start
                + layout.trailer.signature_len
                + (bundle_format::layout::TRAILER_LEN + bundle_format::layout::LEAD_IN_LEN) as u64
        )
    );
    let _ = writeln!(out, "digest:      sha256:{}", hex(bundle.payload_sha256()));
    let _ = writeln!(out, "signed by:   {}", crate::trust::describe(bundle)?);
    let _ = writeln!(
        out,
        "needs tree:  {}",
        if m.needs_tree { "yes" } else { "no" }
    );
    if let Some(dir) = &m.default_cache_dir {
        let _ = writeln!(out, "cache default: {dir}");
    }
    for (name, value) in &m.env {
        let _ = writeln!(out, "env:         {name}={value} (unless set)");
    }
    let _ = writeln!(out, "cache:       {}", describe_placement(bundle));
    for (key, value) in &m.build {
        let _ = writeln!(out, "build:       {key}={value}");
    }
    if files {
        out.push('\n');
        for entry in bundle.index()?.entries {
            let _ = writeln!(out, "{}", describe_entry(&entry));
        }
    }
    if doctor {
        // Rendered by the packer (docs/decisions/0071-doctor-report-at-pack-time.md).
        out.push('\n');
        out.push_str(&bundle.index()?.doctor);
    }
    Ok(out)
}

fn describe_placement(bundle: &Bundle<'_>) -> String {
    let decision = match preview(bundle) {
        Ok(decision) => decision,
        Err(err) => return format!("{err:#}"),
    };
    let skipped = if decision.refusals.is_empty() {
        String::new()
    } else {
        format!("; skipped {}", decision.refusal_summary())
    };
    match &decision.placement {
        Placement::Root(root) => {
            let tree = root.candidate.root.join(bundle.tree_dir_name());
            let state = if root.warm {
                "extracted"
            } else {
                "not extracted yet"
            };
            let mode = match root.mode {
                Mode::Exec => "runs from the tree",
                Mode::NoExec => "noexec mount: data files on disk, entry runs from memory",
            };
            format!(
                "{} ({}; {state}; {mode}){skipped}",
                tree.display(),
                root.candidate.source.label()
            )
        }
        Placement::Memory => format!("none usable: the entry would run from memory{skipped}"),
    }
}

fn describe_entry(entry: &IndexEntry) -> String {
    match entry.kind {
        EntryKind::Dir => format!("d {:o} {:>10}  {}/", entry.mode, "", entry.path),
        EntryKind::File => format!(
            "f {:o} {:>10}  {}  sha256:{}",
            entry.mode,
            entry.size,
            entry.path,
            hex(&entry.sha256[..8])
        ),
        EntryKind::Symlink => format!(
            "l {:o} {:>10}  {} -> {}",
            entry.mode,
            "",
            entry.path,
            entry.link.as_deref().unwrap_or("?")
        ),
    }
}

/// `verify`: the payload digest; with `deep`, also the extracted tree.
pub fn verify(bundle: &Bundle<'_>, deep: bool) -> Result<String> {
    bundle.verify_payload()?;
    let index = bundle.index()?;
    let mut out = format!(
        "payload ok: sha256:{} ({} entries)\nsigned by: {}\n",
        hex(bundle.payload_sha256()),
        index.entries.len(),
        crate::trust::describe(bundle)?
    );
    if !deep {
        return Ok(out);
    }
    let decision = preview(bundle)?;
    let tree = decision
        .root()
        .filter(|root| root.warm)
        .map(|root| root.candidate.root.join(bundle.tree_dir_name()))
        .ok_or_else(|| {
            coded(
                Exit::TreeMismatch,
                "no extracted tree here to compare (it is created by `start`, `daemon` or `exec`)",
            )
        })?;
    let patches = portable_patches(bundle, &tree)?;
    let mut problems = compare_tree(&tree, &index.entries, &patches)?;
    if !marker_matches(&tree, bundle) {
        problems.push(format!(
            "marker: {} is missing or does not name this bundle",
            tree::MARKER
        ));
    }
    let _ = writeln!(out, "tree: {}", tree.display());
    for problem in &problems {
        let _ = writeln!(out, "{problem}");
    }
    // The most serious kind found decides the exit code.
    let worst = [
        ("privileged:", Exit::TreePrivileged),
        ("missing:", Exit::TreeMismatch),
        ("changed:", Exit::TreeMismatch),
        ("extra:", Exit::TreeExtra),
        ("marker:", Exit::TreeUnmarked),
    ]
    .into_iter()
    .find(|(kind, _)| problems.iter().any(|p| p.starts_with(kind)));
    if let Some((_, exit)) = worst {
        return Err(coded(
            exit,
            format!(
                "{}the extracted tree differs from the bundle; run `clean --all` and start again",
                out
            ),
        ));
    }
    out.push_str("tree ok: every file matches\n");
    Ok(out)
}

/// Whether the tree's marker is a file naming this bundle and digest.
fn marker_matches(tree: &Path, bundle: &Bundle<'_>) -> bool {
    let path = tree.join(tree::MARKER);
    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut text = String::new();
    let read = File::open(&path).and_then(|file| file.take(4096).read_to_string(&mut text));
    if read.is_err() {
        return false;
    }
    let m = bundle.manifest();
    let expected = format!(
        "name={}\nversion={}\npayload_sha256={}\n",
        m.name,
        m.version,
        hex(bundle.payload_sha256())
    );
    text == expected
}

/// A portable tree's placeholders, by file (empty for other bundles).
fn portable_patches(bundle: &Bundle<'_>, tree: &Path) -> Result<HashMap<String, Vec<Patch>>> {
    let mut by_file: HashMap<String, Vec<Patch>> = HashMap::new();
    if bundle.manifest().build_value(portable::BUILD_KEY).is_none() {
        return Ok(by_file);
    }
    for patch in portable::read_list(tree)? {
        by_file.entry(patch.path.clone()).or_default().push(patch);
    }
    Ok(by_file)
}

/// Lists `missing:`, `changed:` and `extra:` lines for `tree`. A file with
/// portable placeholders must hold this tree's path in each of them and
/// match the index everywhere else.
fn compare_tree(
    tree: &Path,
    entries: &[IndexEntry],
    patches: &HashMap<String, Vec<Patch>>,
) -> Result<Vec<String>> {
    let absolute =
        std::path::absolute(tree).with_context(|| format!("cannot resolve {}", tree.display()))?;
    let mut problems = Vec::new();
    let mut known: HashSet<PathBuf> = HashSet::new();
    for entry in entries {
        let path = tree.join(&entry.path);
        known.insert(path.clone());
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => {
                problems.push(format!("missing: {}", entry.path));
                continue;
            }
        };
        let changed = match entry.kind {
            EntryKind::Dir => (!meta.is_dir()).then_some("not a directory"),
            EntryKind::Symlink => {
                let target = fs::read_link(&path).ok();
                (target.as_deref() != entry.link.as_deref().map(Path::new))
                    .then_some("symlink target differs")
            }
            EntryKind::File if !meta.is_file() => Some("not a regular file"),
            EntryKind::File if meta.len() != entry.size => Some("size differs"),
            EntryKind::File
                if (meta.permissions().mode() & 0o100 != 0) != (entry.mode & 0o100 != 0) =>
            {
                Some("exec bit differs")
            }
            EntryKind::File => match patches.get(&entry.path) {
                Some(list) => {
                    let mut bytes = fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let list: Vec<&Patch> = list.iter().collect();
                    match portable::restore(&list, &absolute, &mut bytes) {
                        Ok(()) => {
                            (content_sha256(&bytes) != entry.sha256).then_some("content differs")
                        }
                        Err(why) => {
                            problems.push(format!("changed: {} ({why})", entry.path));
                            continue;
                        }
                    }
                }
                None => {
                    let digest = file_sha256(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    (digest != entry.sha256).then_some("content differs")
                }
            },
        };
        if let Some(why) = changed {
            problems.push(format!("changed: {} ({why})", entry.path));
        }
        let special = meta.permissions().mode() & 0o7000;
        if special != 0 && !meta.file_type().is_symlink() {
            problems.push(format!(
                "privileged: {} (mode {:o}: setuid, setgid or sticky bit)",
                entry.path,
                meta.permissions().mode() & 0o7777
            ));
        }
    }
    let mut stack = vec![tree.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = item?.path();
            if path == tree.join(tree::MARKER) {
                continue;
            }
            if !known.contains(&path) {
                let rel = path.strip_prefix(tree).unwrap_or(&path).display();
                problems.push(format!("extra: {rel}"));
                if let Ok(meta) = fs::symlink_metadata(&path) {
                    if meta.permissions().mode() & 0o7000 != 0 && !meta.file_type().is_symlink() {
                        problems.push(format!(
                            "privileged: {rel} (mode {:o}: setuid, setgid or sticky bit)",
                            meta.permissions().mode() & 0o7777
                        ));
                    }
                }
            } else if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                stack.push(path);
            }
        }
    }
    Ok(problems)
}

/// `extract DIR`: unpacks into a new directory, atomically.
pub fn extract(bundle: &Bundle<'_>, dir: &Path) -> Result<String> {
    // An existing empty directory is replaced by the final rename itself
    // (rename(2) onto an empty directory): never removed beforehand, so a
    // failed extraction leaves it as it was.
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(coded(
                    Exit::Failure,
                    format!(
                        "{} exists and is not empty; choose a new directory",
                        dir.display()
                    ),
                ));
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(anyhow::Error::new(err).context(format!("cannot use {}", dir.display())));
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dir.file_name().ok_or_else(|| {
        coded(
            Exit::Usage,
            format!("{} has no directory name", dir.display()),
        )
    })?;
    let temp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    tree::check_room(bundle, parent)
        .with_context(|| format!("cannot extract into {}", dir.display()))?;
    fs::create_dir(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    // A portable payload's placeholders get DIR's path: the copy runs there.
    let unpacked = bundle
        .unpack_verified(&temp)
        .and_then(|stats| tree::patch_portable(bundle, &temp, dir).map(|()| stats));
    let stats = match unpacked {
        Ok(stats) => stats,
        Err(err) => {
            tree::remove_tree(&temp);
            return Err(
                anyhow::Error::new(err).context(format!("cannot extract into {}", dir.display()))
            );
        }
    };
    if let Err(err) = fs::rename(&temp, dir) {
        tree::remove_tree(&temp);
        return Err(
            anyhow::Error::new(err).context(format!("cannot rename into {}", dir.display()))
        );
    }
    Ok(format!(
        "extracted {} entries ({}) to {}\n",
        stats.entries(),
        bytes(stats.bytes),
        dir.display()
    ))
}

/// `clean`: housekeeping in every cache root of the chain that exists.
pub fn clean(bundle: &Bundle<'_>, all: bool) -> Result<String> {
    let manifest = bundle.manifest();
    let candidates = cache::candidates(
        &cache::Env::from_process(),
        manifest.default_cache_dir.as_deref(),
    );
    let current = bundle.tree_dir_name();
    let mut out = String::new();
    let mut removed = 0;
    for candidate in candidates {
        let Ok(meta) = fs::symlink_metadata(&candidate.root) else {
            continue;
        };
        if cache::check_private(&meta).is_err() {
            continue;
        }
        let (current, keep) = if all {
            (None, 0)
        } else {
            (Some(current.as_str()), tree::KEEP_OLDER)
        };
        let report = tree::housekeeping(&candidate.root, &manifest.name, current, keep);
        if report.foreign {
            let _ = writeln!(
                out,
                "skipped {}: it holds files the bundle did not create (a cache root should be a \
                 directory of its own)",
                candidate.root.display()
            );
        }
        for path in report.temps_removed.iter().chain(&report.trees_removed) {
            let _ = writeln!(out, "removed {}", path.display());
            removed += 1;
        }
        for path in &report.in_use {
            let _ = writeln!(out, "kept {} (in use by a running process)", path.display());
        }
    }
    if removed == 0 {
        out.push_str("nothing to clean\n");
    }
    Ok(out)
}

/// `1,234,567 bytes`.
fn bytes(n: u64) -> String {
    format!("{} bytes", thousands(n))
}
