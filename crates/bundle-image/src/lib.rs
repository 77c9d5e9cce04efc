//! Writes a container image around a sydney bundle, with no container
//! daemon: one function, [`write_image`], from a bundle file to an OCI image
//! layout archive (the `oci-archive:` format of skopeo and podman) that
//! `docker load` also reads.
//!
//! The image is the bundle and nothing else, in one layer:
//!
//! - `/app`: the bundle, mode 0755, owned by root (see [`BUNDLE_PATH`]);
//! - `/tmp`: an empty directory, mode 1777, so that a non-root user with no
//!   HOME has somewhere to unpack the payload.
//!
//! Its config runs `/app start` as uid 65532 (by default), exposes the
//! ports asked for, carries labels and OCI annotations (title, version,
//! created, source, revision) and Docker's `Healthcheck` on
//! `/app healthcheck`.
//!
//! The output is a pure function of the bundle's bytes and the options:
//! every timestamp is [`ImageOptions::created`] (from `SOURCE_DATE_EPOCH`),
//! tar headers are fixed (uid/gid 0, no user names, no PAX records), gzip
//! has no name or time, and JSON keys are sorted. The same bundle gives the
//! same digest.
//!
//! The archive is both an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) and, through one extra file, `manifest.json`, a
//! `docker save` archive over the same blobs: Docker Engine before 25.0
//! loads only the latter, and reads `Healthcheck` only from its own config
//! format, which is the OCI config plus that field. Docker 25 writes
//! `docker save` output in the same two-in-one shape.

mod archive;
mod config;
mod error;
mod layer;
mod reference;
mod time;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ImageError;

/// Parses a `KEY=VALUE` flag value (`--label`, `--annotation`) for the
/// command lines that drive the writer.
pub fn parse_pair(flag: &str, item: &str) -> Result<(String, String), ImageError> {
    match item.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(ImageError::BadOption(format!(
            "bad {flag} {item:?}: give KEY=VALUE, e.g. {flag} team=web"
        ))),
    }
}
pub use reference::Reference;

/// Where the bundle lives in the image. A fixed path (as Jib's `/app`), so
/// that deployment files, health checks and `docker exec` lines do not
/// depend on the bundle's name.
pub const BUNDLE_PATH: &str = "/app";

/// The user images run as unless told otherwise: numeric (Kubernetes'
/// `runAsNonRoot` can only check a number) and not root. 65532 is the
/// `nonroot` user of distroless and ko images.
pub const DEFAULT_USER: &str = "65532";

/// Docker's health check: how often the container runs
/// `/app healthcheck`, and when it counts as unhealthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// Arguments after the bundle (`["healthcheck"]`: GET / on `$PORT`).
    pub args: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Failures in this time after start do not count.
    pub start_period: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
}

impl Default for Healthcheck {
    /// The bundle's own `healthcheck` command every 10 s (a scratch image
    /// has no curl); the same values as `Dockerfile.scratch`.
    fn default() -> Self {
        Healthcheck {
            args: vec!["healthcheck".to_owned()],
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            start_period: Duration::from_secs(2),
            retries: 3,
        }
    }
}

