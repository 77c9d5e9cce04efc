//! A validated view of a whole bundle file held in memory (normally a map of
//! the running executable).

use std::io::{BufRead, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::codec;
use crate::error::{FormatError, Result};
use crate::layout::{self, Layout};
use crate::manifest::{Index, Manifest};
use crate::readahead::ReadAhead;
#[cfg(feature = "signatures")]
use crate::signature::PublicKey;
use crate::signature::SignatureBlock;
use crate::unpack::{self, UnpackStats};

/// Payloads smaller than this are hashed before decompression, and decoded,
/// on the calling thread. Larger ones are hashed and decoded on a second
/// thread ([`ReadAhead`]) while the calling thread creates the files.
/// Starting a thread costs more than a small payload's work.
const PARALLEL_THRESHOLD: usize = 4 << 20;

/// Granularity at which consumed payload bytes are handed back (see
/// [`Bundle::with_page_release`]).
const RELEASE_CHUNK: usize = 1 << 20;

/// Called with payload regions that have been read and will not be needed
/// again soon: a mapped file's caller can drop those pages from its resident
/// set, so that memory use does not grow with the payload.
pub type PageRelease = fn(&[u8]);

/// One regular file of the payload, met while the payload streams past
/// (see [`Bundle::for_each_file`]).
pub struct PayloadFile<'r> {
    /// Its path in the payload, as the tar stream spells it.
    pub path: &'r [u8],
    /// Its mode bits (0 if the header's are unreadable).
    pub mode: u32,
    /// Its length in bytes.
    pub size: u64,
    /// Its contents, streamed from the payload.
    pub contents: &'r mut dyn Read,
}

impl std::fmt::Debug for PayloadFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadFile")
            .field("path", &String::from_utf8_lossy(self.path))
            .field("mode", &self.mode)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PayloadFile<'_> {
    /// Whether any exec bit is set.
    pub fn executable(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// A bundle whose layout and manifest have been checked.
///
/// Opening a bundle hashes only the manifest (a few hundred bytes); the
/// payload is hashed only when it is unpacked or verified, so starting from
/// an existing tree never reads the payload.
#[derive(Debug)]
pub struct Bundle<'a> {
    file: &'a [u8],
    layout: Layout,
    manifest: Manifest,
    release: Option<PageRelease>,
}

impl<'a> Bundle<'a> {
    /// Locates the sections of `file`, verifies the manifest digest and
    /// decodes the manifest.
    pub fn open(file: &'a [u8]) -> Result<Bundle<'a>> {
        let layout = layout::locate(file)?;
        let manifest_bytes = layout.manifest_bytes(file);
        if crate::checksum::record_sha256(manifest_bytes) != layout.trailer.manifest_sha256 {
            return Err(FormatError::DigestMismatch {
                section: "manifest",
            });
        }
        let manifest = Manifest::decode(manifest_bytes)?;
        Ok(Bundle {
            file,
            layout,
            manifest,
            release: None,
        })
    }

    /// Hands payload regions back through `release` once read (hashing and
    /// decompression both stream through the payload front to back).
    pub fn with_page_release(mut self, release: PageRelease) -> Self {
        self.release = Some(release);
        self
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The section layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The stub executable at the start of the file.
    pub fn stub(&self) -> &'a [u8] {
        &self.file[..self.layout.stub_len as usize]
    }

    /// The compressed payload.
    pub fn payload(&self) -> &'a [u8] {
        self.layout.payload_bytes(self.file)
    }

    /// The payload SHA-256 recorded in the trailer (not recomputed).
    pub fn payload_sha256(&self) -> &[u8; 32] {
        &self.layout.trailer.payload_sha256
    }

    /// The cache directory name for this bundle's tree.
    pub fn tree_dir_name(&self) -> String {
        self.manifest.tree_dir_name(self.payload_sha256())
    }

    /// The signature block, decoded but not checked; `None` when the bundle
    /// is unsigned.
    pub fn signature_block(&self) -> Result<Option<SignatureBlock>> {
        let bytes = self.layout.signature_bytes(self.file);
        if bytes.is_empty() {
            return Ok(None);
        }
        SignatureBlock::decode(bytes).map(Some)
    }

