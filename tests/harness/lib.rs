//! The end-to-end test harness: the real static bundle, real processes,
//! real HTTP on loopback, real chroots and containers.
//!
//! Artifacts come from `cargo xtask test` (environment variables
//! `SYDNEY_TEST_*`) or, failing that, from where `cargo xtask bundle` puts
//! them. A missing artifact fails the test with instructions; nothing is
//! skipped.
//!
//! Modules by responsibility, all re-exported here (tests `use e2e::*`):
//! [`sandbox`] (artifacts, scratch directories, files, requirements),
//! [`process`] (running commands and servers, signals, namespaces),
//! [`http`] (raw HTTP on loopback), [`packing`] (test bundles, raw tar).

pub mod http;
pub mod packing;
pub mod process;
pub mod sandbox;

pub use bundle_format;
pub use http::*;
pub use packing::*;
pub use process::*;
pub use sandbox::*;
