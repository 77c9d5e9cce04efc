//! The stub's memory allocator: small allocations come from a bump arena in
//! `.bss`; large ones, and everything once the arena is used up, from the C
//! library's `malloc`.
//!
//! Why: a warm start makes a few hundred small allocations (the arguments,
//! the manifest, a handful of paths, argv and the environment for exec) and
//! then replaces the process. musl's allocator spends four system calls
//! setting up its heap and spreads size classes over several pages, and on
//! the virtual machines we measure every first touch of a page costs
//! microseconds. The arena hands out consecutive bytes instead: a warm start
//! touches one or two of its pages and makes no system call for memory.
//! Measured in docs/decisions/0002-arena-allocator.md.
//!
//! Freed arena memory is reused only when it is the most recent allocation
//! (stack order, which covers temporaries and a growing buffer); anything
//! else stays allocated until exit. The arena is small and fixed, so that
//! costs at most [`ARENA_LEN`] bytes, and long-running commands (`start` as
//! PID 1, extraction of large payloads) soon move to `malloc`.
//!
//! Threads: the stub runs a second thread while it extracts a large payload
//! (`bundle_format::readahead`), so a block freed on one thread can be handed
//! out again on the other. All the arena's state is one atomic, `used`, and
//! bytes change hands only through it: giving bytes back (a free or a shrink
//! of the last block) is a *release* read-modify-write of `used`, taking
//! bytes (a new block, or the last block growing in place) an *acquire*
//! read-modify-write. Every change of `used` is a read-modify-write, so each
//! one continues the release sequence of every earlier release: whoever takes
//! bytes sees every write made to them before they were given back. On
//! x86_64 these orderings compile to the same `lock cmpxchg` as relaxed ones.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of arena; a warm start uses well under a quarter.
pub const ARENA_LEN: usize = 64 * 1024;

/// Requests above this go straight to `malloc`: decompression and copy
/// buffers would use the arena up in one go.
const LARGEST_FROM_ARENA: usize = 4096;

/// The arena's bytes. Only ever accessed through pointers handed out by
/// [`Arena`], each range to one owner at a time.
#[repr(C, align(4096))]
struct Space(UnsafeCell<[u8; ARENA_LEN]>);

// SAFETY: `Space` is only reached through `Arena`, which hands each byte range
// to one live allocation at a time (reserved by a compare-and-swap on `used`).
// A range passes from one owner to the next only through `used`: the old
// owner gives it back with a release read-modify-write and the new owner
// takes it with an acquire read-modify-write (see the module documentation),
// so every access by the old owner happens before any access by the new one.
unsafe impl Sync for Space {}

/// The global allocator of the stub. See the module documentation.
pub struct Arena<'space> {
    space: &'space Space,
    /// Offset of the first free byte of the arena. Bytes below it belong to
    /// live (or leaked) blocks, bytes above it to nobody.
    used: AtomicUsize,
}

static SPACE: Space = Space(UnsafeCell::new([0; ARENA_LEN]));

impl Arena<'static> {
    /// The allocator over the one static arena.
    pub const fn new() -> Arena<'static> {
        Arena {
            space: &SPACE,
            used: AtomicUsize::new(0),
        }
    }
}

