//! The simulator's memories: per-core SRAM and PSUM, and sparse HBM.
//!
//! Never-written bytes read as `0xff`, which is a NaN in every float dtype (and -1
//! in the integer ones), so a kernel that reads uninitialised memory produces
//! visibly wrong results even when strict checking is off. HBM is held sparsely:
//! 64-byte chunks of 64 KiB pages, whole pages once most of one is written (from
//! 2 MiB slabs backed by huge pages, [`crate::hugepages`]), so memory grows with
//! the bytes written, never with the span of a transfer. A tensor the run knows
//! in advance can instead be a *segment* of its own: an input's bytes are read
//! where the caller holds them (copied only if the program writes them), and an
//! output's buffer is the one handed back at the end, so a large run neither
//! copies its inputs in nor its outputs out.

use std::borrow::Cow;
use std::collections::HashMap;

use jpu_isa::operand::{DmaSide, DmaSpace, Space, Tile};
use jpu_isa::Target;

/// Byte value of never-written memory.
pub const FILL: u8 = 0xff;

const PAGE_BITS: u32 = 16;
const PAGE: usize = 1 << PAGE_BITS;
const CHUNK_BITS: u32 = 6;
const CHUNK: usize = 1 << CHUNK_BITS;
/// A sparse page becomes dense when it would hold this many chunks (a quarter
/// of it: a 16 KiB row written at once starts a page dense).
const DENSE_AT: usize = 256;

/// One 64 KiB page of HBM: the 64-byte chunks written so far, or every byte
/// once many are (strided transfers touch a few chunks of many pages).
enum Page {
    /// Chunks sorted by index.
    Sparse(Vec<(u16, [u8; CHUNK])>),
    /// A page of [`Slabs`].
    Dense(u32),
}

/// Dense pages, allocated [`SLAB_PAGES`] at a time as one huge-page-backed
/// buffer ([`crate::hugepages`]); pages are never given back before the run ends.
#[derive(Default)]
struct Slabs {
    slabs: Vec<Box<crate::hugepages::Block>>,
    pages: u32,
}

/// Dense pages per slab: one huge page.
const SLAB_PAGES: usize = crate::hugepages::HUGE_PAGE / PAGE;

impl Slabs {
    /// A fresh (never-written) page.
    fn claim(&mut self) -> u32 {
        if self.pages as usize == self.slabs.len() * SLAB_PAGES {
            self.slabs.push(crate::hugepages::block(FILL));
        }
        self.pages += 1;
        self.pages - 1
    }

    /// Page `i`'s slab and its bytes there.
    fn place(i: u32) -> (usize, std::ops::Range<usize>) {
        let at = i as usize % SLAB_PAGES * PAGE;
        (i as usize / SLAB_PAGES, at..at + PAGE)
    }

    fn page(&self, i: u32) -> &[u8] {
        let (slab, bytes) = Slabs::place(i);
        &self.slabs[slab].0[bytes]
    }

    fn page_mut(&mut self, i: u32) -> &mut [u8] {
        let (slab, bytes) = Slabs::place(i);
        &mut self.slabs[slab].0[bytes]
    }
}

impl Page {
    fn read(&self, dense: &Slabs, off: usize, out: &mut [u8]) {
        match self {
            Page::Dense(i) => out.copy_from_slice(&dense.page(*i)[off..off + out.len()]),
            Page::Sparse(chunks) => {
                for (at, piece) in chunk_pieces(off, out.len()) {
                    let dst = &mut out[at - off..at - off + piece];
                    match chunks.binary_search_by_key(&((at >> CHUNK_BITS) as u16), |c| c.0) {
                        Ok(k) => dst.copy_from_slice(&chunks[k].1[at & (CHUNK - 1)..][..piece]),
                        Err(_) => dst.fill(FILL),
                    }
                }
            }
        }
    }

