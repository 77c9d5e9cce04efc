//! Manifest and file-index decoding over arbitrary bytes: no panic, no huge
//! allocation from length prefixes, and everything accepted is valid.
#![no_main]

use bundle_format::{Index, Manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        manifest.validate().expect("decode returned an invalid manifest");
        let _ = manifest.tree_dir_name(&[0; 32]);
    }
    if let Ok(index) = Index::decode(data) {
        for entry in &index.entries {
            bundle_format::paths::validate_relative(&entry.path).expect("invalid path accepted");
        }
        let _ = index.resolve("bin/app");
    }
});
