//! Images and fleets: the size of the image `bundle-image` writes, the time
//! to write it, and on a single-node Docker Swarm (created here and left
//! afterwards) the time from `docker service update` to every replica
//! healthy on the new version.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bundle_format::{Bundle, Codec};
use bundle_image::ImageOptions;

use super::json::Json;
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, report_unmeasured};
use crate::util::{self, command};
use crate::{docker, pack};

/// Replicas in the measured stack (as deploy/swarm/stack.yml).
const REPLICAS: usize = 3;
/// The health interval the stack runs with here (as the Swarm test): the
/// update time is mostly waiting for each new task's first check.
const HEALTH_INTERVAL: &str = "500ms";

/// Measures the section.
pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    let mut table = Table::new("Images and Swarm", &["what", ">value", "notes"]);
    let dir = art.dir.join("fleet");
    fs::create_dir_all(&dir)?;

    // The image: sizes and write time.
    let bundle_bytes = fs::metadata(&art.bundle)?.len();
    let runs = if plan.quick { 5 } else { 20 };
    let out = dir.join("image.tar");
    let options = ImageOptions {
        ports: vec!["8080".to_owned()],
        ..ImageOptions::default()
    };
    let mut times = Vec::new();
    let mut report = None;
    for _ in 0..runs {
        let started = Instant::now();
        let written = bundle_image::write_image(&art.bundle, &options, &out)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        report = Some(written);
    }
    let report = report.context("no image written")?;
    let layer_tar = layer_tar_bytes(bundle_bytes);
    table.row(vec![
        "bundle".into(),
        util::grouped(bundle_bytes),
        "bytes".into(),
    ]);
    table.row(vec![
        "image layer, uncompressed tar".into(),
        util::grouped(layer_tar),
        format!(
            "bytes: the bundle + {} (tar headers, padding, /tmp)",
            util::grouped(layer_tar - bundle_bytes)
        ),
    ]);
    table.row(vec![
        "image archive (OCI layout + docker manifest)".into(),
        util::grouped(report.archive_bytes),
        format!(
            "bytes: gzip layer {} + {} of JSON and tar headers",
            util::grouped(report.layer_bytes),
            util::grouped(report.archive_bytes - report.layer_bytes)
        ),
    ]);
    table.row(vec![
        "write the image (median)".into(),
        table::ms(table::median(&times)),
        format!(
            "ms, {runs} runs, {}-{} ms; gzip -9 of the layer is most of it",
            table::ms(table::min(&times)),
            table::ms(table::max(&times))
        ),
    ]);
    let mut json = vec![
        ("bundle_bytes", Json::from(bundle_bytes)),
        ("layer_tar_bytes", Json::from(layer_tar)),
        ("layer_gzip_bytes", Json::from(report.layer_bytes)),
        ("archive_bytes", Json::from(report.archive_bytes)),
        ("write_ms", Json::nums(&times)),
    ];

    match swarm_update(plan, art, &dir, &out) {
        Ok(Swarm::Unavailable(why)) => {
            table.row(vec![
                "`docker service update` to healthy replicas".into(),
                "-".into(),
                why.clone(),
            ]);
            json.push(("swarm", Json::obj([("error", Json::from(why.as_str()))])));
        }
        Ok(Swarm::Measured(measured)) => {
            table.row(vec![
                "image size in Docker".into(),
                util::grouped(measured.docker_size),
                format!(
                    "bytes (`docker image inspect`): the bundle + {}",
                    util::grouped(measured.docker_size.saturating_sub(bundle_bytes))
                ),
            ]);
            table.row(vec![
                format!("`docker service update` to {REPLICAS} healthy replicas (median)"),
                table::secs(table::median(&measured.to_healthy)),
                format!(
                    "s, {} update(s), start-first, health every {HEALTH_INTERVAL}: {}",
                    measured.to_healthy.len(),
                    measured
                        .to_healthy
                        .iter()
                        .map(|s| table::secs(*s))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ]);
            table.row(vec![
                "... until Swarm reports the update completed (median)".into(),
                table::secs(table::median(&measured.to_completed)),
                "s, includes the stack's 15 s `monitor` window".into(),
            ]);
            json.push(("docker_image_size", Json::from(measured.docker_size)));
            json.push(("update_to_healthy_s", Json::nums(&measured.to_healthy)));
            json.push(("update_to_completed_s", Json::nums(&measured.to_completed)));
        }
        Err(err) => {
            report_unmeasured(
                "fleet",
                ("what", "swarm update to healthy"),
                &format!("{err:#}"),
                &mut table,
                &mut failures,
                &mut rows,
            );
        }
    }
    table.note(
        "The image is the bundle at /app and an empty /tmp in one gzip layer; Docker counts the \
         files' sizes, the archive stores them compressed. Swarm: a single-node swarm on this \
         machine, deploy/swarm/stack.yml, each update to the other of two versions of the same \
         release; timed from the `docker service update` call until every running task runs \
         the new image and is healthy.",
    );
    json.push(("errors", Json::Arr(rows)));
    Ok(Section {
        key: "fleet",
        tables: vec![table],
        json: Json::obj(json),
        failures,
        svgs: Vec::new(),
    })
}