    fn write(&mut self, dense: &mut Slabs, off: usize, data: &[u8]) {
        let mut new = 0;
        if let Page::Sparse(chunks) = self {
            let first = off >> CHUNK_BITS;
            let last = (off + data.len() - 1) >> CHUNK_BITS;
            new = (first..=last).filter(|c| chunks.binary_search_by_key(&(*c as u16), |c| c.0).is_err()).count();
            if chunks.len() + new >= DENSE_AT {
                let i = dense.claim();
                let bytes = dense.page_mut(i);
                for (c, chunk) in chunks.iter() {
                    let at = (*c as usize) << CHUNK_BITS;
                    bytes[at..at + CHUNK].copy_from_slice(chunk);
                }
                *self = Page::Dense(i);
            }
        }
        match self {
            Page::Dense(i) => dense.page_mut(*i)[off..off + data.len()].copy_from_slice(data),
            Page::Sparse(chunks) => {
                // Exact growth: most sparse pages hold one or two chunks.
                chunks.reserve_exact(new);
                for (at, piece) in chunk_pieces(off, data.len()) {
                    let c = (at >> CHUNK_BITS) as u16;
                    let k = chunks.binary_search_by_key(&c, |c| c.0).unwrap_or_else(|k| {
                        chunks.insert(k, (c, [FILL; CHUNK]));
                        k
                    });
                    chunks[k].1[at & (CHUNK - 1)..][..piece].copy_from_slice(&data[at - off..at - off + piece]);
                }
            }
        }
    }

    fn resident_bytes(&self) -> u64 {
        match self {
            Page::Dense(_) => 0,
            Page::Sparse(chunks) => (chunks.len() * CHUNK) as u64,
        }
    }
}

/// The pieces of `[off, off + len)` that fall in one chunk each: (start, length).
fn chunk_pieces(off: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let end = off + len;
    std::iter::successors(Some(off).filter(|_| len > 0), move |&at| {
        let next = (at | (CHUNK - 1)) + 1;
        (next < end).then_some(next)
    })
    .map(move |at| (at, ((at | (CHUNK - 1)) + 1).min(end) - at))
}

/// Sparse HBM: memory grows with the bytes written, not with their span.
#[derive(Default)]
pub struct Hbm<'a> {
    pages: HashMap<u64, Page>,
    dense: Slabs,
    /// Whole tensors held in one piece, sorted by address and disjoint.
    segments: Vec<Segment<'a>>,
}

/// The bytes of `[addr, addr + bytes.len())`.
struct Segment<'a> {
    addr: u64,
    bytes: Cow<'a, [u8]>,
    /// For a fresh segment, one bit per 64-byte chunk, set once the chunk is
    /// written: its other chunks are zero pages the host never touched, and
    /// read as [`FILL`].
    written: Option<Vec<u64>>,
}

impl Segment<'_> {
    fn end(&self) -> u64 {
        self.addr + self.bytes.len() as u64
    }

    /// The byte range of chunk `c`.
    fn chunk(&self, c: usize) -> std::ops::Range<usize> {
        c * CHUNK..((c + 1) * CHUNK).min(self.bytes.len())
    }

    /// Whether chunk `c` holds written bytes (every chunk of a segment that is
    /// not fresh does).
    fn is_written(&self, c: usize) -> bool {
        self.written.as_ref().is_none_or(|bits| bits[c / 64] >> (c % 64) & 1 == 1)
    }

    /// Calls `f` with each never-written chunk meeting `[from, from + len)`.
    fn each_unwritten(&self, from: usize, len: usize, mut f: impl FnMut(std::ops::Range<usize>)) {
        let Some(bits) = &self.written else { return };
        let (mut c, end) = (from / CHUNK, (from + len).div_ceil(CHUNK));
        while c < end {
            // A word of written chunks at once.
            if c % 64 == 0 && bits[c / 64] == u64::MAX {
                c += 64;
                continue;
            }
            if !self.is_written(c) {
                f(self.chunk(c));
            }
            c += 1;
        }
    }

    fn read(&self, from: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.bytes[from..from + out.len()]);
        self.each_unwritten(from, out.len(), |r| {
            let (a, b) = (r.start.max(from), r.end.min(from + out.len()));
            out[a - from..b - from].fill(FILL);
        });
    }

    fn write(&mut self, from: usize, data: &[u8]) {
        let end = from + data.len();
        let (first, last) = (from / CHUNK, (end - 1) / CHUNK);
        // Only the end chunks can be written in part: a chunk written for the
        // first time holds FILL outside the write.
        let partial = [first, last].map(|c| {
            let chunk = self.chunk(c);
            (!self.is_written(c) && (chunk.start < from || chunk.end > end)).then_some(chunk)
        });
        let bytes = self.bytes.to_mut();
        partial.into_iter().flatten().for_each(|chunk| bytes[chunk].fill(FILL));
        bytes[from..end].copy_from_slice(data);
        if let Some(bits) = &mut self.written {
            set_bits(bits, first, last + 1);
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut unwritten = Vec::new();
        self.each_unwritten(0, self.bytes.len(), |r| unwritten.push(r));
        let mut bytes = self.bytes.into_owned();
        for r in unwritten {
            bytes[r].fill(FILL);
        }
        bytes
    }
}