impl Arena<'_> {
    fn base(&self) -> *mut u8 {
        self.space.0.get().cast()
    }

    /// The arena offset of `ptr`, if it points into the arena.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        ptr.addr()
            .checked_sub(self.base().addr())
            .filter(|&offset| offset < ARENA_LEN)
    }

    /// Reserves `layout` at the end of the used part, or `None` if it does
    /// not fit.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() > LARGEST_FROM_ARENA {
            return None;
        }
        let base = self.base();
        // Only a guess at where to start: the compare-and-swap below checks it.
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = aligned_offset(base, used, layout.align())?;
            let end = start.checked_add(layout.size())?;
            if end > ARENA_LEN {
                return None;
            }
            // Acquire on success: these bytes may have been given back by
            // another thread (`move_end`, release), whose writes to them must
            // happen before ours. Relaxed on failure: nothing changes hands.
            match self
                .used
                .compare_exchange_weak(used, end, Ordering::Acquire, Ordering::Relaxed)
            {
                // `start..end` now belongs to this caller alone; `start` is at
                // most `ARENA_LEN`, so the pointer stays in (or one past) the
                // arena and keeps its provenance.
                Ok(_) => return Some(base.wrapping_add(start)),
                Err(now) => used = now,
            }
        }
    }

    /// Moves the end of the used part from `from` to `to` if nothing was
    /// allocated after the block that ends at `from`.
    ///
    /// Release, for the bytes given back when `to < from` (a free or a
    /// shrink): our writes to them happen before the next owner's accesses.
    /// Acquire, for the bytes taken when `to > from` (growing in place): they
    /// may have been given back by another thread.
    fn move_end(&self, from: usize, to: usize) -> bool {
        self.used
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// The first offset at or after `used` whose address (from `base`) is a
/// multiple of `align`.
fn aligned_offset(base: *mut u8, used: usize, align: usize) -> Option<usize> {
    // The base is page-aligned, so aligning the offset aligns the address for
    // every alignment up to a page; larger ones are rounded up all the same.
    // `align` is a power of two (a `Layout`'s), so this is a mask, not a
    // division.
    let mask = align - 1;
    let addr = base.addr().checked_add(used)?.checked_add(mask)? & !mask;
    Some(addr - base.addr())
}

impl std::fmt::Debug for Arena<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Arena<'static> {
    fn default() -> Arena<'static> {
        Arena::new()
    }
}