/// A tar of the bundle and an empty directory: headers, the bundle padded
/// to 512 bytes, and the two zero blocks at the end.
fn layer_tar_bytes(bundle: u64) -> u64 {
    512 + bundle.div_ceil(512) * 512 + 512 + 1024
}

/// The Swarm part's result: numbers, or why this machine cannot give them
/// (no Docker, or an engine already in a swarm: like the size section's
/// image row, that is reported, not a failure).
enum Swarm {
    Measured(SwarmNumbers),
    Unavailable(String),
}

/// What the Swarm part measured.
struct SwarmNumbers {
    docker_size: u64,
    to_healthy: Vec<f64>,
    to_completed: Vec<f64>,
}

/// Names the run creates in Docker, removed on drop.
struct Cleanup {
    images: Vec<String>,
    stack: Option<String>,
    swarm: bool,
    had_gwbridge: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(stack) = &self.stack {
            let _ = command("docker").args(["stack", "rm", stack]).output();
            let label = format!("label=com.docker.stack.namespace={stack}");
            for _ in 0..120 {
                let left = command("docker")
                    .args(["ps", "-aq", "--filter", &label])
                    .output();
                if left.is_ok_and(|out| out.stdout.trim_ascii().is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        if self.swarm {
            let _ = command("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            if !self.had_gwbridge {
                let _ = command("docker")
                    .args(["network", "rm", "docker_gwbridge"])
                    .output();
            }
        }
        for image in &self.images {
            let _ = command("docker").args(["rmi", "-f", image]).output();
        }
    }
}

fn swarm_update(plan: &Plan, art: &Artifacts, dir: &Path, v1_archive: &Path) -> Result<Swarm> {
    if !util::have("docker") {
        return Ok(Swarm::Unavailable(
            "not measured: docker is not installed".into(),
        ));
    }
    let state = match util::stdout(command("docker").args([
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}}",
    ])) {
        Ok(state) => state,
        Err(err) => {
            return Ok(Swarm::Unavailable(format!(
                "not measured: no Docker engine answers ({err:#})"
            )));
        }
    };
    if state.trim() != "inactive" {
        return Ok(Swarm::Unavailable(format!(
            "not measured: this Docker engine is already in a swarm ({}); the bench creates its \
             own and will not leave someone else's",
            state.trim()
        )));
    }
    let name = format!("sydney-fleet-bench-{}", std::process::id());
    let mut cleanup = Cleanup {
        images: Vec::new(),
        stack: None,
        swarm: false,
        had_gwbridge: util::output(command("docker").args([
            "network",
            "inspect",
            "docker_gwbridge",
        ]))?
        .status
        .success(),
    };

