//! Rules for paths inside a release tree, shared by the packer and the
//! unpacker so that both refuse exactly the same things.

/// Longest relative path accepted (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// The marker file the stub writes at the top of every extracted tree. A
/// payload may not hold an entry of that name: the marker write could follow
/// it (a symlink onto the entry program) or fail on it (a directory).
pub const MARKER_NAME: &str = ".sydney-bundle";

/// Checks that `path` is a plain relative path inside the tree: not empty,
/// not absolute, no `.` or `..` or empty components, no NUL.
/// A single trailing `/` (as tar writes for directories) is allowed.
pub fn validate_relative(path: &str) -> Result<(), &'static str> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err("empty path");
    }
    if trimmed.len() > MAX_PATH_LEN {
        return Err("path is longer than 4096 bytes");
    }
    if trimmed.starts_with('/') {
        return Err("absolute path");
    }
    if trimmed.contains('\0') {
        return Err("NUL byte in path");
    }
    if trimmed.split('/').next() == Some(MARKER_NAME) {
        return Err("`.sydney-bundle` at the top of the tree is reserved for the bundle's marker");
    }
    for component in trimmed.split('/') {
        match component {
            "" => return Err("empty path component"),
            "." => return Err("`.` component"),
            ".." => return Err("`..` component escapes the tree"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that a symlink at `link_path` (relative to the tree root) with
/// target `target` resolves, lexically, to a place inside the tree.
///
/// Lexical checking is only sound if no directory on the way is itself a
/// symlink; the unpacker enforces that separately by never creating an entry
/// beneath a symlink and by refusing targets that pass through one.
pub fn symlink_stays_inside(link_path: &str, target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("empty symlink target");
    }
    if target.starts_with('/') {
        return Err("symlink target is absolute");
    }
    if target.contains('\0') {
        return Err("NUL byte in symlink target");
    }
    // Start from the link's directory.
    let link_path = link_path.strip_suffix('/').unwrap_or(link_path);
    let mut depth = link_path.split('/').count() - 1;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("symlink target escapes the tree")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// The tree-relative paths a symlink target passes through on its way,
/// lexically resolved, not including the final component. Used to refuse
/// targets that would traverse another symlink.
pub fn symlink_target_dirs(link_path: &str, target: &str) -> Vec<String> {
    let link_path = link_path.strip_suffix('/').unwrap_or(link_path);
    let mut parts: Vec<&str> = link_path.split('/').collect();
    parts.pop();
    let mut dirs = Vec::new();
    let components: Vec<&str> = target.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        match *component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => {
                parts.push(name);
                if i + 1 < components.len() {
                    dirs.push(parts.join("/"));
                }
            }
        }
    }
    dirs
}

/// Lexically normalises a tree-relative path: drops `.` and empty
/// components and applies `..` (never above the root).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    parts.join("/")
}

/// Where a symlink at `link_path` with relative target `target` points,
/// as a normalised tree-relative path.
pub fn symlink_destination(link_path: &str, target: &str) -> String {
    let link_path = link_path.strip_suffix('/').unwrap_or(link_path);
    let parent = link_path.rsplit_once('/').map_or("", |(parent, _)| parent);
    normalize(&format!("{parent}/{target}"))
}

/// Every proper ancestor of `path`: `a/b/c` gives `a` and `a/b`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        for ok in [
            "a",
            "a/b",
            "bin/sydney",
            "dir/",
            "a/.hidden",
            "..a",
            "a..",
            "a/.sydney-bundle",
            ".sydney-bundle2",
        ] {
            assert_eq!(validate_relative(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/./b",
            "a\0b",
            "..",
            ".sydney-bundle",
            ".sydney-bundle/",
            ".sydney-bundle/x",
        ] {
            assert!(validate_relative(bad).is_err(), "{bad:?}");
        }
        assert!(validate_relative(&"a/".repeat(3000)).is_err());
    }

    #[test]
    fn symlink_targets() {
        for (link, target) in [
            ("bin/x", "y"),
            ("bin/x", "../lib/y"),
            ("a/b/c", "../../d"),
            ("x", "."),
            ("bin/x", "./y"),
        ] {
            assert_eq!(
                symlink_stays_inside(link, target),
                Ok(()),
                "{link} -> {target}"
            );
        }
        for (link, target) in [
            ("x", ".."),
            ("x", "../y"),
            ("bin/x", "../../etc"),
            ("bin/x", "/etc/passwd"),
            ("a/b", "c/../../../d"),
            ("x", ""),
        ] {
            assert!(
                symlink_stays_inside(link, target).is_err(),
                "{link} -> {target}"
            );
        }
    }

    #[test]
    fn target_dirs_and_ancestors() {
        assert_eq!(symlink_target_dirs("a/l", "b/c/d"), ["a/b", "a/b/c"]);
        assert_eq!(symlink_target_dirs("a/l", "../x/y"), ["x"]);
        assert!(symlink_target_dirs("l", "x").is_empty());
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("a/b/").collect::<Vec<_>>(), ["a"]);
        assert!(ancestors("a").next().is_none());
    }
}