    /// Checks the bundle's signature, stub included, and returns who signed
    /// it (`None`: unsigned). The check for a trusted party (`verify`,
    /// `inspect`, `upgrade`): an upgrade that must be "signed by the same
    /// key as the running bundle" compares the two results (whole keys, not
    /// key ids). A signature that does not match is
    /// [`FormatError::BadSignature`].
    ///
    /// The payload is not hashed here: the signed trailer holds its digest,
    /// which [`Bundle::verify_payload`] and [`Bundle::unpack_verified`]
    /// check. Call one of them too before trusting the payload.
    #[cfg(feature = "signatures")]
    pub fn signer(&self) -> Result<Option<PublicKey>> {
        self.check_signature(true)
    }

    /// [`Bundle::signer`] without hashing the stub again (its recorded
    /// digest is signed): the check a bundle makes of itself at every
    /// start, where re-hashing the running stub would prove nothing (a
    /// replaced stub need not run the check at all) and cost ~1 ms.
    #[cfg(feature = "signatures")]
    pub fn signer_at_start(&self) -> Result<Option<PublicKey>> {
        self.check_signature(false)
    }

    /// Requires a valid signature by one of `trusted` (the keys of
    /// [`crate::signature::TRUSTED_KEYS_VAR`]); `hash_stub` as in
    /// [`Bundle::signer`] (true) or [`Bundle::signer_at_start`] (false).
    /// Unsigned or signed by another key: [`FormatError::Untrusted`].
    #[cfg(feature = "signatures")]
    pub fn require_signer(&self, trusted: &[PublicKey], hash_stub: bool) -> Result<PublicKey> {
        let var = crate::signature::TRUSTED_KEYS_VAR;
        match self.check_signature(hash_stub)? {
            Some(key) if trusted.contains(&key) => Ok(key),
            Some(key) => Err(FormatError::Untrusted(format!(
                "this bundle is signed by key {}, which {var} does not list; run a bundle \
                 signed by a trusted key, or add its public key to {var}",
                key.key_id()
            ))),
            None => Err(FormatError::Untrusted(format!(
                "this bundle is unsigned and {var} requires a signature by one of its keys; \
                 pack it with `sydney-pack --sign KEY`, or unset {var}"
            ))),
        }
    }

    /// The signature rule of `upgrade` (issue 17): `self` is the running
    /// bundle, `new` the file to upgrade to. An unsigned running bundle
    /// accepts anything (`Ok(None)`); a signed one only a `new` signed by
    /// the same key (`Ok(Some(key))`). Both are checked in full
    /// ([`Bundle::signer`]); a refusal is [`FormatError::Untrusted`], a
    /// signature that does not match [`FormatError::BadSignature`].
    #[cfg(feature = "signatures")]
    pub fn require_same_signer(&self, new: &Bundle<'_>) -> Result<Option<PublicKey>> {
        let Some(running) = self.signer()? else {
            return Ok(None);
        };
        match new.signer()? {
            Some(key) if key == running => Ok(Some(key)),
            Some(key) => Err(FormatError::Untrusted(format!(
                "the running bundle is signed by key {} and the new one by key {}; an upgrade \
                 must be signed by the same key",
                running.key_id(),
                key.key_id()
            ))),
            None => Err(FormatError::Untrusted(format!(
                "the running bundle is signed by key {} and the new one is unsigned; pack it \
                 with `sydney-pack --sign` and the same key",
                running.key_id()
            ))),
        }
    }

    #[cfg(feature = "signatures")]
    fn check_signature(&self, hash_stub: bool) -> Result<Option<PublicKey>> {
        let Some(block) = self.signature_block()? else {
            return Ok(None);
        };
        let stub_len = self.layout.stub_len as usize;
        let lead_in = self.file[stub_len..stub_len + layout::LEAD_IN_LEN]
            .try_into()
            .expect("locate checked the lead-in");
        let trailer = self.file[self.file.len() - layout::TRAILER_LEN..]
            .try_into()
            .expect("locate checked the trailer");
        let statement = crate::signature::statement(&block.stub_sha256, lead_in, trailer);
        crate::signature::verify(&block.public_key, &statement, &block.signature)?;
        if hash_stub && Sha256::digest(self.stub())[..] != block.stub_sha256 {
            return Err(FormatError::BadSignature(
                "the stub differs from the one that was signed",
            ));
        }
        Ok(Some(block.public_key))
    }