    // Two versions of the same release.
    let v1 = format!("{name}:1");
    let v2 = format!("{name}:2");
    let v2_bundle = other_version(art, dir)?;
    let v2_archive = dir.join("image-v2.tar");
    for (tag, bundle, archive) in [
        (&v1, &art.bundle, v1_archive),
        (&v2, &v2_bundle, v2_archive.as_path()),
    ] {
        let options = ImageOptions {
            tag: Some(tag.parse()?),
            ports: vec!["8080".to_owned()],
            ..ImageOptions::default()
        };
        bundle_image::write_image(bundle, &options, archive)?;
        util::stdout(command("docker").arg("load").arg("-i").arg(archive))?;
        cleanup.images.push(tag.clone());
    }
    let docker_size: u64 =
        util::stdout(command("docker").args(["image", "inspect", "-f", "{{.Size}}", &v1]))?
            .trim()
            .parse()
            .context("docker image inspect gave no size")?;

    util::stdout(command("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))?;
    cleanup.swarm = true;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    util::stdout(
        command("docker")
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(docker::stack_file())
            .arg(&name)
            .env("SYDNEY_IMAGE", &v1)
            .env("SYDNEY_HEALTH_INTERVAL", HEALTH_INTERVAL)
            .env("SYDNEY_PORT", port.to_string()),
    )?;
    cleanup.stack = Some(name.clone());
    let service = format!("{name}_sydney");
    wait_healthy_on(&service, &v1, Duration::from_secs(120))?;

    let updates = if plan.quick { 1 } else { 3 };
    let mut to_healthy = Vec::new();
    let mut to_completed = Vec::new();
    for round in 0..updates {
        let target = if round % 2 == 0 { &v2 } else { &v1 };
        let started = Instant::now();
        util::stdout(
            command("docker").args(["service", "update", "--detach", "--image", target, &service]),
        )?;
        wait_healthy_on(&service, target, Duration::from_secs(180))?;
        to_healthy.push(started.elapsed().as_secs_f64());
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let state = util::stdout(command("docker").args([
                "service",
                "inspect",
                "--format",
                "{{.UpdateStatus.State}}",
                &service,
            ]))?;
            if state.trim() == "completed" {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the update to {target} did not complete (state {})",
                    state.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        to_completed.push(started.elapsed().as_secs_f64());
        eprintln!(
            "bench: service update to {target}: all healthy after {:.1} s, completed after {:.1} s",
            to_healthy[round], to_completed[round]
        );
    }
    drop(cleanup);
    Ok(Swarm::Measured(SwarmNumbers {
        docker_size,
        to_healthy,
        to_completed,
    }))
}

/// The bench's bundle packed again as another version.
fn other_version(art: &Artifacts, dir: &Path) -> Result<PathBuf> {
    let bytes = fs::read(&art.bundle)?;
    let manifest = Bundle::open(&bytes)
        .with_context(|| format!("cannot read {}", art.bundle.display()))?
        .manifest()
        .clone();
    let options = bundle_format::pack::PackOptions {
        name: manifest.name,
        version: format!("{}-bench2", manifest.version),
        entry: manifest.entry,
        args: manifest.args,
        codec: Codec::Gzip,
        level: bundle_format::codec::default_level(Codec::Gzip),
        needs_tree: manifest.needs_tree,
        default_cache_dir: manifest.default_cache_dir,
        mtime: util::source_date_epoch()?,
        build: manifest.build,
        env: manifest.env,
        portable: None,
    };
    let out = dir.join("sydney-bundle-v2");
    let stub = fs::read(art.stub(Codec::Gzip))?;
    pack::pack(&art.release, &stub, &options, &out)?;
    Ok(out)
}

/// Waits until the service runs exactly [`REPLICAS`] containers, all of
/// `image` and healthy.
fn wait_healthy_on(service: &str, image: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let label = format!("label=com.docker.swarm.service.name={service}");
    loop {
        let listed = util::stdout(command("docker").args([
            "ps",
            "--filter",
            &label,
            "--format",
            "{{.Image}} {{.Status}}",
        ]))?;
        let lines: Vec<&str> = listed.lines().collect();
        let healthy = lines
            .iter()
            .filter(|line| line.starts_with(&format!("{image} ")) && line.contains("(healthy)"))
            .count();
        if healthy == REPLICAS && lines.len() == REPLICAS {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{service}: not {REPLICAS} healthy tasks on {image} within {timeout:?}: {lines:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