/// Sets bits `[lo, hi)` of `bits`, a word at a time.
fn set_bits(bits: &mut [u64], lo: usize, hi: usize) {
    let mut c = lo;
    while c < hi {
        let (word, bit) = (c / 64, c % 64);
        let n = (64 - bit).min(hi - c);
        bits[word] |= (u64::MAX >> (64 - n)) << bit;
        c += n;
    }
}

impl<'a> Hbm<'a> {
    /// Makes `bytes` the contents of `[addr, addr + bytes.len())`, held as they
    /// are (a borrowed input is copied the first time the program writes into
    /// it). Refused (false) for an empty range or one that meets a segment or a
    /// byte written before: then the caller writes the bytes instead.
    pub fn adopt(&mut self, addr: u64, bytes: Cow<'a, [u8]>) -> bool {
        self.insert(Segment { addr, bytes, written: None })
    }

    /// Makes `[addr, addr + len)` a segment of never-written bytes (an output
    /// handed back by [`Hbm::take`]), whose host pages are touched only where
    /// the program writes. Refused (false) as [`Hbm::adopt`] is.
    pub fn adopt_fresh(&mut self, addr: u64, len: usize) -> bool {
        let written = Some(vec![0u64; len.div_ceil(CHUNK).div_ceil(64)]);
        self.insert(Segment { addr, bytes: Cow::Owned(crate::hugepages::zeroed(len)), written })
    }

    fn insert(&mut self, segment: Segment<'a>) -> bool {
        let (addr, len) = (segment.addr, segment.bytes.len() as u64);
        let Some(end) = addr.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        let at = self.segments.partition_point(|s| s.end() <= addr);
        let meets_segment = self.segments.get(at).is_some_and(|s| s.addr < end);
        let meets_page =
            !self.pages.is_empty() && (addr >> PAGE_BITS..=(end - 1) >> PAGE_BITS).any(|p| self.pages.contains_key(&p));
        if meets_segment || meets_page {
            return false;
        }
        self.segments.insert(at, segment);
        true
    }

    /// The bytes of a segment adopted at `addr` with `len` bytes, removed from
    /// HBM (none if there is no such segment).
    pub fn take(&mut self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let at = self.segments.iter().position(|s| s.addr == addr && s.bytes.len() == len)?;
        Some(self.segments.remove(at).into_bytes())
    }

    /// The first piece of `[addr, addr + len)`: its length, and the segment
    /// holding it (none: the pages do).
    fn piece(&self, addr: u64, len: usize) -> (usize, Option<usize>) {
        let at = self.segments.partition_point(|s| s.end() <= addr);
        match self.segments.get(at) {
            Some(s) if s.addr <= addr => (len.min((s.end() - addr) as usize), Some(at)),
            Some(s) => (len.min((s.addr - addr).try_into().unwrap_or(usize::MAX)), None),
            None => (len, None),
        }
    }