// SAFETY: `alloc` returns either a range of the arena reserved by an atomic
// compare-and-swap (so never handed out twice while live, and ordered after
// the writes of its previous owner: see the module documentation), aligned as
// `layout` asks and `layout.size()` long, or memory from `System`. `dealloc`
// and `realloc` tell the two apart by address, give `System` memory back to
// `System` with the layout it was allocated with, and only ever reclaim an
// arena range when it is the last one handed out.
unsafe impl GlobalAlloc for Arena<'_> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract for `layout` is passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => {
                // Reclaimed arena bytes may hold old data.
                // SAFETY: `ptr` is a fresh arena range of `layout.size()` bytes.
                unsafe { ptr::write_bytes(ptr, 0, layout.size()) };
                ptr
            }
            // `calloc` gets large zeroed buffers from fresh pages without
            // writing them.
            // SAFETY: the caller's contract for `layout` is passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset_of(ptr) {
            Some(start) => {
                // Reclaimed only if it is the last block; otherwise kept.
                self.move_end(start + layout.size(), start);
            }
            // SAFETY: not an arena pointer, so `System` allocated it with
            // this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(start) = self.offset_of(ptr) {
            // The last block grows or shrinks in place (a `Vec` or `String`
            // being built), as long as it stays small.
            let end = start + layout.size();
            if new_size <= LARGEST_FROM_ARENA
                && start + new_size <= ARENA_LEN
                && self.move_end(end, start + new_size)
            {
                return ptr;
            }
            if new_size <= layout.size() {
                return ptr;
            }
        } else {
            // SAFETY: not an arena pointer: `System` allocated it with
            // `layout`; the caller's contract for `new_size` is passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `layout.align()` is a valid alignment (it came with a live
        // allocation) and the caller guarantees `new_size`, rounded up to
        // it, does not overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (`new_size` > old size).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least
            // `layout.size()` bytes long.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicU8;

    // The tests run on private arenas, so that addresses are predictable;
    // the test binary itself allocates through the global arena like the
    // stub does. `cargo +nightly miri test --bin bundle-stub arena::` runs
    // them under Miri, whose data-race detector checks the orderings (CI
    // does, .ci/run).

    /// A page-aligned space for one test.
    fn space() -> Box<Space> {
        Box::new(Space(UnsafeCell::new([0; ARENA_LEN])))
    }

    fn private(space: &Space) -> Arena<'_> {
        Arena {
            space,
            used: AtomicUsize::new(0),
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn in_arena(arena: &Arena<'_>, ptr: *mut u8) -> bool {
        arena.offset_of(ptr).is_some()
    }

    #[test]
    fn small_allocations_are_consecutive_and_aligned() {
        let space = space();
        let arena = private(&space);
        // SAFETY: non-zero layouts; blocks are not used after this test.
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            let c = arena.alloc(layout(16, 64));
            assert!(in_arena(&arena, a) && in_arena(&arena, b) && in_arena(&arena, c));
            assert_eq!(b as usize % 8, 0);
            assert_eq!(c as usize % 64, 0);
            assert_eq!(b as usize, a as usize + 8);
            assert!(c as usize >= b as usize + 8);
        }
    }

    #[test]
    fn large_requests_and_overflow_go_to_malloc() {
        let space = space();
        let arena = private(&space);
        // SAFETY: non-zero layouts; every block is freed with its layout.
        unsafe {
            let big = arena.alloc(layout(LARGEST_FROM_ARENA + 1, 8));
            assert!(!big.is_null() && !in_arena(&arena, big));
            arena.dealloc(big, layout(LARGEST_FROM_ARENA + 1, 8));

            let mut blocks = Vec::new();
            for _ in 0..(ARENA_LEN / LARGEST_FROM_ARENA) {
                let p = arena.alloc(layout(LARGEST_FROM_ARENA, 8));
                assert!(in_arena(&arena, p));
                blocks.push(p);
            }
            let spill = arena.alloc(layout(16, 8));
            assert!(!spill.is_null() && !in_arena(&arena, spill));
            spill.write_bytes(0xAB, 16);
            arena.dealloc(spill, layout(16, 8));
        }
    }

    #[test]
    fn the_last_block_is_reclaimed_and_grows_in_place() {
        let space = space();
        let arena = private(&space);
        // SAFETY: non-zero layouts; pointers are used only while live.
        unsafe {
            let a = arena.alloc(layout(32, 8));
            let b = arena.alloc(layout(32, 8));
            arena.dealloc(b, layout(32, 8));
            let c = arena.alloc(layout(32, 8));
            assert_eq!(b, c, "the freed last block is handed out again");

            c.write_bytes(7, 32);
            let grown = arena.realloc(c, layout(32, 8), 200);
            assert_eq!(grown, c, "the last block grows in place");
            assert!(
                std::slice::from_raw_parts(grown, 32)
                    .iter()
                    .all(|&x| x == 7)
            );

            // Not the last block: moved, contents kept, old block kept.
            a.write_bytes(9, 32);
            let moved = arena.realloc(a, layout(32, 8), 64);
            assert_ne!(moved, a);
            assert!(
                std::slice::from_raw_parts(moved, 32)
                    .iter()
                    .all(|&x| x == 9)
            );

            // Growing past the arena limit moves the block to malloc.
            let big = arena.realloc(moved, layout(64, 8), LARGEST_FROM_ARENA * 2);
            assert!(!in_arena(&arena, big));
            assert!(std::slice::from_raw_parts(big, 32).iter().all(|&x| x == 9));
            arena.dealloc(big, layout(LARGEST_FROM_ARENA * 2, 8));
        }
    }

    #[test]
    fn zeroed_memory_is_zero_even_when_reused() {
        let space = space();
        let arena = private(&space);
        // SAFETY: non-zero layouts; pointers are used only while live.
        unsafe {
            let a = arena.alloc(layout(64, 8));
            a.write_bytes(0xFF, 64);
            arena.dealloc(a, layout(64, 8));
            let z = arena.alloc_zeroed(layout(64, 8));
            assert_eq!(z, a);
            assert!(std::slice::from_raw_parts(z, 64).iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn threads_never_get_overlapping_blocks() {
        let space = space();
        let arena = private(&space);
        let rounds = if cfg!(miri) { 20 } else { 200 };
        let mut all: Vec<(usize, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4u8)
                .map(|t| {
                    let arena = &arena;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..rounds {
                            let size = 8 + (i % 5) * 8;
                            // SAFETY: non-zero layout; the block is written
                            // within its size and checked before the thread ends.
                            let p = unsafe { arena.alloc(layout(size, 8)) };
                            // SAFETY: `p` is a live block of `size` bytes.
                            unsafe { p.write_bytes(t, size) };
                            let offset = arena.offset_of(p).expect("the arena has room for all");
                            mine.push((offset, size));
                        }
                        for &(offset, size) in &mine {
                            let p = arena.base().wrapping_add(offset);
                            // SAFETY: still live, never freed.
                            let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                            assert!(bytes.iter().all(|&b| b == t), "another thread wrote here");
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        all.sort();
        for pair in all.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "blocks overlap");
        }
    }

    /// The hand-over the read-ahead thread relies on: a block written and
    /// freed on one thread, then handed out on another. Nothing but the
    /// arena orders the two threads (the signal between them is relaxed),
    /// so under Miri this fails with a data race unless the arena's own
    /// orderings make the first thread's writes happen before the second's.
    #[test]
    fn a_block_freed_on_one_thread_is_reused_on_another_in_order() {
        let space = space();
        let arena = private(&space);
        let freed = AtomicUsize::new(0);
        let block = layout(64, 8);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // SAFETY: non-zero layout; written within its size, then freed.
                unsafe {
                    let p = arena.alloc(block);
                    p.write_bytes(0xAA, 64);
                    arena.dealloc(p, block);
                    // Relaxed on purpose: this creates no happens-before edge.
                    freed.store(p.addr(), Ordering::Relaxed);
                }
            });
            scope.spawn(|| {
                let mut spins = 0u64;
                let old = loop {
                    match freed.load(Ordering::Relaxed) {
                        0 => {
                            spins += 1;
                            assert!(
                                spins < 100_000_000,
                                "the first thread never freed its block"
                            );
                            std::thread::yield_now();
                        }
                        addr => break addr,
                    }
                };
                // SAFETY: non-zero layout; written and read within its size.
                unsafe {
                    let p = arena.alloc(block);
                    assert_eq!(p.addr(), old, "precondition: the freed block is reused");
                    p.write_bytes(0x55, 64);
                    let bytes = std::slice::from_raw_parts(p, 64);
                    assert!(bytes.iter().all(|&b| b == 0x55));
                    arena.dealloc(p, block);
                }
            });
        });
    }

    /// Two threads allocating, growing, shrinking and freeing small blocks
    /// at once, so that freed bytes keep changing hands between them; every
    /// block must keep exactly what its owner wrote.
    #[test]
    fn two_threads_hand_blocks_back_and_forth() {
        let (rounds, steps) = if cfg!(miri) { (2, 60) } else { (200, 2_000) };
        let mut handovers = 0;
        for _ in 0..rounds {
            let space = space();
            let arena = private(&space);
            // The last thread to get a block at each 8-byte offset.
            let owners: Vec<AtomicU8> = (0..ARENA_LEN / 8).map(|_| AtomicU8::new(0)).collect();
            handovers += std::thread::scope(|scope| {
                let threads: Vec<_> = (1..=2u8)
                    .map(|tag| {
                        let (arena, owners) = (&arena, &owners[..]);
                        scope.spawn(move || churn(arena, owners, tag, steps))
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().unwrap())
                    .sum::<usize>()
            });
        }
        // Precondition of the claim: bytes did change hands between the
        // threads inside the arena (not only in malloc).
        assert!(handovers > 0, "no block ever moved between the threads");
    }

    /// One thread's share of [`two_threads_hand_blocks_back_and_forth`];
    /// returns how many of its blocks the other thread had owned before.
    fn churn(arena: &Arena<'_>, owners: &[AtomicU8], tag: u8, steps: usize) -> usize {
        let check = |p: *mut u8, len: usize, what: &str| {
            // SAFETY: `p` is a live block of at least `len` bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, len) };
            assert!(
                bytes.iter().all(|&b| b == tag),
                "{what}: another thread wrote here"
            );
        };
        let mut handovers = 0;
        let mut note_owner = |p: *mut u8| {
            if let Some(offset) = arena.offset_of(p) {
                let before = owners[offset / 8].swap(tag, Ordering::Relaxed);
                handovers += usize::from(before != 0 && before != tag);
            }
        };
        for i in 0..steps {
            let size = 8 + (i * 7 + usize::from(tag) * 13) % 120;
            let outer = layout(size, 8);
            // SAFETY: non-zero layouts; every block is written and read within
            // its size while live and freed once with its current layout.
            unsafe {
                let a = arena.alloc(outer);
                note_owner(a);
                a.write_bytes(tag, size);
                let b = arena.alloc(layout(16, 16));
                note_owner(b);
                b.write_bytes(tag, 16);
                check(a, size, "first block");
                // Grow the inner block (in place if it is still the last).
                let grown = arena.realloc(b, layout(16, 16), 48);
                grown.add(16).write_bytes(tag, 32);
                check(grown, 48, "grown block");
                arena.dealloc(grown, layout(48, 16));
                if i % 3 == 0 {
                    let shrunk = arena.realloc(a, outer, 8);
                    check(shrunk, 8, "shrunk block");
                    arena.dealloc(shrunk, layout(8, 8));
                } else {
                    check(a, size, "first block, later");
                    arena.dealloc(a, outer);
                }
            }
        }
        handovers
    }
}