    /// Hashes the payload and compares it with the trailer.
    pub fn verify_payload(&self) -> Result<()> {
        check_digest(self.payload(), self.payload_sha256(), self.release)
    }

    /// Decodes the file index, after checking its digest against the manifest.
    pub fn index(&self) -> Result<Index> {
        let bytes = self.layout.index_bytes(self.file);
        if Sha256::digest(bytes)[..] != self.manifest.index_sha256 {
            return Err(FormatError::DigestMismatch { section: "index" });
        }
        Index::decode(bytes)
    }

    /// A streaming decoder of the payload's tar stream. The payload is not
    /// verified; use [`Bundle::unpack_verified`] to extract.
    pub fn tar_stream(&self) -> Result<Box<dyn Read + Send + 'a>> {
        self.decode(None)
    }

    /// Streams the payload and calls `visit` with each regular file, in
    /// payload order, until it returns [`ControlFlow::Break`]; returns
    /// whether it did. Directories and symlinks are skipped. The payload is
    /// not verified here: call [`Bundle::verify_payload`] first where that
    /// matters. A payload that is not a readable tar stream is
    /// [`FormatError::CorruptPayload`]; `visit`'s own errors end the walk
    /// and are returned as they are.
    pub fn for_each_file<E: From<FormatError>>(
        &self,
        mut visit: impl FnMut(PayloadFile<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<bool, E> {
        let mut failed = None;
        let stopped = self.walk_files(&mut |file| match visit(file) {
            Ok(flow) => flow,
            Err(err) => {
                failed = Some(err);
                ControlFlow::Break(())
            }
        })?;
        match failed {
            Some(err) => Err(err),
            None => Ok(stopped),
        }
    }

    /// Streams the payload up to the regular file at `path` and hands it to
    /// `read`; `None` if the payload holds no such file. Memory does not
    /// grow with the file's size: `read` gets a stream.
    pub fn read_file<T, E: From<FormatError>>(
        &self,
        path: &str,
        read: impl FnOnce(PayloadFile<'_>) -> Result<T, E>,
    ) -> Result<Option<T>, E> {
        let mut read = Some(read);
        let mut found = None;
        self.for_each_file(|file| {
            if file.path != path.as_bytes() {
                return Ok(ControlFlow::Continue(()));
            }
            if let Some(read) = read.take() {
                found = Some(read(file)?);
            }
            Ok::<_, E>(ControlFlow::Break(()))
        })?;
        Ok(found)
    }

    /// The one tar walk behind [`Bundle::for_each_file`], not generic so
    /// that a program carries one copy of it whatever its callers are.
    fn walk_files(
        &self,
        visit: &mut dyn FnMut(PayloadFile<'_>) -> ControlFlow<()>,
    ) -> Result<bool> {
        let corrupt = |err: std::io::Error| {
            FormatError::CorruptPayload(format!("cannot read the payload: {err}"))
        };
        let mut archive = tar::Archive::new(self.tar_stream()?);
        let mut path = Vec::new();
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            path.clear();
            path.extend_from_slice(&entry.path_bytes());
            let file = PayloadFile {
                path: &path,
                mode: entry.header().mode().unwrap_or(0),
                size: entry.size(),
                contents: &mut entry,
            };
            if visit(file).is_break() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The tar stream; with `hashing`, every whole [`RELEASE_CHUNK`] the
    /// decoder consumes is fed to it (the caller hashes the rest).
    fn decode<'h>(&self, hashing: Option<&'h Mutex<Hashing>>) -> Result<Box<dyn Read + Send + 'h>>
    where
        'a: 'h,
    {
        if let Some(tar) =
            codec::decode_whole(self.manifest.codec, self.payload(), self.manifest.tar_len)?
        {
            return Ok(Box::new(std::io::Cursor::new(tar)));
        }
        let input = ReleasingReader {
            data: self.payload(),
            pos: 0,
            done: 0,
            release: self.release,
            hashing,
        };
        let decoder = codec::decoder(self.manifest.codec, input)?;
        Ok(Box::new(AtMost {
            inner: decoder,
            left: self.manifest.tar_len,
        }))
    }

    /// What the manifest declares the tree holds, enforced while unpacking.
    fn limits(&self) -> unpack::Limits {
        unpack::Limits {
            bytes: self.manifest.unpacked_bytes,
            entries: self.manifest.file_count,
        }
    }

    /// Unpacks the payload into the empty directory `dest`, verifying the
    /// payload digest. A digest mismatch is reported in preference to any
    /// error it caused. On error `dest` holds a partial tree.
    pub fn unpack_verified(&self, dest: &Path) -> Result<UnpackStats> {
        let payload = self.payload();
        if payload.len() < PARALLEL_THRESHOLD {
            self.verify_payload()?;
            return unpack::unpack_bounded(self.tar_stream()?, dest, self.limits());
        }
        // The decoder thread hashes each payload region once the decoder
        // has consumed it, so the payload is read once, front to back, and
        // its pages are released behind the decoder.
        let hashing = Mutex::new(Hashing {
            hasher: Sha256::new(),
            hashed: 0,
        });
        let unpacked = std::thread::scope(|scope| {
            self.decode(Some(&hashing)).and_then(|tar| {
                // Boxed like the other path's stream, so that the stub
                // carries one copy of the unpacker, not two.
                let tar: Box<dyn Read + Send> = Box::new(ReadAhead::spawn(scope, tar));
                unpack::unpack_bounded(tar, dest, self.limits())
            })
        });
        // Whatever the decoder did not reach (it stopped early, on an error
        // or at the end of the tar) is hashed here.
        let Hashing { hasher, hashed } =
            hashing.into_inner().unwrap_or_else(PoisonError::into_inner);
        finish_digest(
            hasher,
            &payload[hashed..],
            self.payload_sha256(),
            self.release,
        )?;
        unpacked
    }
}

fn check_digest(bytes: &[u8], expected: &[u8; 32], release: Option<PageRelease>) -> Result<()> {
    finish_digest(Sha256::new(), bytes, expected, release)
}

/// Feeds the rest of the payload, `rest`, to `hasher` and compares.
fn finish_digest(
    mut hasher: Sha256,
    rest: &[u8],
    expected: &[u8; 32],
    release: Option<PageRelease>,
) -> Result<()> {
    for chunk in rest.chunks(RELEASE_CHUNK) {
        hasher.update(chunk);
        if let Some(release) = release {
            release(chunk);
        }
    }
    if hasher.finalize()[..] == expected[..] {
        Ok(())
    } else {
        Err(FormatError::DigestMismatch { section: "payload" })
    }
}

/// A decoded tar stream that may not be longer than the manifest's
/// `tar_len`: a payload that inflates further (a decompression bomb behind
/// a valid digest) fails as soon as it passes that length.
struct AtMost<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for AtMost<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte more than allowed is enough to tell.
        let want = buf.len().min(
            usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        );
        let n = self.inner.read(&mut buf[..want])?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => Err(std::io::Error::other(
                "the payload inflates to more than the tar length its manifest declares",
            )),
        }
    }
}

/// A payload digest being computed by the decoder thread.
struct Hashing {
    hasher: Sha256,
    /// The payload's first `hashed` bytes have been fed to `hasher`.
    hashed: usize,
}

/// Reads a byte slice; each [`RELEASE_CHUNK`] once consumed is fed to the
/// hasher (if any) and then handed back.
struct ReleasingReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// The first `done` bytes have been hashed and released.
    done: usize,
    release: Option<PageRelease>,
    hashing: Option<&'a Mutex<Hashing>>,
}

impl Read for ReleasingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ReleasingReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(&self.data[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.data.len());
        while self.pos - self.done >= RELEASE_CHUNK {
            let chunk = &self.data[self.done..self.done + RELEASE_CHUNK];
            if let Some(hashing) = self.hashing {
                let mut hashing = hashing.lock().unwrap_or_else(PoisonError::into_inner);
                hashing.hasher.update(chunk);
                hashing.hashed += chunk.len();
            }
            if let Some(release) = self.release {
                release(chunk);
            }
            self.done += RELEASE_CHUNK;
        }
    }
}
