//! Bundles for tests: real ones packed behind the real stubs, and raw tar
//! records for payloads no packer would write.

use std::path::Path;

use bundle_format::Codec;
use bundle_format::pack::{PackOptions, PackReport, pack_to_path};

use crate::sandbox::stub;

/// Packing options with test defaults.
pub fn pack_options(name: &str, entry: &str, codec: Codec) -> PackOptions {
    PackOptions {
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        entry: entry.to_owned(),
        args: Vec::new(),
        codec,
        level: bundle_format::codec::default_level(codec),
        needs_tree: false,
        default_cache_dir: None,
        mtime: 0,
        build: Vec::new(),
        portable: None,
        env: Vec::new(),
    }
}

/// Packs `dir` behind the real stub for the codec.
pub fn pack(dir: &Path, options: &PackOptions, out: &Path) -> PackReport {
    pack_to_path(dir, &stub(options.codec), options, out, &mut |_| {})
        .unwrap_or_else(|err| panic!("pack {}: {err}", dir.display()))
}

/// One raw ustar record (`kind`, `mode`, `link` target, `data`), padded to
/// 512 bytes, built by hand so that it can say anything (`../` paths,
/// absolute links, devices) the tar crate would refuse to write.
pub fn tar_record(kind: u8, path: &str, mode: u32, link: &str, data: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..path.len()].copy_from_slice(path.as_bytes());
    header[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The records, then the end-of-archive marker.
pub fn tar_of(records: &[Vec<u8>]) -> Vec<u8> {
    let mut tar: Vec<u8> = records.concat();
    tar.resize(tar.len() + 1024, 0);
    tar
}
