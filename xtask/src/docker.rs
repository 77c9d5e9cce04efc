//! `cargo xtask docker`: the FROM scratch image around the bundle.

use anyhow::{Result, bail};

use crate::util::{self, command};

/// Builds `Dockerfile.scratch`, tagged `sydney:VERSION` and `sydney:latest`,
/// and prints the image size next to the bundle's.
pub fn build_image(version: &str) -> Result<()> {
    if !util::have("docker") {
        bail!("docker is not installed; install Docker Engine to build the image");
    }
    util::run(
        command("docker")
            .args(["build", "-f", "Dockerfile.scratch"])
            .args([
                "-t",
                &format!("sydney:{version}"),
                "-t",
                "sydney:latest",
                ".",
            ]),
    )?;
    let size = util::stdout(command("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        "sydney:latest",
    ]))?;
    let bundle = std::fs::metadata(crate::bundle::default_out())?.len();
    println!(
        "image sydney:{version} (also sydney:latest): {} bytes; the bundle alone: {} bytes",
        util::grouped(size.trim().parse().unwrap_or(0)),
        util::grouped(bundle)
    );
    Ok(())
}
