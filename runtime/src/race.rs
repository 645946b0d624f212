//! Happens-before race detection and uninitialised-read tracking.
//!
//! Every engine of every core is one component of a vector clock. An instruction
//! ticks its engine's component when it starts; a semaphore wait joins the clocks
//! of the signals that brought the semaphore to the awaited value (in the order
//! they fired). Each byte of SRAM, PSUM and HBM remembers the epoch of its last
//! writer and of its last reader(s) (FastTrack's representation: one epoch, or a
//! set when engines read it concurrently). Bytes are grouped in 64-byte blocks
//! that stay one record while whole blocks are accessed together (the common
//! case), and split into per-byte records only when an access covers part of a
//! block or readers become concurrent, so checking costs about one record per
//! 64 bytes without losing byte precision. An access that is not ordered after a
//! conflicting earlier access is a race; a read of a byte no one wrote is an
//! uninitialised read.

use std::collections::HashMap;

/// An (engine, clock) pair packed in 32 bits: engine in the top 6 bits, clock below.
pub type Epoch = u32;

const CLOCK_BITS: u32 = 26;
/// Engine slot of the host (inputs and constants): ordered before everything.
const HOST_ENGINE: u32 = 63;
/// Epoch of bytes the host initialised.
pub const HOST: Epoch = (HOST_ENGINE << CLOCK_BITS) | 1;
/// Marks a byte whose readers are in the shared-read table.
const SHARED: Epoch = u32::MAX;

/// Builds an epoch.
pub fn epoch(engine: usize, clock: u32) -> Epoch {
    ((engine as u32) << CLOCK_BITS) | clock
}

/// Engine of an epoch.
pub fn epoch_engine(e: Epoch) -> usize {
    (e >> CLOCK_BITS) as usize
}

/// Clock of an epoch.
pub fn epoch_clock(e: Epoch) -> u32 {
    e & ((1 << CLOCK_BITS) - 1)
}

/// Largest clock an engine may reach (instructions per engine).
pub const MAX_CLOCK: u32 = (1 << CLOCK_BITS) - 1;

/// True when the access with epoch `e` happens before an instruction with clock `vc`.
#[inline]
pub fn happens_before(e: Epoch, vc: &[u32]) -> bool {
    let engine = epoch_engine(e);
    engine == HOST_ENGINE as usize || vc.get(engine).is_some_and(|&c| c >= epoch_clock(e))
}

/// Which memory an access touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mem {
    /// SRAM of a core.
    Sram(usize),
    /// PSUM of a core.
    Psum(usize),
    /// HBM (shared).
    Hbm,
}

/// What two conflicting accesses were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// A read of bytes another engine wrote without ordering.
    ReadAfterWrite,
    /// A write of bytes another engine read without ordering.
    WriteAfterRead,
    /// A write of bytes another engine wrote without ordering.
    WriteAfterWrite,
}

/// A detected race: the earlier access's epoch and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Race {
    /// Epoch of the earlier, unordered access.
    pub earlier: Epoch,
    /// Kind of conflict.
    pub conflict: Conflict,
    /// Memory.
    pub mem: Mem,
    /// First conflicting byte address (flat within the memory).
    pub addr: u64,
}

/// An uninitialised read: the first byte of an access that no one wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uninit {
    /// Memory.
    pub mem: Mem,
    /// Byte address.
    pub addr: u64,
}

const BLOCK_BITS: u32 = 6;
const BLOCK: u64 = 1 << BLOCK_BITS;
/// Block-level write epoch meaning "see the per-byte records".
const MIXED: Epoch = u32::MAX - 1;

/// The epochs of a block that accesses split: runs of bytes with one (write,
/// read) pair each, covering the block in order (`end` exclusive). A block
/// touched a few bytes at a time stays a few runs, not 64 records.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Run {
    end: u8,
    write: Epoch,
    read: Epoch,
}

#[derive(Clone)]
struct Bytes(Vec<Run>);

