//! `cargo xtask image`: a bundle into an OCI image archive with no daemon
//! (crates/bundle-image does the work; this is its command line).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bundle_image::{ImageOptions, ImageReport, Reference};

use crate::util::{self, command};

/// The flags of `cargo xtask image`, as given.
#[derive(Debug, Default)]
pub struct Flags {
    /// `--tag`.
    pub tag: Option<String>,
    /// `--user`.
    pub user: Option<String>,
    /// `--port`, repeatable.
    pub ports: Vec<String>,
    /// `--label k=v`, repeatable.
    pub labels: Vec<String>,
    /// `--annotation k=v`, repeatable.
    pub annotations: Vec<String>,
    /// `--source`.
    pub source: Option<String>,
    /// `--revision`.
    pub revision: Option<String>,
    /// `--no-healthcheck`.
    pub no_healthcheck: bool,
}

/// Turns the flags into writer options (`created` from `SOURCE_DATE_EPOCH`).
pub fn options(flags: Flags) -> Result<ImageOptions> {
    let mut options = ImageOptions {
        created: util::source_date_epoch()?,
        ports: flags.ports,
        labels: pairs("--label", &flags.labels)?,
        annotations: pairs("--annotation", &flags.annotations)?,
        source: flags.source,
        revision: flags.revision,
        ..ImageOptions::default()
    };
    if let Some(tag) = flags.tag {
        options.tag = Some(tag.parse::<Reference>()?);
    }
    if let Some(user) = flags.user {
        options.user = user;
    }
    if flags.no_healthcheck {
        options.healthcheck = None;
    }
    Ok(options)
}

/// `KEY=VALUE` items into pairs.
fn pairs(flag: &str, items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| Ok(bundle_image::parse_pair(flag, item)?))
        .collect()
}

/// Writes the image and prints what was written; returns the report and
/// the seconds it took.
pub fn write(bundle: &Path, options: &ImageOptions, out: &Path) -> Result<(ImageReport, f64)> {
    write_multi_arch(&[bundle], options, out)
}

/// [`write`] for bundles of one release built for several architectures:
/// one image with a platform per bundle.
pub fn write_multi_arch(
    bundles: &[&Path],
    options: &ImageOptions,
    out: &Path,
) -> Result<(ImageReport, f64)> {
    let started = Instant::now();
    let report = bundle_image::write_multi_arch_image(bundles, options, out)?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "image {} ({} {}) -> {}\n  archive {} bytes (bundle {} bytes, layer {} bytes gzip), \
         written in {:.0} ms\n  platforms {}\n  manifest {}\n  config   {} (Docker's image ID)",
        report.reference,
        report.bundle_name,
        report.bundle_version,
        out.display(),
        util::grouped(report.archive_bytes),
        util::grouped(report.bundle_bytes),
        util::grouped(report.layer_bytes),
        seconds * 1000.0,
        report
            .architectures
            .iter()
            .map(|arch| format!("linux/{}", arch.oci_name()))
            .collect::<Vec<_>>()
            .join(", "),
        report.manifest_digest,
        report.config_digest,
    );
    Ok((report, seconds))
}

/// The workspace's commit, for `org.opencontainers.image.revision` (none
/// outside a git checkout).
pub fn git_revision() -> Option<String> {
    util::stdout(command("git").args(["rev-parse", "HEAD"]))
        .ok()
        .map(|rev| rev.trim().to_owned())
        .filter(|rev| !rev.is_empty())
}

/// `docker load -i archive`, failing with Docker's message.
pub fn docker_load(archive: &Path) -> Result<()> {
    if !util::have("docker") {
        bail!("docker is not installed; install Docker Engine to load the image");
    }
    let loaded = util::stdout(command("docker").arg("load").arg("-i").arg(archive))
        .with_context(|| format!("docker load -i {}", archive.display()))?;
    print!("{loaded}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_flags() {
        let items = ["a=b".to_owned(), "c=".to_owned(), "d=e=f".to_owned()];
        assert_eq!(
            pairs("--label", &items).unwrap(),
            [("a", "b"), ("c", ""), ("d", "e=f")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        for bad in ["novalue", "=x"] {
            let err = pairs("--label", &[bad.to_owned()]).unwrap_err().to_string();
            assert!(err.contains("give KEY=VALUE"), "{err}");
        }
    }

    #[test]
    fn flags_become_options() {
        let options = options(Flags {
            tag: Some("web/sydney:2".to_owned()),
            user: Some("1000:1000".to_owned()),
            no_healthcheck: true,
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(options.tag.unwrap().to_string(), "web/sydney:2");
        assert_eq!(options.user, "1000:1000");
        assert!(options.healthcheck.is_none());
        let err = super::options(Flags {
            tag: Some("Web:1".to_owned()),
            ..Flags::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("bad image name"), "{err}");
    }
}
