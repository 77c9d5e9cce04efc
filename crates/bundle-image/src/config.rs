//! The image's JSON documents: config, manifest, index, `oci-layout`, and
//! Docker's `manifest.json`, built from the `oci-spec` types. With bundles
//! for several architectures, one config and manifest per architecture and
//! a multi-platform index over them.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_REF_NAME, ANNOTATION_REVISION, ANNOTATION_SOURCE,
    ANNOTATION_TITLE, ANNOTATION_VERSION, Arch, ConfigBuilder, Descriptor, DescriptorBuilder,
    Digest, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
    MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;
use serde_json::Value;

use crate::layer::{Layer, sha256_of};
use crate::{BUNDLE_PATH, Healthcheck, ImageError, ImageOptions, Reference};

/// containerd's (and so Docker 25+'s and podman's) name for an image in an
/// OCI index; `org.opencontainers.image.ref.name` holds only the tag.
pub(crate) const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// What the documents describe, besides the options.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    pub bundle_name: &'a str,
    pub bundle_version: &'a str,
    pub reference: &'a Reference,
    pub layer: &'a Layer,
    /// The architecture the bundle's stub (and so its payload) is for.
    pub arch: bundle_format::elf::Arch,
}

/// A JSON document and its digest.
#[derive(Debug)]
pub(crate) struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = sha256_of(&bytes);
        Blob { bytes, digest }
    }

    /// The blob's path in the layout.
    pub fn path(&self) -> String {
        blob_path(&self.digest)
    }
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
pub(crate) fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The config and manifest of the image for one architecture.
#[derive(Debug)]
pub(crate) struct Image {
    pub config: Blob,
    pub manifest: Blob,
}

/// Every small file of the archive.
#[derive(Debug)]
pub(crate) struct Documents {
    /// One per bundle, in the order given.
    pub images: Vec<Image>,
    /// With several images: the multi-platform index over their manifests
    /// (what `index.json` names, and the digest a registry would give the
    /// tag).
    pub platforms: Option<Blob>,
    pub index: Vec<u8>,
    pub oci_layout: Vec<u8>,
    /// Docker's `manifest.json` (the `docker save` format), over the same
    /// blobs: what Docker Engine before 25.0 loads.
    pub docker_manifest: Vec<u8>,
}

/// Docker's `Healthcheck` config field (moby `container.HealthConfig`),
/// which is not part of OCI (image-spec #749). Durations in nanoseconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerHealthcheck {
    test: Vec<String>,
    interval: u128,
    timeout: u128,
    start_period: u128,
    retries: u32,
}

impl DockerHealthcheck {
    fn new(check: &Healthcheck) -> DockerHealthcheck {
        let mut test = vec!["CMD".to_owned(), BUNDLE_PATH.to_owned()];
        test.extend(check.args.iter().cloned());
        DockerHealthcheck {
            test,
            interval: check.interval.as_nanos(),
            timeout: check.timeout.as_nanos(),
            start_period: check.start_period.as_nanos(),
            retries: check.retries,
        }
    }
}

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// `8080`, `8080/tcp`, `53/udp`: the exposed-port key (`8080/tcp`).
pub(crate) fn check_port(port: &str) -> Result<String, ImageError> {
    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|n| n != 0);
    if !valid_number || !["tcp", "udp", "sctp"].contains(&protocol) {
        return Err(ImageError::BadOption(format!(
            "bad port {port:?}: give PORT or PORT/PROTOCOL, e.g. 8080 or 53/udp \
             (1-65535; tcp, udp or sctp)"
        )));
    }
    Ok(format!("{number}/{protocol}"))
}

/// The OCI annotations the writer sets, then `extra` (later keys win).
fn oci_annotations(
    options: &ImageOptions,
    facts: &Facts<'_>,
    created: &str,
    extra: &[(String, String)],
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    map.insert(ANNOTATION_TITLE.to_owned(), facts.bundle_name.to_owned());
    map.insert(
        ANNOTATION_VERSION.to_owned(),
        facts.bundle_version.to_owned(),
    );
    map.insert(ANNOTATION_CREATED.to_owned(), created.to_owned());
    if let Some(source) = &options.source {
        map.insert(ANNOTATION_SOURCE.to_owned(), source.clone());
    }
    if let Some(revision) = &options.revision {
        map.insert(ANNOTATION_REVISION.to_owned(), revision.clone());
    }
    for (key, value) in extra {
        map.insert(key.clone(), value.clone());
    }
    map
}