impl Bytes {
    /// Ensures a run boundary at `pos` (0..=block length); returns the index of
    /// the run starting there.
    fn split(&mut self, pos: u8) -> usize {
        let mut start = 0u8;
        for i in 0..self.0.len() {
            if start == pos {
                return i;
            }
            let run = self.0[i];
            if pos < run.end {
                self.0.insert(i, Run { end: pos, ..run });
                return i + 1;
            }
            start = run.end;
        }
        self.0.len()
    }

    /// Runs `[first, last)` after splitting at `s` and `e`.
    fn range(&mut self, s: u8, e: u8) -> std::ops::Range<usize> {
        let first = self.split(s);
        let last = self.split(e);
        first..last
    }

    /// Merges neighbouring runs with equal epochs.
    fn coalesce(&mut self) {
        self.0.dedup_by(|next, prev| {
            let same = next.write == prev.write && next.read == prev.read;
            if same {
                prev.end = next.end;
            }
            same
        });
    }

    /// The byte offset where run `i` starts.
    fn start(&self, i: usize) -> u8 {
        if i == 0 {
            0
        } else {
            self.0[i - 1].end
        }
    }
}

/// The block records of one memory: dense for SRAM and PSUM (sized by the
/// memory), sparse for HBM (one entry per block ever touched), so the shadow
/// grows with the bytes accessed, never with the span an access pattern covers.
#[derive(Clone)]
enum Blocks {
    Dense(Vec<(Epoch, Epoch)>),
    Sparse(HashMap<u64, Group, BuildFast>),
}

/// Blocks per group of sparse records: 64 KiB of HBM, so a stream of
/// accesses hashes once per group rather than once per block.
const GROUP_BITS: u32 = 10;
/// A group holds its records sorted while it has at most this many.
const GROUP_FEW: usize = 96;

/// The touched blocks' records of one group: few (sorted by block), or all.
#[derive(Clone)]
enum Group {
    Few(Vec<(u16, (Epoch, Epoch))>),
    All(Box<[(Epoch, Epoch)]>),
}

impl Group {
    fn get(&self, i: u16) -> (Epoch, Epoch) {
        match self {
            Group::Few(v) => v.binary_search_by_key(&i, |r| r.0).map_or((0, 0), |k| v[k].1),
            Group::All(all) => all[i as usize],
        }
    }

    /// Sets record `i`, returning the old one.
    fn set(&mut self, i: u16, rec: (Epoch, Epoch)) -> (Epoch, Epoch) {
        match self {
            Group::All(all) => std::mem::replace(&mut all[i as usize], rec),
            Group::Few(v) => match v.binary_search_by_key(&i, |r| r.0) {
                Ok(k) => std::mem::replace(&mut v[k].1, rec),
                Err(k) if v.len() < GROUP_FEW => {
                    // Doubling from one: most groups of a strided pattern hold one record.
                    if v.len() == v.capacity() {
                        v.reserve_exact(v.len().max(1));
                    }
                    v.insert(k, (i, rec));
                    (0, 0)
                }
                Err(_) => {
                    let mut all = vec![(0, 0); 1 << GROUP_BITS].into_boxed_slice();
                    for &(j, r) in v.iter() {
                        all[j as usize] = r;
                    }
                    all[i as usize] = rec;
                    *self = Group::All(all);
                    (0, 0)
                }
            },
        }
    }

    fn footprint_bytes(&self) -> u64 {
        match self {
            Group::Few(v) => v.capacity() as u64 * 12,
            Group::All(all) => all.len() as u64 * 8,
        }
    }
}

/// Group of block `b`, and its index there.
fn group_of(b: u64) -> (u64, u16) {
    (b >> GROUP_BITS, (b & ((1 << GROUP_BITS) - 1)) as u16)
}

/// Shadow of one memory: per 64-byte block one (write, read) epoch pair for the
/// whole block, or [`MIXED`] and per-byte epochs (allocated only for such blocks).
#[derive(Clone)]
struct Cells {
    len: u64,
    blocks: Blocks,
    bytes: HashMap<u64, Bytes, BuildFast>,
    /// Reader sets of whole blocks whose record reads [`SHARED`] (weights read
    /// by several queues at once stay one set per block, not one per byte).
    shared: HashMap<u64, Vec<Epoch>, BuildFast>,
}

