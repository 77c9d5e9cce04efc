//! Decoding on a second thread, ahead of the unpacker.
//!
//! Extracting a large payload has two halves that each take about as long
//! as the other on a small machine: decoding (zstd or inflate) and creating
//! files. [`ReadAhead`] runs the decoder on its own thread, so the two
//! overlap instead of taking turns. The decoder fills a few fixed buffers
//! that travel to the reader and back, so memory use stays
//! `READ_AHEAD_DEPTH * READ_AHEAD_CHUNK` (768 KiB) whatever the payload
//! size, and no buffer is allocated after the first few.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::Scope;

/// Size of one decoded buffer.
const READ_AHEAD_CHUNK: usize = 256 * 1024;

/// Buffers in flight: one being filled, the rest waiting or being read.
const READ_AHEAD_DEPTH: usize = 3;

/// A reader fed by a decoder running on a scoped thread.
///
/// Dropping it (say, when the unpacker stops on an error) makes the decoder
/// thread stop at its next buffer, so the scope always ends.
///
/// The hand-over is a mutex and a condition variable rather than
/// `std::sync::mpsc`: the channels' code added 37 KB to every stub.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
    current: Vec<u8>,
    pos: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled whenever `queue` changes; there is one waiter at most.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Decoded buffers, oldest first.
    filled: VecDeque<Vec<u8>>,
    /// Buffers the reader is done with, for the decoder to fill again.
    spent: Vec<Vec<u8>>,
    /// The decoder's error, passed on after the buffers before it.
    error: Option<io::Error>,
    /// The decoder has stopped: end of stream, or `error`.
    finished: bool,
    /// The reader was dropped: nobody wants more.
    abandoned: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panicking peer aborts the process (panic = "abort"); in tests,
        // whatever state it left is still consistent enough to finish.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        self.changed
            .wait(queue)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadAhead {
    /// Starts reading `inner` on a new thread of `scope`.
    pub(crate) fn spawn<'scope, R>(scope: &'scope Scope<'scope, '_>, inner: R) -> ReadAhead
    where
        R: Read + Send + 'scope,
    {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let producer = Arc::clone(&shared);
        scope.spawn(move || produce(inner, &producer));
        ReadAhead {
            shared,
            current: Vec::new(),
            pos: 0,
        }
    }
}

/// The decoder thread: fills buffers until the end of the stream, an error,
/// or the reader going away.
fn produce(mut inner: impl Read, shared: &Shared) {
    let mut allocated = 0;
    loop {
        let mut buffer = if allocated < READ_AHEAD_DEPTH {
            allocated += 1;
            Vec::new()
        } else {
            let mut queue = shared.lock();
            loop {
                if queue.abandoned {
                    return;
                }
                if let Some(buffer) = queue.spent.pop() {
                    break buffer;
                }
                queue = shared.wait(queue);
            }
        };
        buffer.resize(READ_AHEAD_CHUNK, 0);
        let result = fill(&mut inner, &mut buffer);
        let mut queue = shared.lock();
        match result {
            Ok(0) => queue.finished = true,
            Ok(n) => {
                buffer.truncate(n);
                queue.filled.push_back(buffer);
            }
            Err(err) => {
                queue.error = Some(err);
                queue.finished = true;
            }
        }
        let stop = queue.finished || queue.abandoned;
        drop(queue);
        shared.changed.notify_all();
        if stop {
            return;
        }
    }
}

/// Reads until `buffer` is full or the stream ends; returns the bytes read.
fn fill(inner: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buffer.len() {
        match inner.read(&mut buffer[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.current.len() {
            let mut queue = self.shared.lock();
            let next = loop {
                if let Some(next) = queue.filled.pop_front() {
                    break next;
                }
                if queue.finished {
                    return match queue.error.take() {
                        Some(err) => Err(err),
                        None => Ok(0),
                    };
                }
                queue = self.shared.wait(queue);
            };
            let spent = std::mem::replace(&mut self.current, next);
            self.pos = 0;
            if spent.capacity() > 0 {
                queue.spent.push(spent);
            }
            drop(queue);
            self.shared.changed.notify_all();
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.lock().abandoned = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `total` bytes of a counting pattern in odd
    /// sizes, then optionally fails.
    struct Pattern {
        next: usize,
        total: usize,
        fail_at_end: bool,
    }

    impl Read for Pattern {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.next == self.total {
                return if self.fail_at_end {
                    Err(io::Error::other("broken stream"))
                } else {
                    Ok(0)
                };
            }
            let n = out.len().min(self.total - self.next).min(7_919);
            for (i, byte) in out[..n].iter_mut().enumerate() {
                *byte = ((self.next + i) % 251) as u8;
            }
            self.next += n;
            Ok(n)
        }
    }

    fn pattern(total: usize, fail_at_end: bool) -> Pattern {
        Pattern {
            next: 0,
            total,
            fail_at_end,
        }
    }

    #[test]
    fn passes_every_byte_in_order() {
        for total in [0, 1, READ_AHEAD_CHUNK, READ_AHEAD_CHUNK * 7 + 13] {
            let out = std::thread::scope(|scope| {
                let mut reader = ReadAhead::spawn(scope, pattern(total, false));
                let mut out = Vec::new();
                reader.read_to_end(&mut out).unwrap();
                out
            });
            assert_eq!(out.len(), total);
            assert!(out.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }

    #[test]
    fn passes_the_decoder_error_on() {
        let err = std::thread::scope(|scope| {
            let mut reader = ReadAhead::spawn(scope, pattern(READ_AHEAD_CHUNK * 2 + 5, true));
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap_err()
        });
        assert_eq!(err.to_string(), "broken stream");
    }

    #[test]
    fn dropping_the_reader_stops_the_decoder() {
        // An endless stream: the scope only ends if the thread notices.
        std::thread::scope(|scope| {
            let mut reader = ReadAhead::spawn(scope, pattern(usize::MAX, false));
            let mut first = [0u8; 100];
            reader.read_exact(&mut first).unwrap();
            drop(reader);
        });
    }
}
