//! `cargo xtask test`: the README's test command.
//!
//! Builds what the end-to-end tests run for real (the static bundle, both
//! stub variants, the static server, the static `sydney-pack` of `cargo
//! xtask dist`), then runs `cargo test --workspace`
//! with their paths in the environment. Nothing is skipped: a test that
//! needs something missing fails and says what.

use anyhow::Result;
use bundle_format::Codec;

use crate::toolchain::stub_path;
use crate::util::{self, command};
use crate::{bundle, dist};

/// What the end-to-end tests run, beyond the Rust toolchain.
const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("chroot", "coreutils"),
    ("strip", "binutils"),
    ("g++", "g++"),
    ("mix", "elixir"),
    ("erl", "erlang-base"),
    ("docker", "docker.io"),
    // The multi-stage Dockerfile test makes its Elixir base image once.
    ("debootstrap", "debootstrap"),
    ("tar", "tar"),
    ("bash", "bash"),
];

/// Builds the artifacts, then runs the tests.
pub fn run(extra: &[String]) -> Result<()> {
    util::ensure_programs(TEST_PROGRAMS)?;
    let built = bundle::bundle(bundle::DEFAULT_CODEC, &bundle::default_out(), None)?;
    // Builds both stubs, then sydney-pack with them inside.
    let sydney_pack = dist::dist()?;
    let (gzip, zstd) = (stub_path(Codec::Gzip), stub_path(Codec::Zstd));
    let mut cargo = command(util::cargo());
    cargo
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("SYDNEY_TEST_BUNDLE", &built.bundle)
        .env("SYDNEY_TEST_RELEASE", &built.release)
        .env("SYDNEY_TEST_SERVER", &built.server)
        .env("SYDNEY_TEST_STUB_GZIP", gzip)
        .env("SYDNEY_TEST_STUB_ZSTD", zstd)
        .env("SYDNEY_TEST_SYDNEY_PACK", sydney_pack);
    util::run(&mut cargo)
}
