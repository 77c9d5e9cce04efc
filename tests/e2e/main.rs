//! End-to-end tests, one binary (see `tests/harness` for the harness).
//! Run them with `cargo xtask test`, which builds the static artifacts first.

mod anywhere;
mod docker;
mod doctor;
mod errors;
mod lifecycle;
mod mix;
mod mix_step;
mod pack_dockerfile;
mod repro;
mod run;
mod sydney_pack;