/// The OCI name of an architecture.
fn oci_arch(arch: bundle_format::elf::Arch) -> Arch {
    match arch {
        bundle_format::elf::Arch::X86_64 => Arch::Amd64,
        bundle_format::elf::Arch::Aarch64 => Arch::ARM64,
    }
}

/// Builds every document of the archive for the images `facts` (one per
/// architecture, the first named `reference` in Docker's `manifest.json`).
pub(crate) fn documents(
    options: &ImageOptions,
    facts: &[Facts<'_>],
) -> Result<Documents, ImageError> {
    let first = facts.first().ok_or_else(|| {
        ImageError::BadOption("no bundle given; name at least one bundle file".to_owned())
    })?;
    let images = facts
        .iter()
        .map(|facts| image(options, facts))
        .collect::<Result<Vec<_>, _>>()?;
    let annotate = |mut descriptor: Descriptor| {
        descriptor.set_annotations(Some(HashMap::from([
            (ANNOTATION_REF_NAME.to_owned(), first.reference.tag.clone()),
            (
                CONTAINERD_IMAGE_NAME.to_owned(),
                first.reference.qualified(),
            ),
        ])));
        descriptor
    };
    // One image: index.json names its manifest (as before multi-arch).
    // Several: index.json names one nested index (so the image name's
    // annotations sit on one entry) whose manifests carry their platform;
    // podman resolves the name to it and picks this machine's platform.
    let (top, platforms) = if let [image] = &images[..] {
        let top = descriptor(
            MediaType::ImageManifest,
            &image.manifest.digest,
            image.manifest.bytes.len() as u64,
        )?;
        (top, None)
    } else {
        let mut manifests = Vec::new();
        for (image, facts) in images.iter().zip(facts) {
            let mut manifest = descriptor(
                MediaType::ImageManifest,
                &image.manifest.digest,
                image.manifest.bytes.len() as u64,
            )?;
            manifest.set_platform(Some(
                PlatformBuilder::default()
                    .architecture(oci_arch(facts.arch))
                    .os(Os::Linux)
                    .build()
                    .map_err(|e| ImageError::spec("platform", e))?,
            ));
            manifests.push(manifest);
        }
        let platforms = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .map_err(|e| ImageError::spec("index", e))?;
        let platforms = Blob::new(canonical_bytes("index", to_value("index", &platforms)?)?);
        let top = descriptor(
            MediaType::ImageIndex,
            &platforms.digest,
            platforms.bytes.len() as u64,
        )?;
        (top, Some(platforms))
    };
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![annotate(top)])
        .build()
        .map_err(|e| ImageError::spec("index", e))?;
    let index = canonical_bytes("index", to_value("index", &index)?)?;

    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(|e| ImageError::spec("oci-layout", e))?;
    let oci_layout = canonical_bytes("oci-layout", to_value("oci-layout", &layout)?)?;

    // Docker before 25 loads only this file, which has no platforms: the
    // first image gets the tag, every other the tag plus `-ARCH`
    // (`sydney:0.1.0-arm64`), so each can be run by name.
    let docker = images
        .iter()
        .zip(facts)
        .enumerate()
        .map(|(i, (image, facts))| {
            let tag = if i == 0 {
                facts.reference.to_string()
            } else {
                format!("{}-{}", first.reference, facts.arch.oci_name())
            };
            DockerArchiveEntry {
                config: image.config.path(),
                repo_tags: vec![tag],
                layers: vec![blob_path(&facts.layer.digest)],
            }
        })
        .collect::<Vec<_>>();
    let docker_manifest = canonical_bytes("manifest.json", to_value("manifest.json", &docker)?)?;

    Ok(Documents {
        images,
        platforms,
        index,
        oci_layout,
        docker_manifest,
    })
}

