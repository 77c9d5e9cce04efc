//! `cargo xtask docker`: the image of the bundle, written with no daemon
//! (crates/bundle-image) and loaded into Docker.

use anyhow::Result;
use bundle_image::ImageOptions;

use crate::bundle::Built;
use crate::image;
use crate::util::{self, command};

/// deploy/swarm/stack.yml.
pub fn stack_file() -> std::path::PathBuf {
    util::root().join("deploy").join("swarm").join("stack.yml")
}

/// Where the image archive goes.
pub fn default_archive() -> std::path::PathBuf {
    util::target_dir().join("bundle").join("sydney-image.tar")
}

/// The options `cargo xtask docker` writes the sydney image with: port
/// 8080, the workspace's commit as the revision.
pub fn sydney_options() -> Result<ImageOptions> {
    Ok(ImageOptions {
        ports: vec!["8080".to_owned()],
        revision: image::git_revision(),
        created: util::source_date_epoch()?,
        ..ImageOptions::default()
    })
}

/// Writes the image of `built` (tagged `sydney:VERSION`), loads it, tags
/// it `sydney:latest` too, and prints the sizes.
pub fn build_image(built: &Built) -> Result<()> {
    let archive = default_archive();
    let options = ImageOptions {
        tag: Some(format!("sydney:{}", built.version).parse()?),
        ..sydney_options()?
    };
    let (report, _) = image::write(&built.bundle, &options, &archive)?;
    image::docker_load(&archive)?;
    util::run(command("docker").args(["tag", &report.reference.to_string(), "sydney:latest"]))?;
    let size = util::stdout(command("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &report.reference.to_string(),
    ]))?;
    println!(
        "image {} (also sydney:latest): {} bytes in Docker; the bundle alone: {} bytes",
        report.reference,
        util::grouped(size.trim().parse().unwrap_or(0)),
        util::grouped(report.bundle_bytes)
    );
    Ok(())
}
