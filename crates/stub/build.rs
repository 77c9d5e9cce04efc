//! Relinks the stub when `warm-path.ld` changes. `cargo xtask` passes the
//! script to the linker (`-Wl,-T`), which cargo does not track by itself;
//! without this, a regenerated layout would not reach the next build.

fn main() {
    println!("cargo:rerun-if-changed=warm-path.ld");
}
