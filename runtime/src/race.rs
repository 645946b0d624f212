//! Happens-before race detection and uninitialised-read tracking.
//!
//! Every engine of every core is one component of a vector clock. An instruction
//! ticks its engine's component when it starts; a semaphore wait joins the clocks
//! of the signals that brought the semaphore to the awaited value (in the order
//! they fired). Each byte of SRAM, PSUM and HBM remembers the epoch of its last
//! writer and of its last reader(s) (FastTrack's representation: one epoch, or a
//! set when engines read it concurrently). An access that is not ordered after a
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

#[derive(Clone)]
struct Cells {
    write: Vec<Epoch>,
    read: Vec<Epoch>,
}

impl Cells {
    fn new(n: usize) -> Cells {
        Cells { write: vec![0; n], read: vec![0; n] }
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

    fn cells(&mut self, mem: Mem, addr: u64) -> (&mut Cells, usize) {
        match mem {
            Mem::Sram(_) | Mem::Psum(_) => {
                let n = if matches!(mem, Mem::Sram(_)) { self.sram_bytes } else { self.psum_bytes };
                (self.on_chip.entry(mem).or_insert_with(|| Cells::new(n)), addr as usize)
            }
            Mem::Hbm => {
                let page = addr >> HBM_PAGE_BITS;
                let cells = self.hbm.entry(page).or_insert_with(|| Cells::new(1 << HBM_PAGE_BITS));
                (cells, (addr & ((1 << HBM_PAGE_BITS) - 1)) as usize)
            }
        }
    }

    /// Marks bytes as written by the host (program inputs and constants).
    pub fn host_write(&mut self, mem: Mem, addr: u64, len: u64) {
        for a in addr..addr + len {
            let (c, i) = self.cells(mem, a);
            c.write[i] = HOST;
        }
    }

    /// Records a read of `len` bytes at `addr` by an instruction with epoch `me` and
    /// clock `vc`. Returns the first race, and the first uninitialised byte.
    pub fn read(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> (Option<Race>, Option<Uninit>) {
        let mut race = None;
        let mut uninit = None;
        for a in addr..addr + len {
            let (c, i) = self.cells(mem, a);
            let w = c.write[i];
            if w == 0 {
                uninit.get_or_insert(Uninit { mem, addr: a });
            } else if !happens_before(w, vc) && epoch_engine(w) != epoch_engine(me) {
                race.get_or_insert(Race { earlier: w, conflict: Conflict::ReadAfterWrite, mem, addr: a });
            }
            let r = c.read[i];
            if r == SHARED {
                let set = self.shared_reads.entry((mem, a)).or_default();
                set.retain(|&e| epoch_engine(e) != epoch_engine(me));
                set.push(me);
            } else if r == 0 || epoch_engine(r) == epoch_engine(me) || happens_before(r, vc) {
                c.read[i] = me;
            } else {
                c.read[i] = SHARED;
                self.shared_reads.insert((mem, a), vec![r, me]);
            }
        }
        (race, uninit)
    }

    /// Records a write; returns the first race.
    pub fn write(&mut self, mem: Mem, addr: u64, len: u64, me: Epoch, vc: &[u32]) -> Option<Race> {
        let mut race = None;
        for a in addr..addr + len {
            let (c, i) = self.cells(mem, a);
            let w = c.write[i];
            if w != 0 && epoch_engine(w) != epoch_engine(me) && !happens_before(w, vc) {
                race.get_or_insert(Race { earlier: w, conflict: Conflict::WriteAfterWrite, mem, addr: a });
            }
            let r = c.read[i];
            c.write[i] = me;
            c.read[i] = 0;
            if r == SHARED {
                let readers = self.shared_reads.remove(&(mem, a)).unwrap_or_default();
                if let Some(&e) =
                    readers.iter().find(|&&e| epoch_engine(e) != epoch_engine(me) && !happens_before(e, vc))
                {
                    race.get_or_insert(Race { earlier: e, conflict: Conflict::WriteAfterRead, mem, addr: a });
                }
            } else if r != 0 && epoch_engine(r) != epoch_engine(me) && !happens_before(r, vc) {
                race.get_or_insert(Race { earlier: r, conflict: Conflict::WriteAfterRead, mem, addr: a });
            }
        }
        race
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
}