impl Cells {
    fn dense(n: u64) -> Cells {
        let blocks = Blocks::Dense(vec![(0, 0); n.div_ceil(BLOCK) as usize]);
        Cells { len: n, blocks, bytes: HashMap::default(), shared: HashMap::default() }
    }

    fn sparse(n: u64) -> Cells {
        Cells {
            len: n,
            blocks: Blocks::Sparse(HashMap::default()),
            bytes: HashMap::default(),
            shared: HashMap::default(),
        }
    }

    fn block(&self, b: u64) -> (Epoch, Epoch) {
        match &self.blocks {
            Blocks::Dense(v) => v[b as usize],
            Blocks::Sparse(m) => {
                let (g, i) = group_of(b);
                m.get(&g).map_or((0, 0), |group| group.get(i))
            }
        }
    }

    /// Sets block `b`'s record; per-byte runs and a block reader set exist
    /// exactly while the record says [`MIXED`] and [`SHARED`], so they are
    /// dropped only when the old record had them.
    fn set_block(&mut self, b: u64, rec: (Epoch, Epoch)) {
        let old = match &mut self.blocks {
            Blocks::Dense(v) => std::mem::replace(&mut v[b as usize], rec),
            Blocks::Sparse(m) => {
                let (g, i) = group_of(b);
                m.entry(g).or_insert_with(|| Group::Few(Vec::new())).set(i, rec)
            }
        };
        if old.0 == MIXED && rec.0 != MIXED {
            self.bytes.remove(&b);
        }
        if old.1 == SHARED && rec.1 != SHARED {
            self.shared.remove(&b);
        }
    }

    /// Switches a uniform block to per-run tracking (a block reader set becomes
    /// each byte's, in `per_byte`); returns its runs.
    fn materialize(&mut self, block: u64, mem: Mem, per_byte: &mut HashMap<(Mem, u64), Vec<Epoch>>) -> &mut Bytes {
        let (w, r) = self.block(block);
        let end = self.block_len(block) as u8;
        if w != MIXED {
            if let Some(readers) = self.shared.remove(&block) {
                for at in block * BLOCK..block * BLOCK + end as u64 {
                    per_byte.insert((mem, at), readers.clone());
                }
            }
            self.set_block(block, (MIXED, 0));
            self.bytes.insert(block, Bytes(vec![Run { end, write: w, read: r }]));
        }
        self.bytes.entry(block).or_insert_with(|| Bytes(vec![Run { end, write: 0, read: 0 }]))
    }

    fn block_len(&self, block: u64) -> u64 {
        (self.len - block * BLOCK).min(BLOCK)
    }
}

/// A fast, deterministic hasher for block indices (SipHash costs more than the
/// check it guards).
type BuildFast = std::hash::BuildHasherDefault<BlockHasher>;

#[derive(Default)]
struct BlockHasher(u64);

impl std::hash::Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Shadow state for every byte of every memory.
pub struct Shadow {
    on_chip: HashMap<Mem, Cells>,
    sram_bytes: usize,
    psum_bytes: usize,
    hbm: Cells,
    shared_reads: HashMap<(Mem, u64), Vec<Epoch>>,
}

impl Shadow {
    /// Shadow for cores with the given memory sizes (allocated on first touch).
    pub fn new(sram_bytes: usize, psum_bytes: usize) -> Shadow {
        Shadow {
            on_chip: HashMap::new(),
            sram_bytes,
            psum_bytes,
            hbm: Cells::sparse(u64::MAX),
            shared_reads: HashMap::new(),
        }
    }

