//! End-to-end tests, one binary (see `tests/harness` for the harness).
//! Run them with `cargo xtask test`, which builds the static artifacts first.

mod aarch64;
mod anywhere;
mod deploy_files;
mod docker;
mod doctor;
mod errors;
mod fleet;
mod hardening;
mod image;
mod lifecycle;
mod mix;
mod mix_step;
mod pack_dockerfile;
mod portable;
mod repro;
mod run;
mod signing;
mod swarm;
mod sydney_pack;
mod upgrade;