    /// Copies `out.len()` bytes starting at `addr` into `out`.
    pub fn read(&self, mut addr: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let (n, segment) = self.piece(addr, out.len() - done);
            let dst = &mut out[done..done + n];
            match segment {
                Some(i) => {
                    let s = &self.segments[i];
                    s.read((addr - s.addr) as usize, dst);
                }
                None => self.read_pages(addr, dst),
            }
            done += n;
            addr += n as u64;
        }
    }

    /// Writes `data` starting at `addr`.
    pub fn write(&mut self, mut addr: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let (n, segment) = self.piece(addr, data.len() - done);
            let src = &data[done..done + n];
            match segment {
                Some(i) => {
                    let s = &mut self.segments[i];
                    s.write((addr - s.addr) as usize, src);
                }
                None => self.write_pages(addr, src),
            }
            done += n;
            addr += n as u64;
        }
    }

    fn read_pages(&self, mut addr: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let (index, off) = (addr >> PAGE_BITS, (addr as usize) & (PAGE - 1));
            let n = (PAGE - off).min(out.len() - done);
            match self.pages.get(&index) {
                Some(p) => p.read(&self.dense, off, &mut out[done..done + n]),
                None => out[done..done + n].fill(FILL),
            }
            done += n;
            addr += n as u64;
        }
    }

    fn write_pages(&mut self, mut addr: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let (index, off) = (addr >> PAGE_BITS, (addr as usize) & (PAGE - 1));
            let n = (PAGE - off).min(data.len() - done);
            let dense = &mut self.dense;
            let page = self.pages.entry(index).or_insert_with(|| {
                // A write of most of a page starts it dense.
                if n >= DENSE_AT * CHUNK {
                    Page::Dense(dense.claim())
                } else {
                    Page::Sparse(Vec::new())
                }
            });
            page.write(dense, off, &data[done..done + n]);
            done += n;
            addr += n as u64;
        }
    }

    /// Bytes of HBM the simulator holds (64-byte chunks of sparse pages, the
    /// slabs of dense pages, the segments it owns).
    pub fn resident_bytes(&self) -> u64 {
        let dense = (self.dense.slabs.len() * SLAB_PAGES * PAGE) as u64;
        let owned = self.segments.iter().filter(|s| matches!(s.bytes, Cow::Owned(_))).map(|s| s.bytes.len() as u64);
        dense + owned.sum::<u64>() + self.pages.values().map(Page::resident_bytes).sum::<u64>()
    }
}

/// One core's on-chip memories.
#[derive(Clone)]
pub struct CoreMemory {
    /// SRAM, partition-major: byte `p * sram_partition_bytes + offset`.
    pub sram: Vec<u8>,
    /// PSUM, partition-major.
    pub psum: Vec<u8>,
    /// Bytes per SRAM partition.
    pub sram_partition_bytes: usize,
    /// Bytes per PSUM partition.
    pub psum_partition_bytes: usize,
}

impl CoreMemory {
    /// Fresh (never-written) memories for `target`.
    pub fn new(target: &Target) -> CoreMemory {
        let sp = target.sram.partition_bytes as usize;
        let pp = target.psum.partition_bytes as usize;
        CoreMemory {
            sram: crate::hugepages::filled(sp * target.sram.partitions as usize, FILL),
            psum: crate::hugepages::filled(pp * target.psum.partitions as usize, FILL),
            sram_partition_bytes: sp,
            psum_partition_bytes: pp,
        }
    }

    /// The memory of `space` and its partition size.
    pub fn space(&self, space: Space) -> (&[u8], usize) {
        match space {
            Space::Sram => (&self.sram, self.sram_partition_bytes),
            Space::Psum => (&self.psum, self.psum_partition_bytes),
        }
    }

    /// Mutable access to the memory of `space` and its partition size.
    pub fn space_mut(&mut self, space: Space) -> (&mut [u8], usize) {
        match space {
            Space::Sram => (&mut self.sram, self.sram_partition_bytes),
            Space::Psum => (&mut self.psum, self.psum_partition_bytes),
        }
    }
}

/// Byte offsets (relative to the tile's `offset`) of each element of a tile's access
/// pattern, in pattern order.
pub fn tile_element_offsets(tile: &Tile) -> Vec<i64> {
    let size = tile.dtype.size_bytes() as i64;
    let mut out = vec![0i64];
    for d in tile.dims() {
        let mut next = Vec::with_capacity(out.len() * d.count as usize);
        for &base in &out {
            for i in 0..d.count as i64 {
                next.push(base + i * d.stride as i64 * size);
            }
        }
        out = next;
    }
    out
}

