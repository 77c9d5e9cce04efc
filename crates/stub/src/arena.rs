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
// to one allocation at a time (reserved with atomic compare-and-swap), so no
// two threads ever access the same bytes without the allocator's ordering.
unsafe impl Sync for Space {}

/// The global allocator of the stub. See the module documentation.
pub struct Arena {
    space: &'static Space,
    /// Offset of the first free byte of the arena.
    used: AtomicUsize,
}

static SPACE: Space = Space(UnsafeCell::new([0; ARENA_LEN]));

impl Arena {
    /// The allocator over the one static arena.
    pub const fn new() -> Arena {
        Arena {
            space: &SPACE,
            used: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.space.0.get() as usize
    }

    /// The arena offset of `ptr`, if it points into the arena.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        (ptr as usize)
            .checked_sub(self.base())
            .filter(|&offset| offset < ARENA_LEN)
    }

    /// Reserves `layout` at the end of the used part, or `None` if it does
    /// not fit.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() > LARGEST_FROM_ARENA {
            return None;
        }
        let base = self.base();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            // The base is page-aligned, so aligning the offset aligns the
            // address for every alignment up to a page; larger ones are
            // rounded up all the same.
            let start = (base + used).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > ARENA_LEN {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // `start..end` now belongs to this caller alone.
                Ok(_) => return Some((base + start) as *mut u8),
                Err(now) => used = now,
            }
        }
    }

    /// Moves the end of the used part from `from` to `to` if nothing was
    /// allocated after the block that ends at `from`.
    fn move_end(&self, from: usize, to: usize) -> bool {
        self.used
            .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Arena {
    fn default() -> Arena {
        Arena::new()
    }
}

// SAFETY: `alloc` returns either a range of the arena reserved by an atomic
// compare-and-swap (so never handed out twice while live), aligned as
// `layout` asks and `layout.size()` long, or memory from `System`. `dealloc`
// and `realloc` tell the two apart by address, give `System` memory back to
// `System` with the layout it was allocated with, and only ever reclaim an
// arena range when it is the last one handed out.
unsafe impl GlobalAlloc for Arena {
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

    // The tests run on private arenas, so that addresses are predictable;
    // the test binary itself allocates through the global arena like the
    // stub does.

    fn private() -> Arena {
        // A page-aligned space just for this test (leaked, like the static one).
        let space: &'static Space = Box::leak(Box::new(Space(UnsafeCell::new([0; ARENA_LEN]))));
        Arena {
            space,
            used: AtomicUsize::new(0),
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn in_arena(arena: &Arena, ptr: *mut u8) -> bool {
        arena.offset_of(ptr).is_some()
    }

    #[test]
    fn small_allocations_are_consecutive_and_aligned() {
        let arena = private();
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
        let arena = private();
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
        let arena = private();
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
        let arena = private();
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
        let arena: &'static Arena = Box::leak(Box::new(private()));
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..200usize {
                        let size = 8 + (i % 5) * 8;
                        // SAFETY: non-zero layout; the block is written
                        // within its size and checked before the thread ends.
                        let p = unsafe { arena.alloc(layout(size, 8)) };
                        // SAFETY: `p` is a live block of `size` bytes.
                        unsafe { p.write_bytes(t, size) };
                        mine.push((p as usize, size));
                    }
                    for &(p, size) in &mine {
                        // SAFETY: still live, never freed.
                        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
                        assert!(bytes.iter().all(|&b| b == t), "another thread wrote here");
                    }
                    mine
                })
            })
            .collect();
        let mut all: Vec<(usize, usize)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        for pair in all.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "blocks overlap");
        }
    }
}
