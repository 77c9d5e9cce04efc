//! Any file content: locating the trailer, lead-in and sections, and the ELF
//! image length used to explain a missing trailer, must never panic, read
//! out of bounds or allocate in proportion to claimed sizes.
#![no_main]

use bundle_format::layout::{self, TRAILER_LEN, Trailer};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The real entry point, with the real ELF measurement.
    if let Ok(bundle) = bundle_format::Bundle::open(data) {
        let _ = bundle.index();
        let _ = bundle.tree_dir_name();
    }
    // Every claimed stub length, including nonsense ones.
    if let Some((&first, _)) = data.split_first() {
        let image = u64::from(first) * 16;
        if let Ok(found) = layout::locate_with(data, |_| Some(image)) {
            assert!(found.trailer.index.end as usize <= data.len());
            let _ = found.payload_bytes(data);
            let _ = found.manifest_bytes(data);
            let _ = found.index_bytes(data);
        }
    }
    if let Some(tail) = data.len().checked_sub(TRAILER_LEN).map(|start| &data[start..]) {
        let _ = Trailer::decode(tail.try_into().unwrap());
    }
    let _ = bundle_format::elf::image_len(data);
});
