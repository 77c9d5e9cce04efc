//! Integration tests: the real `sydney` binary, spoken to over TCP.
//!
//! One test binary (cargo builds and links it once); `harness` starts the
//! server with a clean environment on a free port and explains failures.

mod activation;
mod config;
mod deploy;
mod errors;
mod harness;
mod http;
mod shutdown;