    /// The shadow of `mem` and the shared-reader table.
    fn cells(&mut self, mem: Mem) -> (&mut Cells, &mut HashMap<(Mem, u64), Vec<Epoch>>) {
        let Shadow { on_chip, sram_bytes, psum_bytes, hbm, shared_reads } = self;
        let cells = match mem {
            Mem::Sram(_) => on_chip.entry(mem).or_insert_with(|| Cells::dense(*sram_bytes as u64)),
            Mem::Psum(_) => on_chip.entry(mem).or_insert_with(|| Cells::dense(*psum_bytes as u64)),
            Mem::Hbm => hbm,
        };
        (cells, shared_reads)
    }

    /// Marks bytes as written by the host (program inputs and constants).
    pub fn host_write(&mut self, mem: Mem, addr: u64, len: u64) {
        let (c, shared) = self.cells(mem);
        for_each_block(c, addr, len, |c, block, s, e, full| {
            if full {
                c.set_block(block, (HOST, 0));
            } else {
                let base = block * BLOCK;
                let bytes = c.materialize(block, mem, shared);
                for i in bytes.range((s - base) as u8, (e - base) as u8) {
                    bytes.0[i].write = HOST;
                }
                bytes.coalesce();
            }
        });
    }

    /// Records a read of `len` bytes at `addr` by an instruction with epoch `me` and
    /// clock `vc`. Returns the first race, and the first uninitialised byte.
    pub fn read(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> (Option<Race>, Option<Uninit>) {
        let mut race = None;
        let mut uninit = None;
        let my_engine = epoch_engine(me);
        let (c, shared) = self.cells(mem);
        for_each_block(c, addr, len, |c, block, s, e, full| {
            let (w, r) = c.block(block);
            if full && w != MIXED {
                if w == 0 {
                    uninit.get_or_insert(Uninit { mem, addr: s });
                } else if epoch_engine(w) != my_engine && !happens_before(w, vc) {
                    race.get_or_insert(Race { earlier: w, conflict: Conflict::ReadAfterWrite, mem, addr: s });
                }
                if r == SHARED {
                    let set = c.shared.entry(block).or_default();
                    set.retain(|&e| epoch_engine(e) != my_engine);
                    set.push(me);
                    return;
                }
                if r == 0 || r == me || epoch_engine(r) == my_engine || happens_before(r, vc) {
                    c.set_block(block, (w, me));
                    return;
                }
                // A concurrent reader: the block keeps both in its reader set.
                c.set_block(block, (w, SHARED));
                c.shared.insert(block, vec![r, me]);
                return;
            }
            let base = block * BLOCK;
            let bytes = c.materialize(block, mem, shared);
            for i in bytes.range((s - base) as u8, (e - base) as u8) {
                let at = base + bytes.start(i) as u64;
                let Run { end, write: w, read: r } = bytes.0[i];
                let span = at..base + end as u64;
                if w == 0 {
                    uninit.get_or_insert(Uninit { mem, addr: at });
                } else if epoch_engine(w) != my_engine && !happens_before(w, vc) {
                    race.get_or_insert(Race { earlier: w, conflict: Conflict::ReadAfterWrite, mem, addr: at });
                }
                if r == me {
                    continue;
                }
                if r == SHARED {
                    for at in span {
                        let set = shared.entry((mem, at)).or_default();
                        set.retain(|&e| epoch_engine(e) != my_engine);
                        set.push(me);
                    }
                } else if r == 0 || epoch_engine(r) == my_engine || happens_before(r, vc) {
                    bytes.0[i].read = me;
                } else {
                    bytes.0[i].read = SHARED;
                    for at in span {
                        shared.insert((mem, at), vec![r, me]);
                    }
                }
            }
            bytes.coalesce();
        });
        (race, uninit)
    }

    /// Records a write; returns the first race.
    pub fn write(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> Option<Race> {
        let mut race = None;
        let my_engine = epoch_engine(me);
        let unordered = |e: Epoch| e != 0 && epoch_engine(e) != my_engine && !happens_before(e, vc);
        let (c, shared) = self.cells(mem);
        for_each_block(c, addr, len, |c, block, s, e, full| {
            let (w, r) = c.block(block);
            if full && w != MIXED {
                if w != me && unordered(w) {
                    race.get_or_insert(Race { earlier: w, conflict: Conflict::WriteAfterWrite, mem, addr: s });
                }
                let unordered_reader = if r == SHARED {
                    c.shared.remove(&block).unwrap_or_default().into_iter().find(|&e| unordered(e))
                } else {
                    Some(r).filter(|&e| unordered(e))
                };
                if let Some(e) = unordered_reader {
                    race.get_or_insert(Race { earlier: e, conflict: Conflict::WriteAfterRead, mem, addr: s });
                }
                c.set_block(block, (me, 0));
                return;
            }
            let base = block * BLOCK;
            let bytes = c.materialize(block, mem, shared);
            for i in bytes.range((s - base) as u8, (e - base) as u8) {
                let at = base + bytes.start(i) as u64;
                let Run { end, write: w, read: r } = bytes.0[i];
                if w != me && unordered(w) {
                    race.get_or_insert(Race { earlier: w, conflict: Conflict::WriteAfterWrite, mem, addr: at });
                }
                bytes.0[i].write = me;
                bytes.0[i].read = 0;
                if r == SHARED {
                    for at in at..base + end as u64 {
                        let readers = shared.remove(&(mem, at)).unwrap_or_default();
                        if let Some(&e) = readers.iter().find(|&&e| unordered(e)) {
                            race.get_or_insert(Race { earlier: e, conflict: Conflict::WriteAfterRead, mem, addr: at });
                        }
                    }
                } else if unordered(r) {
                    race.get_or_insert(Race { earlier: r, conflict: Conflict::WriteAfterRead, mem, addr: at });
                }
            }
            bytes.coalesce();
            if full {
                // Every byte now has this write and no reader: the block is uniform again.
                c.set_block(block, (me, 0));
            }
        });
        race
    }

    /// Block reader sets held for `mem` (tests).
    #[cfg(test)]
    fn shadow_sets(&mut self, mem: Mem) -> usize {
        self.cells(mem).0.shared.len()
    }

    /// Bytes of shadow state held (for reports and tests).
    pub fn footprint_bytes(&self) -> u64 {
        let cells = |c: &Cells| {
            let blocks = match &c.blocks {
                Blocks::Dense(v) => v.len() as u64 * 8,
                Blocks::Sparse(m) => m.capacity() as u64 * 40 + m.values().map(Group::footprint_bytes).sum::<u64>(),
            };
            blocks
                + c.bytes.values().map(|b| 32 + b.0.capacity() as u64 * 12).sum::<u64>()
                + c.shared.values().map(|v| 32 + v.capacity() as u64 * 4).sum::<u64>()
        };
        self.on_chip.values().map(cells).sum::<u64>() + cells(&self.hbm)
    }
}

/// Calls `f(cells, block, start, end, covers_whole_block)` for each block that
/// `[start, start + n)` overlaps (addresses past the memory are not visited).
fn for_each_block(c: &mut Cells, start: u64, n: u64, mut f: impl FnMut(&mut Cells, u64, u64, u64, bool)) {
    let end = start.saturating_add(n).min(c.len);
    let mut i = start;
    while i < end {
        let block = i >> BLOCK_BITS;
        let block_end = (block * BLOCK + c.block_len(block)).min(end);
        let full = i == block * BLOCK && block_end - i == c.block_len(block);
        f(c, block, i, block_end, full);
        i = block_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_readers_of_whole_blocks_are_all_checked() {
        let mut s = Shadow::new(256, 64);
        let m = Mem::Sram(0);
        s.host_write(m, 0, 128);
        // Engines 1 and 2 read two whole blocks without ordering between them.
        assert_eq!(s.read(m, 0, 128, epoch(1, 1), &[0, 1, 0]), (None, None));
        assert_eq!(s.read(m, 0, 128, epoch(2, 1), &[0, 0, 1]), (None, None));
        assert_eq!(s.shadow_sets(m), 2, "one reader set per block");
        // A write ordered after engine 1's read only races with engine 2's.
        let race = s.write(m, 0, 64, epoch(0, 1), &[1, 1, 0]);
        assert_eq!(race.map(|r| (r.conflict, r.earlier)), Some((Conflict::WriteAfterRead, epoch(2, 1))));
        // Ordered after both: no race, byte-precise through a partial write.
        assert_eq!(s.write(m, 64, 3, epoch(0, 2), &[2, 1, 1]), None);
        let race = s.write(m, 70, 2, epoch(3, 1), &[0, 1, 0, 1]);
        assert_eq!(race.map(|r| (r.conflict, r.earlier)), Some((Conflict::WriteAfterRead, epoch(2, 1))));
    }

    #[test]
    fn ordered_accesses_do_not_race_and_unordered_ones_do() {
        let mut s = Shadow::new(64, 64);
        let m = Mem::Sram(0);
        // Engine 0 writes at clock 1; engine 1 has seen it (vc[0] = 1).
        assert_eq!(s.write(m, 0, 4, epoch(0, 1), &[1, 0]), None);
        assert_eq!(s.read(m, 0, 4, epoch(1, 1), &[1, 1]), (None, None));
        // Engine 2 has not seen engine 0's write.
        let (race, _) = s.read(m, 0, 4, epoch(2, 1), &[0, 0, 1]);
        assert_eq!(race.map(|r| r.conflict), Some(Conflict::ReadAfterWrite));
        // Engine 0 writes again without seeing engine 1's or 2's reads.
        let race = s.write(m, 0, 4, epoch(0, 2), &[2, 0, 0]);
        assert_eq!(race.map(|r| r.conflict), Some(Conflict::WriteAfterRead));
        // A byte never written is an uninitialised read.
        assert_eq!(s.read(m, 10, 1, epoch(1, 2), &[2, 2]).1, Some(Uninit { mem: m, addr: 10 }));
        // Host-written bytes are ordered before everything.
        s.host_write(Mem::Hbm, 1 << 20, 8);
        assert_eq!(s.read(Mem::Hbm, 1 << 20, 8, epoch(3, 1), &[0, 0, 0, 1]), (None, None));
    }

    #[test]
    fn block_records_keep_byte_precision() {
        let mut s = Shadow::new(1024, 64);
        let m = Mem::Sram(0);
        // Unordered engines writing disjoint whole blocks, and disjoint bytes of one block.
        assert_eq!(s.write(m, 0, 64, epoch(0, 1), &[1, 0, 0]), None);
        assert_eq!(s.write(m, 64, 64, epoch(1, 1), &[0, 1, 0]), None);
        assert_eq!(s.write(m, 130, 3, epoch(0, 2), &[2, 0, 0]), None);
        assert_eq!(s.write(m, 133, 3, epoch(1, 2), &[0, 2, 0]), None);
        // A partial, unordered overlap of engine 0's whole-block write is caught at its first byte.
        let race = s.write(m, 60, 8, epoch(2, 1), &[0, 0, 1]).unwrap();
        assert_eq!((race.conflict, race.addr, epoch_engine(race.earlier)), (Conflict::WriteAfterWrite, 60, 0));
        // Whole-block reads by two unordered engines, then a write ordered after only one of them.
        assert_eq!(s.write(m, 256, 128, epoch(0, 3), &[3, 0, 0]), None);
        assert_eq!(s.read(m, 256, 128, epoch(1, 3), &[3, 3, 0]), (None, None));
        assert_eq!(s.read(m, 256, 128, epoch(2, 2), &[3, 0, 2]), (None, None));
        let race = s.write(m, 300, 4, epoch(0, 4), &[4, 3, 0]).unwrap();
        assert_eq!((race.conflict, epoch_engine(race.earlier)), (Conflict::WriteAfterRead, 2));
        // Ordered after both readers: no race.
        assert_eq!(s.write(m, 320, 64, epoch(0, 5), &[5, 3, 2]), None);
        // Uninitialised bytes inside a partly written block are found precisely.
        assert_eq!(s.read(m, 136, 4, epoch(2, 3), &[2, 2, 3]).1, Some(Uninit { mem: m, addr: 136 }));
    }
}