/// The config and manifest of one architecture's image.
fn image(options: &ImageOptions, facts: &Facts<'_>) -> Result<Image, ImageError> {
    let created = crate::time::rfc3339(options.created);
    let ports = options
        .ports
        .iter()
        .map(|port| check_port(port))
        .collect::<Result<Vec<_>, _>>()?;

    let mut config = ConfigBuilder::default()
        .user(options.user.clone())
        .entrypoint(vec![BUNDLE_PATH.to_owned()])
        .cmd(options.cmd.clone())
        .labels(oci_annotations(options, facts, &created, &options.labels));
    if !ports.is_empty() {
        config = config.exposed_ports(ports);
    }
    let config = config.build().map_err(|e| ImageError::spec("config", e))?;
    let history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(format!(
            "bundle-image {}: {} as {BUNDLE_PATH}, empty /tmp (1777)",
            env!("CARGO_PKG_VERSION"),
            facts.reference
        ))
        .build()
        .map_err(|e| ImageError::spec("history", e))?;
    let image_config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(oci_arch(facts.arch))
        .os(Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![facts.layer.diff_id.clone()])
                .build()
                .map_err(|e| ImageError::spec("rootfs", e))?,
        )
        .history(vec![history])
        .build()
        .map_err(|e| ImageError::spec("config", e))?;
    let mut config_json = to_value("config", &image_config)?;
    if let Some(check) = &options.healthcheck {
        // Docker keeps its own fields in the same object; loaders that
        // only know OCI ignore it.
        let check = to_value("healthcheck", &DockerHealthcheck::new(check))?;
        if let Some(Value::Object(fields)) = config_json.get_mut("config") {
            fields.insert("Healthcheck".to_owned(), check);
        }
    }
    let config = Blob::new(canonical_bytes("config", config_json)?);

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config.digest,
            config.bytes.len() as u64,
        )?)
        .layers(vec![descriptor(
            MediaType::ImageLayerGzip,
            &facts.layer.digest,
            facts.layer.size,
        )?])
        .annotations(oci_annotations(
            options,
            facts,
            &created,
            &options.annotations,
        ))
        .build()
        .map_err(|e| ImageError::spec("manifest", e))?;
    let manifest = Blob::new(canonical_bytes(
        "manifest",
        to_value("manifest", &manifest)?,
    )?);

    Ok(Image { config, manifest })
}

fn descriptor(media_type: MediaType, digest: &str, size: u64) -> Result<Descriptor, ImageError> {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(Digest::from_str(digest).map_err(|e| ImageError::spec("descriptor", e))?)
        .size(size)
        .build()
        .map_err(|e| ImageError::spec("descriptor", e))
}

fn to_value(what: &'static str, value: &impl Serialize) -> Result<Value, ImageError> {
    serde_json::to_value(value).map_err(|e| ImageError::spec(what, e))
}

/// Compact JSON with every object's keys sorted. The OCI types hold maps
/// (labels, annotations, exposed ports) in `HashMap`s, whose order changes
/// from run to run; sorting here makes the bytes, and so the digests,
/// depend on the content alone, whatever map type serde_json is built with.
fn canonical_bytes(what: &'static str, value: Value) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(&sorted(value)).map_err(|e| ImageError::spec(what, e))
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(fields) => {
            let ordered: BTreeMap<String, Value> =
                fields.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(check_port("8080").unwrap(), "8080/tcp");
        assert_eq!(check_port("53/udp").unwrap(), "53/udp");
        for bad in ["", "0", "65536", "http", "80/icmp", "80/"] {
            let err = check_port(bad).unwrap_err().to_string();
            assert!(err.contains("e.g. 8080"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let value = serde_json::json!({"b": {"z": 1, "a": [{"y": 1, "x": 2}]}, "a": 0});
        let text = String::from_utf8(canonical_bytes("test", value).unwrap()).unwrap();
        assert_eq!(text, r#"{"a":0,"b":{"a":[{"x":2,"y":1}],"z":1}}"#);
    }

    #[test]
    fn docker_healthcheck_is_in_nanoseconds() {
        let check = DockerHealthcheck::new(&Healthcheck::default());
        let value = serde_json::to_value(&check).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "Test": ["CMD", "/app", "healthcheck"],
                "Interval": 10_000_000_000u64,
                "Timeout": 3_000_000_000u64,
                "StartPeriod": 2_000_000_000u64,
                "Retries": 3,
            })
        );
    }
}