/// What to put in the image besides the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// The image's name; `None`: the bundle's `name:version` (lower case,
    /// `+` in the version becomes `_`, which tags do not allow).
    pub tag: Option<Reference>,
    /// `USER`: a uid, `uid:gid`, or a name (names need an /etc/passwd,
    /// which the image does not have, so use numbers).
    pub user: String,
    /// Exposed ports, `8080` or `8080/tcp` or `53/udp`.
    pub ports: Vec<String>,
    /// Labels in the image config (what `docker inspect` shows), added to
    /// the OCI ones the writer sets; later entries win.
    pub labels: Vec<(String, String)>,
    /// Annotations on the manifest (what registries and `skopeo inspect`
    /// show), added to the OCI ones the writer sets; later entries win.
    pub annotations: Vec<(String, String)>,
    /// Arguments the container passes to the bundle by default (`CMD`).
    pub cmd: Vec<String>,
    /// Docker's health check; `None` for none.
    pub healthcheck: Option<Healthcheck>,
    /// Seconds since the epoch for `created` and every mtime
    /// (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    /// `org.opencontainers.image.source`: where the source lives.
    pub source: Option<String>,
    /// `org.opencontainers.image.revision`: the source revision.
    pub revision: Option<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            tag: None,
            user: DEFAULT_USER.to_owned(),
            ports: Vec::new(),
            labels: Vec::new(),
            annotations: Vec::new(),
            cmd: vec!["start".to_owned()],
            healthcheck: Some(Healthcheck::default()),
            created: 0,
            source: None,
            revision: None,
        }
    }
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// The archive.
    pub path: PathBuf,
    /// Its size in bytes.
    pub archive_bytes: u64,
    /// The image's name.
    pub reference: Reference,
    /// Digest of the image manifest (`sha256:...`): the image's identity in
    /// registries and in `skopeo inspect`.
    pub manifest_digest: String,
    /// Digest of the config (`sha256:...`): Docker's image ID.
    pub config_digest: String,
    /// Digest of the compressed layer.
    pub layer_digest: String,
    /// Size of the compressed layer in bytes.
    pub layer_bytes: u64,
    /// Size of the bundle in bytes.
    pub bundle_bytes: u64,
    /// The bundle's name and version, from its manifest.
    pub bundle_name: String,
    /// The bundle's version.
    pub bundle_version: String,
    /// The architecture of each bundle's image, in the order given.
    pub architectures: Vec<bundle_format::elf::Arch>,
}

/// Writes the image of `bundle` to `out` (an OCI image layout archive).
///
/// The file appears complete or not at all: it is written to a temporary
/// file beside `out` and renamed into place. `bundle` must be a valid
/// sydney bundle (its manifest names the image by default).
pub fn write_image(
    bundle: &Path,
    options: &ImageOptions,
    out: &Path,
) -> Result<ImageReport, ImageError> {
    write_multi_arch_image(&[bundle], options, out)
}