/// Absolute byte addresses (in the flat partition-major memory) of every element
/// of a tile, partition by partition.
pub fn tile_addresses(tile: &Tile, partition_bytes: usize) -> impl Iterator<Item = usize> + '_ {
    let offsets = tile_element_offsets(tile);
    let base = tile.offset as i64;
    (tile.part_start as usize..tile.part_start as usize + tile.part_count as usize).flat_map(move |p| {
        let row = (p * partition_bytes) as i64 + base;
        offsets.clone().into_iter().map(move |o| (row + o) as usize)
    })
}

/// Contiguous byte runs `(address, length)` of one DMA side, in element order.
pub fn dma_runs(side: &DmaSide, elem_bytes: u64) -> Vec<(u64, u64)> {
    let run_elems = side.run_elems(elem_bytes);
    let run_len = run_elems * elem_bytes;
    // Dims inside the run are merged; iterate the rest as an odometer.
    let dims = side.dims();
    let mut inner = 1u64;
    let mut split = dims.len();
    while split > 0 && inner < run_elems {
        inner *= dims[split - 1].count as u64;
        split -= 1;
    }
    let outer = &dims[..split];
    let mut runs = Vec::new();
    let total: u64 = outer.iter().map(|d| d.count as u64).product();
    let mut idx = vec![0u32; outer.len()];
    for _ in 0..total {
        let mut addr = side.addr as i128;
        for (d, &i) in outer.iter().zip(&idx) {
            addr += i as i128 * d.stride as i128;
        }
        match runs.last_mut() {
            Some((a, l)) if *a + *l == addr as u64 => *l += run_len,
            _ => runs.push((addr as u64, run_len)),
        }
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < outer[k].count {
                break;
            }
            idx[k] = 0;
        }
    }
    runs
}

