//! What the image and Swarm tests share: images written by
//! `bundle-image` and loaded into the machine's Docker engine, containers,
//! and `docker ... --format json` output. Every name starts with
//! `sydney-fleet-e2e-<pid>` and is removed on drop (Docker is shared).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bundle_image::{ImageOptions, ImageReport};
use e2e::bundle_format::Codec;
use e2e::*;

/// `sydney-fleet-e2e-<pid>-<n>`: a fresh name for something in Docker.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "sydney-fleet-e2e-{}-{what}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `docker ARGS` and asserts success.
#[track_caller]
pub fn docker(args: &[&str]) -> Ran {
    require_program("docker", "docker.io");
    let ran = run_timeout(Command::new("docker").args(args), Duration::from_secs(120));
    ran.expect_success();
    ran
}

/// `docker ARGS` whose stdout is one JSON document.
#[track_caller]
pub fn docker_json(args: &[&str]) -> serde_json::Value {
    let ran = docker(args);
    serde_json::from_str(ran.stdout().trim())
        .unwrap_or_else(|err| panic!("not JSON ({err}):\n{ran}"))
}

/// The sydney release packed again as another version (same stub, same
/// server), with `args` always passed to the server.
pub fn sydney_bundle_version(dir: &Path, version: &str, args: &[&str]) -> PathBuf {
    let mut options = pack_options("sydney", "bin/sydney", Codec::Gzip);
    options.version = version.to_owned();
    options.args = args.iter().map(|a| (*a).to_owned()).collect();
    let out = dir.join(format!("sydney-bundle-{version}"));
    pack(&artifacts().release, &options, &out);
    out
}

/// An image written by `bundle-image` and loaded with `docker load`;
/// removed from Docker on drop.
#[derive(Debug)]
pub struct LoadedImage {
    /// `name:tag`.
    pub tag: String,
    /// What the writer reported.
    pub report: ImageReport,
    /// The archive.
    pub archive: PathBuf,
}

impl LoadedImage {
    /// Writes the image of `bundle` as `tag` into `dir`, with sydney's port
    /// and `options` otherwise default, and loads it.
    pub fn write_and_load(
        bundle: &Path,
        tag: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut ImageOptions),
    ) -> LoadedImage {
        let archive = dir.join(format!("{}.tar", tag.replace([':', '/'], "-")));
        let mut options = ImageOptions {
            tag: Some(tag.parse().unwrap()),
            ports: vec!["8080".to_owned()],
            ..ImageOptions::default()
        };
        tweak(&mut options);
        let report = bundle_image::write_image(bundle, &options, &archive)
            .unwrap_or_else(|err| panic!("write image of {}: {err}", bundle.display()));
        let loaded = LoadedImage {
            tag: tag.to_owned(),
            report,
            archive,
        };
        let ran = docker(&["load", "-i", loaded.archive.to_str().unwrap()]);
        assert!(
            ran.stdout().contains(&format!("Loaded image: {tag}")),
            "docker load did not name the image {tag}\n{ran}"
        );
        loaded
    }
}

impl Drop for LoadedImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

/// A container, removed on drop.
#[derive(Debug)]
pub struct Container {
    /// Its name.
    pub name: String,
}

impl Container {
    /// `docker run -d` of `image` with `extra` options, port 8080 published
    /// on a loopback port.
    pub fn run(image: &str, extra: &[&str]) -> Container {
        let name = unique("c");
        let mut args = vec!["run", "-d", "--name", &name, "-p", "127.0.0.1::8080"];
        args.extend_from_slice(extra);
        args.push(image);
        let container = Container { name: name.clone() };
        docker(&args);
        container
    }

    /// Where port 8080 is published.
    pub fn addr(&self) -> std::net::SocketAddr {
        let ran = docker(&["port", &self.name, "8080/tcp"]);
        ran.stdout().lines().next().unwrap().trim().parse().unwrap()
    }

    /// `docker logs`, both streams.
    pub fn logs(&self) -> String {
        let ran = run(Command::new("docker").args(["logs", &self.name]));
        format!("{}{}", ran.stdout(), ran.stderr())
    }

    /// Waits for `GET /` to answer `200 Ok`.
    pub fn expect_serving(&self) {
        let addr = self.addr();
        let answer = std::panic::catch_unwind(|| wait_for_http(addr, "/", Duration::from_secs(20)))
            .unwrap_or_else(|_| panic!("no answer; logs:\n{}", self.logs()));
        assert_eq!(answer, (200, "Ok".to_owned()), "{}", self.logs());
    }

    /// `(uid, command line)` of each process in the container.
    pub fn processes(&self) -> Vec<(String, String)> {
        // Docker needs the pid column to pick the container's processes.
        let ran = docker(&["top", &self.name, "-eo", "pid,uid,args"]);
        ran.stdout()
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let _pid = fields.next()?;
                let uid = fields.next()?.to_owned();
                Some((uid, fields.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
