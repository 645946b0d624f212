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
const BLOCK: usize = 1 << BLOCK_BITS;
/// Block-level write epoch meaning "see the per-byte arrays".
const MIXED: Epoch = u32::MAX - 1;

/// Shadow of one memory (or HBM page): per 64-byte block, either one write and
/// one read epoch for the whole block, or [`MIXED`] and per-byte epochs.
#[derive(Clone)]
struct Cells {
    write: Vec<Epoch>,
    read: Vec<Epoch>,
    block_write: Vec<Epoch>,
    block_read: Vec<Epoch>,
}

impl Cells {
    fn new(n: usize) -> Cells {
        let blocks = n.div_ceil(BLOCK);
        Cells { write: vec![0; n], read: vec![0; n], block_write: vec![0; blocks], block_read: vec![0; blocks] }
    }

    /// Switches a uniform block to per-byte tracking.
    fn materialize(&mut self, block: usize) {
        let w = self.block_write[block];
        if w == MIXED {
            return;
        }
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.write.len());
        self.write[start..end].fill(w);
        self.read[start..end].fill(self.block_read[block]);
        self.block_write[block] = MIXED;
    }

    fn block_len(&self, block: usize) -> usize {
        (self.write.len() - block * BLOCK).min(BLOCK)
    }
}

const HBM_PAGE_BITS: u32 = 16;

/// Shadow state for every byte of every memory.
pub struct Shadow {
    on_chip: HashMap<Mem, Cells>,
    sram_bytes: usize,
    psum_bytes: usize,
    hbm: HashMap<u64, Cells>,
    shared_reads: HashMap<(Mem, u64), Vec<Epoch>>,
}

impl Shadow {
    /// Shadow for cores with the given memory sizes (allocated on first touch).
    pub fn new(sram_bytes: usize, psum_bytes: usize) -> Shadow {
        Shadow { on_chip: HashMap::new(), sram_bytes, psum_bytes, hbm: HashMap::new(), shared_reads: HashMap::new() }
    }

    /// Calls `f(cells, index, len, addr)` for each piece of `[addr, addr + len)`
    /// that lies in one shadow array (one lookup per piece, not per byte).
    fn for_each_piece(
        &mut self,
        mem: Mem,
        addr: u64,
        len: u64,
        mut f: impl FnMut(&mut Cells, &mut HashMap<(Mem, u64), Vec<Epoch>>, usize, usize, u64),
    ) {
        let Shadow { on_chip, sram_bytes, psum_bytes, hbm, shared_reads } = self;
        match mem {
            Mem::Sram(_) | Mem::Psum(_) => {
                let n = if matches!(mem, Mem::Sram(_)) { *sram_bytes } else { *psum_bytes };
                let cells = on_chip.entry(mem).or_insert_with(|| Cells::new(n));
                f(cells, shared_reads, addr as usize, len as usize, addr);
            }
            Mem::Hbm => {
                let page_size = 1u64 << HBM_PAGE_BITS;
                let mut at = addr;
                let end = addr + len;
                while at < end {
                    let page = at >> HBM_PAGE_BITS;
                    let off = at & (page_size - 1);
                    let n = (page_size - off).min(end - at);
                    let cells = hbm.entry(page).or_insert_with(|| Cells::new(page_size as usize));
                    f(cells, shared_reads, off as usize, n as usize, at);
                    at += n;
                }
            }
        }
    }

    /// Marks bytes as written by the host (program inputs and constants).
    pub fn host_write(&mut self, mem: Mem, addr: u64, len: u64) {
        self.for_each_piece(mem, addr, len, |c, _, start, n, _| {
            for_each_block(c, start, n, |c, block, s, e, full| {
                if full {
                    c.block_write[block] = HOST;
                    c.block_read[block] = 0;
                } else {
                    c.materialize(block);
                    c.write[s..e].fill(HOST);
                }
            });
        });
    }

