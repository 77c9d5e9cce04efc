//! Synthetic release folders for the large-payload rows: about 2,000 files,
//! half of the bytes text (compressible, like logs or source) and half
//! random (incompressible, like images or compiled assets), plus the real
//! `bin/sydney` as the entry. Generated once per size and reused.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Bump when the generator changes, so old folders are regenerated.
const GENERATOR: &str = "synthetic release v1";

/// Files besides `bin/sydney`: half text, half random.
const FILES: usize = 1_999;

/// Subdirectories of `lib/` the files are spread over.
const APPS: usize = 20;

/// A generated folder.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// The release folder.
    pub dir: PathBuf,
    /// Regular files in it.
    pub files: u64,
    /// Bytes of file content in it.
    pub bytes: u64,
}

/// The folder of about `mib` MiB under `bench_dir`, generated unless a
/// complete one from this generator is there already.
pub fn ensure(bench_dir: &Path, mib: u64, server: &Path) -> Result<Synthetic> {
    let dir = bench_dir.join(format!("large-{mib}mib"));
    let marker = bench_dir.join(format!("large-{mib}mib.done"));
    let stamp = format!("{GENERATOR}, {mib} MiB, {FILES} files\n");
    if dir.is_dir() && fs::read_to_string(&marker).is_ok_and(|m| m == stamp) {
        eprintln!("bench: reusing {}", dir.display());
    } else {
        eprintln!("bench: generating {} ({mib} MiB)", dir.display());
        let _ = fs::remove_file(&marker);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        generate(&dir, mib << 20, server)
            .with_context(|| format!("cannot generate {}", dir.display()))?;
        fs::write(&marker, stamp)?;
    }
    let (files, bytes) = count(&dir)?;
    Ok(Synthetic { dir, files, bytes })
}

fn generate(dir: &Path, total: u64, server: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    let entry = dir.join("bin/sydney");
    let server_len = fs::copy(server, &entry)?;
    fs::set_permissions(&entry, fs::Permissions::from_mode(0o755))?;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ total);
    let budget = total.saturating_sub(server_len);
    let text_files = FILES.div_ceil(2);
    let text = sizes(&mut rng, text_files, budget / 2);
    let data = sizes(&mut rng, FILES - text_files, budget - budget / 2);
    let words = vocabulary(&mut rng);
    for i in 0..FILES {
        let is_text = i % 2 == 0;
        let (kind, ext) = if is_text {
            ("priv", "txt")
        } else {
            ("assets", "bin")
        };
        let folder = dir.join(format!("lib/app_{:02}/{kind}", i % APPS));
        fs::create_dir_all(&folder)?;
        let path = folder.join(format!("f{i:04}.{ext}"));
        let mut out = BufWriter::with_capacity(1 << 16, File::create(&path)?);
        if is_text {
            write_text(&mut out, &mut rng, &words, text[i / 2])?;
        } else {
            write_random(&mut out, &mut rng, data[i / 2])?;
        }
        out.flush()?;
    }
    Ok(())
}

/// `count` sizes summing to `total`, spread log-uniformly over three orders
/// of magnitude (many small files, a few large ones).
fn sizes(rng: &mut Rng, count: usize, total: u64) -> Vec<u64> {
    let weights: Vec<f64> = (0..count).map(|_| 1000f64.powf(rng.unit())).collect();
    let sum: f64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (w / sum * total as f64) as u64)
        .collect();
    let short = total - sizes.iter().sum::<u64>();
    if let Some(last) = sizes.last_mut() {
        *last += short;
    }
    sizes
}

/// 4,096 made-up words of 2 to 11 letters.
fn vocabulary(rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..4096)
        .map(|_| {
            let len = 2 + rng.below(10);
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect()
}

/// Log-like lines of skewed word choices and numbers (gzip -9 makes about
/// a third of them).
fn write_text(out: &mut impl Write, rng: &mut Rng, words: &[Vec<u8>], len: u64) -> Result<()> {
    let mut line = Vec::with_capacity(256);
    let mut written = 0u64;
    while written < len {
        line.clear();
        line.extend(std::iter::repeat_n(b' ', 2 * rng.below(4) as usize));
        for w in 0..4 + rng.below(9) {
            if w > 0 {
                line.push(if rng.below(8) == 0 { b',' } else { b' ' });
            }
            // Two draws multiplied: common words are much more common.
            let index = rng.below(64) * rng.below(64);
            line.extend_from_slice(&words[index as usize]);
            if rng.below(6) == 0 {
                line.extend_from_slice(format!("={}", rng.below(100_000)).as_bytes());
            }
        }
        line.push(b'\n');
        let take = line.len().min((len - written) as usize);
        out.write_all(&line[..take])?;
        written += take as u64;
    }
    Ok(())
}

fn write_random(out: &mut impl Write, rng: &mut Rng, len: u64) -> Result<()> {
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        let take = left.min(block.len() as u64) as usize;
        out.write_all(&block[..take])?;
        left -= take as u64;
    }
    Ok(())
}

/// Regular files and their bytes under `dir`.
fn count(dir: &Path) -> Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

/// xorshift64*: fast, deterministic, and plenty random for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up() {
        let mut rng = Rng(1);
        let sizes = sizes(&mut rng, 1000, 32 << 20);
        assert_eq!(sizes.iter().sum::<u64>(), 32 << 20);
        assert!(sizes.iter().max() > Some(&(sizes.iter().min().unwrap() * 100)));
    }
}
