//! Sizes: the server, stub, payload and bundle for both codecs, the aarch64
//! bundle, the FROM scratch image, and the release folder as tar.gz and
//! tar.xz.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bundle_format::Bundle;

use super::json::Json;
use super::table::{self, Table};
use super::{Artifacts, Section, proc, tools};
use crate::util::{self, command};

/// The size goal of a bundle of the sydney release, on either architecture.
const BUNDLE_GOAL: u64 = 700_000;

/// Stub, payload and whole-file sizes of a bundle.
#[derive(Debug, Clone, Copy)]
struct Parts {
    stub: u64,
    payload: u64,
    total: u64,
}

fn parts(bundle: &Path) -> Result<Parts> {
    let bytes = fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let opened =
        Bundle::open(&bytes).with_context(|| format!("cannot read {}", bundle.display()))?;
    Ok(Parts {
        stub: opened.layout().stub_len,
        payload: opened.payload().len() as u64,
        total: bytes.len() as u64,
    })
}

/// The FROM scratch image, when a Docker engine answers.
enum Image {
    Size(u64),
    Unavailable(String),
}

fn image() -> Result<Image> {
    let Some(docker) = tools::find("docker") else {
        return Ok(Image::Unavailable(
            "not measured: docker is not installed".into(),
        ));
    };
    let engine =
        util::output(command(&docker).args(["version", "--format", "{{.Server.Version}}"]))?;
    if !engine.status.success() {
        return Ok(Image::Unavailable(format!(
            "not measured: no Docker engine answers ({})",
            proc::tail(&String::from_utf8_lossy(&engine.stderr))
        )));
    }
    eprintln!("bench: docker build -f Dockerfile.scratch -t sydney-bench .");
    let build = util::output(command(&docker).args([
        "build",
        "-q",
        "-f",
        "Dockerfile.scratch",
        "-t",
        "sydney-bench",
        ".",
    ]))?;
    if !build.status.success() {
        bail!(
            "docker build -f Dockerfile.scratch failed ({}): {}",
            build.status,
            proc::tail(&String::from_utf8_lossy(&build.stderr))
        );
    }
    let size = util::stdout(command(&docker).args([
        "image",
        "inspect",
        "-f",
        "{{.Size}}",
        "sydney-bench",
    ]))?;
    Ok(Image::Size(size.trim().parse().with_context(|| {
        format!("unexpected `docker image inspect` output {size:?}")
    })?))
}

/// Measures the sizes.
pub fn run(art: &Artifacts) -> Result<Section> {
    let server = fs::metadata(art.release.join("bin/sydney"))?.len();
    let gzip = parts(&art.bundle)?;
    let zstd = parts(&art.bundle_zstd)?;
    let aarch64 = parts(&art.bundle_aarch64)?;
    let tar = fs::metadata(&art.release_tar)?.len();
    let tgz = fs::metadata(&art.release_tgz)?.len();
    let txz = fs::metadata(&art.release_txz)?.len();
    let mut failures = Vec::new();
    let image = image().unwrap_or_else(|err| {
        failures.push(format!("size, docker image: {err:#}"));
        Image::Unavailable(format!("not measured: {err:#}"))
    });

    let mut table = Table::new(
        "Size (bytes)",
        &["what", ">bytes", ">vs release tar.gz", "goal"],
    );
    let vs = |n: u64| table::ratio(n as f64 / tgz as f64);
    let mut row = |what: &str, n: u64| {
        table.row(vec![what.into(), util::grouped(n), vs(n), "-".into()]);
    };
    row("server (bin/sydney)", server);
    row("stub (gzip)", gzip.stub);
    row("payload (gzip -9)", gzip.payload);
    row("bundle (gzip, the default)", gzip.total);
    row("stub (zstd)", zstd.stub);
    row("payload (zstd -19)", zstd.payload);
    row("bundle (zstd)", zstd.total);
    row("release folder as tar", tar);
    row("release tar.gz (gzip -9)", tgz);
    row("release tar.xz (xz -9e)", txz);
    let image_json = match &image {
        Image::Size(n) => {
            row("FROM scratch image (docker)", *n);
            Json::from(*n)
        }
        Image::Unavailable(why) => {
            table.row(vec![
                "FROM scratch image (docker)".into(),
                "-".into(),
                "-".into(),
                why.clone(),
            ]);
            Json::obj([("error", Json::from(why.as_str()))])
        }
    };
    table.row(vec![
        "stub, aarch64 (gzip)".into(),
        util::grouped(aarch64.stub),
        vs(aarch64.stub),
        "-".into(),
    ]);
    table.row(vec![
        "bundle, aarch64 (gzip)".into(),
        util::grouped(aarch64.total),
        vs(aarch64.total),
        format!(
            "<= {} bytes: {}",
            util::grouped(BUNDLE_GOAL),
            if aarch64.total <= BUNDLE_GOAL {
                "met"
            } else {
                "missed"
            }
        ),
    ]);
    let stub_delta = zstd.stub as i64 - gzip.stub as i64;
    let payload_delta = gzip.payload as i64 - zstd.payload as i64;
    let total_delta = zstd.total as i64 - gzip.total as i64;
    table.note(format!(
        "Codec: the zstd stub is {} bytes larger than the gzip one, the zstd payload {} bytes \
         smaller, so the zstd bundle is {} bytes {} overall. Both bundles hold the same \
         release and manifest; no size goal is set.",
        signed(stub_delta),
        signed(payload_delta),
        signed(total_delta.abs()),
        if total_delta >= 0 {
            "larger"
        } else {
            "smaller"
        }
    ));
    let part_json = |p: Parts| {
        Json::obj([
            ("stub", Json::from(p.stub)),
            ("payload", Json::from(p.payload)),
            ("bundle", Json::from(p.total)),
        ])
    };
    Ok(Section {
        key: "size",
        tables: vec![table],
        json: Json::obj([
            ("server", Json::from(server)),
            ("gzip", part_json(gzip)),
            ("zstd", part_json(zstd)),
            ("aarch64_gzip", part_json(aarch64)),
            ("zstd_stub_minus_gzip_stub", Json::Num(stub_delta as f64)),
            (
                "gzip_payload_minus_zstd_payload",
                Json::Num(payload_delta as f64),
            ),
            (
                "zstd_bundle_minus_gzip_bundle",
                Json::Num(total_delta as f64),
            ),
            ("release_tar", Json::from(tar)),
            ("release_tar_gz_9", Json::from(tgz)),
            ("release_tar_xz_9e", Json::from(txz)),
            ("docker_image", image_json),
        ]),
        failures,
        svgs: Vec::new(),
    })
}

fn signed(n: i64) -> String {
    let grouped = util::grouped(n.unsigned_abs());
    if n < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}