    /// Records a read of `len` bytes at `addr` by an instruction with epoch `me` and
    /// clock `vc`. Returns the first race, and the first uninitialised byte.
    pub fn read(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> (Option<Race>, Option<Uninit>) {
        let mut race = None;
        let mut uninit = None;
        let my_engine = epoch_engine(me);
        self.for_each_piece(mem, addr, len, |c, shared, start, n, base| {
            let at = |i: usize| base + (i - start) as u64;
            for_each_block(c, start, n, |c, block, s, e, full| {
                let w = c.block_write[block];
                if full && w != MIXED {
                    let r = c.block_read[block];
                    if w == 0 {
                        uninit.get_or_insert(Uninit { mem, addr: at(s) });
                    } else if epoch_engine(w) != my_engine && !happens_before(w, vc) {
                        race.get_or_insert(Race { earlier: w, conflict: Conflict::ReadAfterWrite, mem, addr: at(s) });
                    }
                    if r == 0 || r == me || epoch_engine(r) == my_engine || happens_before(r, vc) {
                        c.block_read[block] = me;
                        return;
                    }
                }
                c.materialize(block);
                for i in s..e {
                    let w = c.write[i];
                    if w == 0 {
                        uninit.get_or_insert(Uninit { mem, addr: at(i) });
                    } else if epoch_engine(w) != my_engine && !happens_before(w, vc) {
                        race.get_or_insert(Race { earlier: w, conflict: Conflict::ReadAfterWrite, mem, addr: at(i) });
                    }
                    let r = c.read[i];
                    if r == me {
                        continue;
                    }
                    if r == SHARED {
                        let set = shared.entry((mem, at(i))).or_default();
                        set.retain(|&e| epoch_engine(e) != my_engine);
                        set.push(me);
                    } else if r == 0 || epoch_engine(r) == my_engine || happens_before(r, vc) {
                        c.read[i] = me;
                    } else {
                        c.read[i] = SHARED;
                        shared.insert((mem, at(i)), vec![r, me]);
                    }
                }
            });
        });
        (race, uninit)
    }

    /// Records a write; returns the first race.
    pub fn write(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> Option<Race> {
        let mut race = None;
        let my_engine = epoch_engine(me);
        self.for_each_piece(mem, addr, len, |c, shared, start, n, base| {
            let at = |i: usize| base + (i - start) as u64;
            for_each_block(c, start, n, |c, block, s, e, full| {
                let w = c.block_write[block];
                if full && w != MIXED {
                    let r = c.block_read[block];
                    if w != 0 && w != me && epoch_engine(w) != my_engine && !happens_before(w, vc) {
                        race.get_or_insert(Race { earlier: w, conflict: Conflict::WriteAfterWrite, mem, addr: at(s) });
                    }
                    if r != 0 && epoch_engine(r) != my_engine && !happens_before(r, vc) {
                        race.get_or_insert(Race { earlier: r, conflict: Conflict::WriteAfterRead, mem, addr: at(s) });
                    }
                    c.block_write[block] = me;
                    c.block_read[block] = 0;
                    return;
                }
                c.materialize(block);
                for i in s..e {
                    let w = c.write[i];
                    if w != 0 && w != me && epoch_engine(w) != my_engine && !happens_before(w, vc) {
                        race.get_or_insert(Race { earlier: w, conflict: Conflict::WriteAfterWrite, mem, addr: at(i) });
                    }
                    let r = c.read[i];
                    c.write[i] = me;
                    c.read[i] = 0;
                    if r == SHARED {
                        let readers = shared.remove(&(mem, at(i))).unwrap_or_default();
                        if let Some(&e) =
                            readers.iter().find(|&&e| epoch_engine(e) != my_engine && !happens_before(e, vc))
                        {
                            race.get_or_insert(Race {
                                earlier: e,
                                conflict: Conflict::WriteAfterRead,
                                mem,
                                addr: at(i),
                            });
                        }
                    } else if r != 0 && epoch_engine(r) != my_engine && !happens_before(r, vc) {
                        race.get_or_insert(Race { earlier: r, conflict: Conflict::WriteAfterRead, mem, addr: at(i) });
                    }
                }
                if full {
                    // Every byte now has this write and no reader: the block is uniform again.
                    c.block_write[block] = me;
                    c.block_read[block] = 0;
                }
            });
        });
        race
    }
}

/// Calls `f(cells, block, start, end, covers_whole_block)` for each block that
/// `[start, start + n)` overlaps.
fn for_each_block(c: &mut Cells, start: usize, n: usize, mut f: impl FnMut(&mut Cells, usize, usize, usize, bool)) {
    let end = start + n;
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
