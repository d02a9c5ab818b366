//! A global allocator for Signet's memory test (`tests/memory.rs`).
//!
//! It wraps the system allocator and, on every deallocation and every
//! reallocation, scans the block being freed for registered byte strings
//! (a canary key's PKCS#8, seed, private scalar, data keys, KEKs). A hit
//! means key material was left in memory the process gave back unwiped.
//!
//! A crate of its own because a `#[global_allocator]` needs `unsafe`, and
//! Signet forbids `unsafe_code` in every one of its targets.
//!
//! Rules the hooks keep: they never allocate (they run inside the
//! allocator), and they touch only fixed-size statics. Every reallocation
//! moves the block (allocate, copy, scan the old block, free it), so a
//! buffer that grows is always seen freed, whatever the system allocator
//! would have done in place. Only memory allocated through Rust's global
//! allocator is seen: AWS-LC's C heap is not (it cleanses what it frees).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
};

/// The most byte strings that can be registered.
pub const SLOTS: usize = 64;
/// The longest byte string that can be registered.
pub const MAX_LEN: usize = 64;
/// The most hits recorded in detail (all are counted).
pub const MAX_HITS: usize = 64;

/// The allocator: `#[global_allocator] static A: ScanningAllocator = ScanningAllocator;`
pub struct ScanningAllocator;

struct Slot {
    // Written once while `ready` is false, read only after it is true.
    bytes: [AtomicU8x; MAX_LEN],
    len: AtomicUsize,
    ready: AtomicBool,
}

/// A byte stored atomically, so the statics need no `unsafe` to share.
type AtomicU8x = std::sync::atomic::AtomicU8;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    bytes: [const { AtomicU8x::new(0) }; MAX_LEN],
    len: AtomicUsize::new(0),
    ready: AtomicBool::new(false),
};

static SLOTS_USED: AtomicUsize = AtomicUsize::new(0);
static TABLE: [Slot; SLOTS] = [EMPTY_SLOT; SLOTS];
static ENABLED: AtomicBool = AtomicBool::new(false);
static HIT_COUNT: AtomicUsize = AtomicUsize::new(0);
/// (slot index + 1, block size) per recorded hit; 0 = empty.
static HITS: [(AtomicUsize, AtomicUsize); MAX_HITS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_HITS];

/// One freed block that held a registered byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The slot [`register`] returned for the string.
    pub slot: usize,
    /// The size of the freed block.
    pub block: usize,
}

/// Registers `bytes` (16 to [`MAX_LEN`] bytes) to look for; returns its
/// slot, or `None` when the table is full or the length is out of range.
/// Does not allocate.
pub fn register(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 16 || bytes.len() > MAX_LEN {
        return None;
    }
    // Registered already (a data key seen at wrap and again at unwrap).
    let used = SLOTS_USED.load(Ordering::Acquire).min(SLOTS);
    for (i, s) in TABLE[..used].iter().enumerate() {
        if s.ready.load(Ordering::Acquire)
            && s.len.load(Ordering::Relaxed) == bytes.len()
            && s.bytes
                .iter()
                .zip(bytes)
                .all(|(a, b)| a.load(Ordering::Relaxed) == *b)
        {
            return Some(i);
        }
    }
    let slot = SLOTS_USED.fetch_add(1, Ordering::SeqCst);
    if slot >= SLOTS {
        return None;
    }
    let s = &TABLE[slot];
    for (cell, b) in s.bytes.iter().zip(bytes) {
        cell.store(*b, Ordering::Relaxed);
    }
    s.len.store(bytes.len(), Ordering::Relaxed);
    s.ready.store(true, Ordering::Release);
    Some(slot)
}

/// Turns scanning on or off (off at start).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// How many freed blocks held a registered string since the last [`reset`].
pub fn hit_count() -> usize {
    HIT_COUNT.load(Ordering::SeqCst)
}

/// The recorded hits (up to [`MAX_HITS`]). Allocates: call with scanning
/// off, or accept that the result's own buffers are scanned.
pub fn hits() -> Vec<Hit> {
    HITS.iter()
        .filter_map(|(slot, block)| {
            let slot = slot.load(Ordering::SeqCst);
            (slot != 0).then(|| Hit {
                slot: slot - 1,
                block: block.load(Ordering::SeqCst),
            })
        })
        .collect()
}

/// Forgets every hit.
pub fn reset() {
    for (slot, block) in &HITS {
        slot.store(0, Ordering::SeqCst);
        block.store(0, Ordering::SeqCst);
    }
    HIT_COUNT.store(0, Ordering::SeqCst);
}

fn scan(block: &[u8]) {
    let used = SLOTS_USED.load(Ordering::Acquire).min(SLOTS);
    for (i, s) in TABLE[..used].iter().enumerate() {
        if !s.ready.load(Ordering::Acquire) {
            continue;
        }
        let len = s.len.load(Ordering::Relaxed);
        if block.len() < len {
            continue;
        }
        let first = s.bytes[0].load(Ordering::Relaxed);
        let found = block.windows(len).any(|w| {
            w[0] == first
                && w.iter()
                    .zip(&s.bytes[..len])
                    .all(|(a, b)| *a == b.load(Ordering::Relaxed))
        });
        if found {
            let n = HIT_COUNT.fetch_add(1, Ordering::SeqCst);
            if n < MAX_HITS {
                HITS[n].1.store(block.len(), Ordering::SeqCst);
                HITS[n].0.store(i + 1, Ordering::SeqCst);
            }
        }
    }
}

// SAFETY: every method forwards to `System` with the layout it was given;
// `realloc` allocates the new block with the same alignment, copies the
// smaller of the two sizes, and frees the old block with its own layout,
// which is what the `GlobalAlloc` contract asks of a moving realloc. The
// scans read only `layout.size()` bytes of a block the caller still owns
// (it is freed right after), and never allocate.
unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ENABLED.load(Ordering::Relaxed) && layout.size() >= 16 {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until
            // the `dealloc` below.
            scan(unsafe { std::slice::from_raw_parts(ptr, layout.size()) });
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid for this
        // alignment (the `realloc` contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block of a valid, non-zero-size layout.
        let new = unsafe { System.alloc(new_layout) };
        if new.is_null() {
            return new; // the old block stays valid, as `realloc` requires
        }
        // SAFETY: both blocks are live, distinct, and at least this long.
        unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        // SAFETY: the old block with its own layout, freed (and scanned) once.
        unsafe { self.dealloc(ptr, layout) };
        new
    }
}