/// Writes one image of `bundles`, one per architecture, to `out`: with a
/// single bundle exactly [`write_image`]; with several, an OCI index with
/// a platform (`linux/amd64`, `linux/arm64`) per bundle, so that a runtime
/// picks the one for its machine. They must be builds of one release (the
/// same name and version) for different architectures. The report
/// describes the first bundle's image, except that `manifest_digest` is the
/// index's.
pub fn write_multi_arch_image(
    bundles: &[&Path],
    options: &ImageOptions,
    out: &Path,
) -> Result<ImageReport, ImageError> {
    let mut read_bundles = Vec::new();
    for &bundle in bundles {
        let bytes = fs::read(bundle).map_err(|cause| ImageError::Read {
            path: bundle.to_owned(),
            cause,
        })?;
        let not_a_bundle = |cause| ImageError::NotABundle {
            path: bundle.to_owned(),
            cause,
        };
        let manifest = bundle_format::Bundle::open(&bytes)
            .map_err(not_a_bundle)?
            .manifest()
            .clone();
        let machine = bundle_format::elf::machine(&bytes);
        let arch = machine
            .and_then(bundle_format::elf::Arch::from_machine)
            .ok_or_else(|| {
                ImageError::BadOption(format!(
                    "{}: its stub is for {}, not x86_64 or aarch64",
                    bundle.display(),
                    machine.map_or(
                        "no known machine".to_owned(),
                        bundle_format::elf::machine_name
                    )
                ))
            })?;
        read_bundles.push((bundle, bytes, manifest, arch));
    }
    let Some((name, version)) = read_bundles
        .first()
        .map(|(_, _, first, _)| (first.name.clone(), first.version.clone()))
    else {
        return Err(ImageError::BadOption(
            "no bundle given; name at least one bundle file".to_owned(),
        ));
    };
    for (path, _, manifest, arch) in &read_bundles {
        if (&manifest.name, &manifest.version) != (&name, &version) {
            return Err(ImageError::BadOption(format!(
                "{} is {} {}, not {name} {version}: a multi-architecture image holds builds \
                 of one release",
                path.display(),
                manifest.name,
                manifest.version,
            )));
        }
        if read_bundles.iter().filter(|other| other.3 == *arch).count() > 1 {
            return Err(ImageError::BadOption(format!(
                "two bundles are for {arch}; give one bundle per architecture"
            )));
        }
    }
    let reference = match &options.tag {
        Some(tag) => tag.clone(),
        None => Reference::from_bundle(&name, &version)?,
    };
    for port in &options.ports {
        config::check_port(port)?;
    }
    check_user(&options.user)?;

    let dir = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let write = |cause| ImageError::Write {
        path: out.to_owned(),
        cause,
    };
    if !dir.is_dir() {
        return Err(ImageError::BadOption(format!(
            "cannot write image {}: directory {} does not exist; create it first",
            out.display(),
            dir.display()
        )));
    }
    let mut layers = Vec::new();
    for (_, bytes, _, _) in &mut read_bundles {
        layers.push(layer::write(bytes, options.created, &dir).map_err(write)?);
        // Only the layer file is needed from here on.
        *bytes = Vec::new();
    }
    let facts: Vec<config::Facts<'_>> = read_bundles
        .iter()
        .zip(&layers)
        .map(|((_, _, manifest, arch), layer)| config::Facts {
            bundle_name: &manifest.name,
            bundle_version: &manifest.version,
            reference: &reference,
            layer,
            arch: *arch,
        })
        .collect();
    let blobs = config::documents(options, &facts)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-image-")
        .tempfile_in(&dir)
        .map_err(write)?;
    let layer_refs: Vec<&layer::Layer> = layers.iter().collect();
    archive::write(temp.as_file_mut(), &blobs, &layer_refs, options.created).map_err(write)?;
    temp.as_file().sync_all().map_err(write)?;
    let archive_bytes = temp.as_file().metadata().map_err(write)?.len();
    temp.persist(out).map_err(|err| write(err.error))?;
    let image = &blobs.images[0];
    let layer = &layers[0];
    Ok(ImageReport {
        path: out.to_owned(),
        archive_bytes,
        reference,
        manifest_digest: blobs
            .platforms
            .as_ref()
            .map_or(&image.manifest.digest, |index| &index.digest)
            .clone(),
        config_digest: image.config.digest.clone(),
        layer_digest: layer.digest.clone(),
        layer_bytes: layer.size,
        bundle_bytes: layer.bundle_bytes,
        bundle_name: name,
        bundle_version: version,
        architectures: read_bundles.iter().map(|b| b.3).collect(),
    })
}

/// `uid`, `uid:gid`, `name` or `name:group`: no spaces, not empty.
fn check_user(user: &str) -> Result<(), ImageError> {
    let valid = !user.is_empty()
        && user.split(':').count() <= 2
        && user.split(':').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    if valid {
        Ok(())
    } else {
        Err(ImageError::BadOption(format!(
            "bad user {user:?}: give a uid (e.g. 65532) or uid:gid"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_bundle_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("not-a-bundle");
        fs::write(&input, b"hello").unwrap();
        let out = dir.path().join("image.tar");
        let err = write_image(&input, &ImageOptions::default(), &out).unwrap_err();
        assert!(matches!(err, ImageError::NotABundle { .. }), "{err}");
        assert!(
            err.to_string().contains("is not a usable sydney bundle"),
            "{err}"
        );
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the input should remain");
    }

    #[test]
    fn users() {
        for good in ["65532", "0", "65532:65532", "nobody", "app:app"] {
            check_user(good).unwrap();
        }
        for bad in ["", ":", "1:", "a b", "1:2:3"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