/// Flat SRAM byte address of a DMA side's address (SRAM sides are flat already).
pub fn is_sram(side: &DmaSide) -> bool {
    side.space == DmaSpace::Sram
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpu_isa::operand::DmaDim;

    #[test]
    fn hbm_is_sparse_and_page_crossing() {
        let mut h = Hbm::default();
        h.write((1 << 40) - 3, &[1, 2, 3, 4, 5, 6]);
        let mut out = [0u8; 8];
        h.read((1 << 40) - 4, &mut out);
        assert_eq!(out, [FILL, 1, 2, 3, 4, 5, 6, FILL]);
        assert_eq!(h.resident_bytes(), 2 * CHUNK as u64);
        // A strided pattern holds its chunks only; a page written mostly becomes dense.
        for i in 0..1000u64 {
            h.write(i << 20, &[7]);
        }
        assert_eq!(h.resident_bytes(), 1002 * CHUNK as u64);
        // Dense pages come a slab (one huge page) at a time.
        h.write(1 << 50, &[9; 40000]);
        let slab = (SLAB_PAGES * PAGE) as u64;
        assert_eq!(h.resident_bytes(), 1002 * CHUNK as u64 + slab);
        h.write(1 << 45, &[8; PAGE]);
        assert_eq!(h.resident_bytes(), 1002 * CHUNK as u64 + slab);
        let mut out = [0u8; 3];
        h.read((1 << 50) + 39999, &mut out);
        assert_eq!(out, [9, FILL, FILL]);
        h.read((1 << 45) + PAGE as u64 - 1, &mut out);
        assert_eq!(out, [8, FILL, FILL]);
    }

    #[test]
    fn a_quarter_page_written_at_once_starts_dense() {
        let mut h = Hbm::default();
        let quarter = (DENSE_AT * CHUNK) as u64;
        h.write(0, &[1; (DENSE_AT - 1) * CHUNK]);
        assert!(matches!(h.pages[&0], Page::Sparse(_)));
        h.write(PAGE as u64, &[2; DENSE_AT * CHUNK]);
        assert!(matches!(h.pages[&1], Page::Dense(_)));
        // The sparse page turns dense when a write takes it to a quarter.
        h.write(quarter, &[3]);
        assert!(matches!(h.pages[&0], Page::Dense(_)));
        let mut out = [0u8; 3];
        h.read(quarter - CHUNK as u64 - 1, &mut out);
        assert_eq!(out, [1, FILL, FILL]);
        h.read(quarter - 1, &mut out);
        assert_eq!(out, [FILL, 3, FILL]);
    }

    #[test]
    fn segments_hold_tensors_in_one_piece() {
        let input = vec![1u8; 100];
        let mut h = Hbm::default();
        assert!(h.adopt(1000, Cow::Borrowed(&input)));
        assert!(h.adopt(1200, Cow::Owned(vec![FILL; 50])));
        // Refused: empty, overlapping a segment, or over bytes written before.
        assert!(!h.adopt(0, Cow::Owned(Vec::new())));
        assert!(!h.adopt(1099, Cow::Owned(vec![0; 2])));
        h.write(1 << 20, &[5]);
        assert!(!h.adopt((1 << 20) - 10, Cow::Owned(vec![0; 20])));
        // Reads and writes cross segments and the pages between them.
        let mut out = [0u8; 6];
        h.read(1097, &mut out);
        assert_eq!(out, [1, 1, 1, FILL, FILL, FILL]);
        h.write(1098, &[7; 104]);
        assert_eq!(input, vec![1u8; 100], "the caller's bytes are never written");
        h.read(1096, &mut out);
        assert_eq!(out, [1, 1, 7, 7, 7, 7]);
        h.read(1199, &mut out);
        assert_eq!(out, [7, 7, 7, FILL, FILL, FILL]);
        assert_eq!(h.resident_bytes(), 50 + 100 + 2 * CHUNK as u64 + CHUNK as u64);
        // A fresh segment reads as never written until it is, chunk by chunk.
        const F: u64 = 1 << 30;
        assert!(h.adopt_fresh(F, 200));
        h.write(F + 70, &[3; 4]);
        let mut fresh = [0u8; 8];
        h.read(F + 66, &mut fresh);
        assert_eq!(fresh, [FILL, FILL, FILL, FILL, 3, 3, 3, 3]);
        h.write(F + 192, &[4; 8]);
        let whole = h.take(F, 200).unwrap();
        assert!(whole[..70].iter().chain(&whole[74..192]).all(|&b| b == FILL));
        assert_eq!((&whole[70..74], &whole[192..]), (&[3u8; 4][..], &[4u8; 8][..]));
        // A write over many 64-chunk words, starting and ending inside chunks.
        assert!(h.adopt_fresh(2 * F, 10_000));
        h.write(2 * F + 100, &[6; 9000]);
        let long = h.take(2 * F, 10_000).unwrap();
        assert!(long[..100].iter().chain(&long[9100..]).all(|&b| b == FILL));
        assert!(long[100..9100].iter().all(|&b| b == 6));
        // The owned output comes back whole; what remains reads as before.
        let taken = h.take(1200, 50).unwrap();
        assert_eq!(&taken[..3], &[7, 7, FILL]);
        assert!(h.take(1200, 50).is_none());
        h.read(1199, &mut out);
        assert_eq!(out, [7, FILL, FILL, FILL, FILL, FILL]);
    }

    #[test]
    fn dma_runs_merge_contiguous_dims() {
        let side = DmaSide::new(
            DmaSpace::Sram,
            0x10,
            &[DmaDim { count: 3, stride: 1000 }, DmaDim { count: 2, stride: 8 }, DmaDim { count: 4, stride: 2 }],
        );
        assert_eq!(dma_runs(&side, 2), vec![(0x10, 16), (0x10 + 1000, 16), (0x10 + 2000, 16)]);
        let reversed = DmaSide::new(DmaSpace::Hbm, 100, &[DmaDim { count: 3, stride: -4 }]);
        assert_eq!(dma_runs(&reversed, 4), vec![(100, 4), (96, 4), (92, 4)]);
    }
}
