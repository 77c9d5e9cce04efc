//! Image names: `name[:tag]`, as Docker and podman accept them.

use std::fmt;
use std::str::FromStr;

use crate::ImageError;

/// An image name and tag, e.g. `sydney:0.1.0` or
/// `registry.example:5000/team/sydney:1.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Repository, e.g. `sydney` or `registry.example:5000/team/sydney`.
    pub name: String,
    /// Tag, e.g. `0.1.0` (`latest` when none was given).
    pub tag: String,
}

impl Reference {
    /// `name:version` of a bundle, made valid: lower case, and `+` (which
    /// bundle versions allow and tags do not) becomes `_`.
    pub fn from_bundle(name: &str, version: &str) -> Result<Reference, ImageError> {
        let text = format!(
            "{}:{}",
            name.to_ascii_lowercase(),
            version.replace('+', "_")
        );
        text.parse()
    }

    /// The fully qualified name (`docker.io/library/sydney:0.1.0`): what
    /// containerd and podman read from `io.containerd.image.name`.
    pub fn qualified(&self) -> String {
        let first = self.name.split('/').next().unwrap_or_default();
        let has_registry = self.name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let full = if has_registry {
            self.name.clone()
        } else if self.name.contains('/') {
            format!("docker.io/{}", self.name)
        } else {
            format!("docker.io/library/{}", self.name)
        };
        format!("{full}:{}", self.tag)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl FromStr for Reference {
    type Err = ImageError;

    /// Parses `name[:tag]` with Docker's rules: path components of lower
    /// case letters, digits and `._-`, an optional `host[:port]/` first,
    /// and a tag of up to 128 letters, digits and `._-`.
    fn from_str(text: &str) -> Result<Reference, ImageError> {
        let bad = |why: &str| {
            ImageError::BadOption(format!(
                "bad image name {text:?}: {why}; use NAME[:TAG], e.g. sydney:0.1.0"
            ))
        };
        let last_slash = text.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match text[last_slash..].rfind(':') {
            Some(colon) => (&text[..last_slash + colon], &text[last_slash + colon + 1..]),
            None => (text, "latest"),
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !tag_ok {
            return Err(bad(
                "a tag is 1 to 128 letters, digits, '.', '_' or '-', not starting with '.' or '-'",
            ));
        }
        let mut components = name.split('/').peekable();
        let mut first = true;
        while let Some(component) = components.next() {
            let is_host = first
                && components.peek().is_some()
                && (component.contains('.') || component.contains(':') || component == "localhost");
            first = false;
            let valid = if is_host {
                !component.is_empty()
                    && component
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            } else {
                !component.is_empty()
                    && component.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && component.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && component
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            };
            if !valid {
                return Err(bad(
                    "name components are lower case letters, digits and '.', '_' or '-' \
                     between them",
                ));
            }
        }
        Ok(Reference {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap()
    }

    #[test]
    fn names_and_tags() {
        let cases = [
            (
                "sydney",
                "sydney",
                "latest",
                "docker.io/library/sydney:latest",
            ),
            (
                "sydney:0.1.0",
                "sydney",
                "0.1.0",
                "docker.io/library/sydney:0.1.0",
            ),
            (
                "team/sydney:1",
                "team/sydney",
                "1",
                "docker.io/team/sydney:1",
            ),
            (
                "localhost:5000/sydney:v2",
                "localhost:5000/sydney",
                "v2",
                "localhost:5000/sydney:v2",
            ),
            (
                "registry.example/a/b:x_y",
                "registry.example/a/b",
                "x_y",
                "registry.example/a/b:x_y",
            ),
        ];
        for (text, name, tag, qualified) in cases {
            let reference = parse(text);
            assert_eq!(
                (reference.name.as_str(), reference.tag.as_str()),
                (name, tag)
            );
            assert_eq!(reference.qualified(), qualified);
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        for bad in [
            "",
            ":1",
            "Sydney:1",
            "sydney:",
            "sydney:a+b",
            "a//b",
            "-a:1",
            "a:.x",
        ] {
            let err = bad.parse::<Reference>().unwrap_err().to_string();
            assert!(err.starts_with("bad image name"), "{bad:?}: {err}");
            assert!(err.contains("NAME[:TAG]"), "{err}");
        }
    }

    #[test]
    fn bundle_versions_become_tags() {
        let reference = Reference::from_bundle("My_App", "1.0.0+build.5").unwrap();
        assert_eq!(reference.to_string(), "my_app:1.0.0_build.5");
    }
}
