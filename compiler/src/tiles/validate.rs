//! Validation of a linked tile program against a target (see [`super`]).

use jpu_isa::operand::Space;
use jpu_isa::program::Role;
use jpu_isa::Target;

use super::{BufSlice, HbmBox, TileOp, TileProgram};

/// A tile program that breaks a rule: which op (if any) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileError {
    /// Index of the offending tile op.
    pub op: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for TileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.op {
            Some(i) => write!(f, "tile op {i}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl TileOp {
    /// The HBM boxes it reads and writes.
    pub fn hbm_boxes(&self) -> (Vec<HbmBox>, Vec<HbmBox>) {
        match self {
            TileOp::Load { src, .. } => (vec![*src], vec![]),
            TileOp::Store { dst, .. } => (vec![], vec![*dst]),
            TileOp::HbmCopy { dst, src, .. } => (vec![*src], vec![*dst]),
            TileOp::Gather { table, .. } => (vec![*table], vec![]),
            _ => (vec![], vec![]),
        }
    }
}

impl TileProgram {
    /// Checks the program against `t` (the module docs list the rules).
    pub fn validate(&self, t: &Target) -> Result<(), TileError> {
        self.validate_buffers(t)?;
        let mut written_tensors = vec![false; self.tensors.len()];
        let mut written_copies: Vec<Vec<bool>> = self.buffers.iter().map(|b| vec![false; b.copies as usize]).collect();
        for (i, (op, _)) in self.ops.iter().enumerate() {
            let fail =
                |message: String| TileError { op: Some(i), message: format!("{message} (`{}`)", self.op_text(i)) };
            let (reads, writes) = op.slices();
            for s in reads.iter().chain(&writes) {
                self.check_slice(s).map_err(fail)?;
            }
            if let TileOp::Share { dst, src, .. } = op {
                self.check_share(dst, src).map_err(fail)?;
            }
            let (hbm_reads, hbm_writes) = op.hbm_boxes();
            for h in hbm_reads.iter().chain(&hbm_writes) {
                self.check_box(h).map_err(fail)?;
            }
            for s in &reads {
                if !written_copies[s.buf][s.copy as usize] {
                    let b = &self.buffers[s.buf].name;
                    return Err(fail(format!("reads copy {} of buffer `{b}` before anything writes it", s.copy)));
                }
            }
            for h in &hbm_reads {
                let tensor = &self.tensors[h.tensor];
                if tensor.role != Role::Input && !written_tensors[h.tensor] {
                    return Err(fail(format!("reads tensor `{}` before any op writes it", tensor.name)));
                }
            }
            for h in &hbm_writes {
                let tensor = &self.tensors[h.tensor];
                if tensor.role == Role::Input {
                    return Err(fail(format!("writes the input tensor `{}`", tensor.name)));
                }
                written_tensors[h.tensor] = true;
            }
            for s in &writes {
                written_copies[s.buf][s.copy as usize] = true;
            }
        }
        // An empty output needs no write.
        let unwritten =
            |(t, w): &(&super::HbmTensor, &bool)| t.role == Role::Output && !**w && t.shape.iter().all(|&d| d > 0);
        if let Some(t) = self.tensors.iter().zip(&written_tensors).find(unwritten) {
            return Err(TileError { op: None, message: format!("no op writes the output tensor `{}`", t.0.name) });
        }
        Ok(())
    }

    fn validate_buffers(&self, t: &Target) -> Result<(), TileError> {
        for (i, b) in self.buffers.iter().enumerate() {
            let (partitions, bytes) = match b.space {
                Space::Sram => (t.sram.partitions, t.sram.partition_bytes as u64),
                Space::Psum => (t.psum.partitions, t.psum.partition_bytes as u64),
            };
            let copy_bytes = b.free as u64 * b.dtype.size_bytes() as u64;
            let why = if b.parts == 0 || b.parts > partitions {
                format!("has {} partitions; {} {} has {partitions}", b.parts, t.name, b.space.name())
            } else if b.copies == 0 {
                "has no copies".to_string()
            } else if let Some(why) = self.mirror_mismatch(i) {
                why
            } else if copy_bytes.saturating_mul(b.copies as u64) > bytes {
                format!(
                    "needs {} x {copy_bytes} bytes per partition; {} {} has {bytes}",
                    b.copies,
                    t.name,
                    b.space.name()
                )
            } else {
                continue;
            };
            return Err(TileError { op: None, message: format!("buffer `{}` {why}", b.name) });
        }
        Ok(())
    }

    /// A share writes the source's slice of mirrors of its buffer on other
    /// cores, each core once.
    fn check_share(&self, dst: &[BufSlice], src: &BufSlice) -> Result<(), String> {
        if dst.is_empty() {
            return Err("a share needs a destination".into());
        }
        let root = |b: usize| self.buffers.get(b).and_then(|x| x.mirrors).unwrap_or(b);
        let core = |b: usize| self.buffers.get(b).map_or(0, |x| x.core);
        let mut cores = vec![core(src.buf)];
        for d in dst {
            let same = (d.copy, d.parts, d.offset, d.len) == (src.copy, src.parts, src.offset, src.len);
            if !same || root(d.buf) != root(src.buf) || cores.contains(&core(d.buf)) {
                return Err(
                    "a share's destinations must be the source's slice of its mirrors on other cores, one per core"
                        .into(),
                );
            }
            cores.push(core(d.buf));
        }
        Ok(())
    }

    /// Why `b` cannot share the address of the buffer it mirrors: that must be
    /// an earlier buffer of the same shape on another core, itself no mirror.
    fn mirror_mismatch(&self, i: usize) -> Option<String> {
        let b = &self.buffers[i];
        let m = b.mirrors?;
        let m = self.buffers.get(m).filter(|_| m < i);
        let shape = |x: &super::Buffer| (x.space, x.dtype, x.parts, x.free, x.copies);
        match m {
            Some(m) if m.mirrors.is_none() && m.core != b.core && shape(m) == shape(b) => None,
            _ => Some("mirrors a buffer of another shape, of its own core, or not earlier".into()),
        }
    }

    fn check_slice(&self, s: &BufSlice) -> Result<(), String> {
        let Some(b) = self.buffers.get(s.buf) else {
            return Err(format!("names buffer {} of {}", s.buf, self.buffers.len()));
        };
        if s.copy >= b.copies {
            return Err(format!("names copy {} of buffer `{}`, which has {}", s.copy, b.name, b.copies));
        }
        if s.parts == 0 || s.parts > b.parts || s.len == 0 || s.offset as u64 + s.len as u64 > b.free as u64 {
            return Err(format!(
                "slice [0:{}, {}:{}] is outside buffer `{}` [{} x {}]",
                s.parts,
                s.offset,
                s.offset as u64 + s.len as u64,
                b.name,
                b.parts,
                b.free
            ));
        }
        Ok(())
    }

    fn check_box(&self, h: &HbmBox) -> Result<(), String> {
        let Some(t) = self.tensors.get(h.tensor) else {
            return Err(format!("names tensor {} of {}", h.tensor, self.tensors.len()));
        };
        let elems = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
        let end = (h.rows as u64)
            .checked_sub(1)
            .and_then(|r| r.checked_mul(h.row_stride))
            .and_then(|x| x.checked_add(h.start))
            .and_then(|x| x.checked_add(h.cols as u64));
        match end {
            Some(end) if h.cols > 0 && end <= elems => Ok(()),
            _ => Err(format!(
                "box @{} {}x{} stride {} is outside tensor `{}` ({elems} elements)",
                h.start, h.rows, h.cols, h.row_stride, t.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use jpu_isa::DType;

    fn program() -> TileProgram {
        let t = |name: &str, role| HbmTensor { name: name.into(), dtype: DType::F32, shape: vec![4, 8], role };
        let buf = Buffer::new("b", Space::Sram, DType::F32, 4, 8, 1);
        let s = BufSlice { buf: 0, copy: 0, parts: 4, offset: 0, len: 8 };
        let h = |tensor| HbmBox { tensor, start: 0, rows: 4, row_stride: 8, cols: 8 };
        TileProgram {
            tensors: vec![t("x", Role::Input), t("y", Role::Output)],
            buffers: vec![buf],
            ops: vec![(TileOp::Load { dst: s, src: h(0), queue: None }, 0), (TileOp::Store { dst: h(1), src: s }, 0)],
            debug_ops: vec!["%y = copy(%x)".into()],
        }
    }

    fn message(p: &TileProgram) -> String {
        let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
        p.validate(&t).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_program_validates() {
        program().validate(&jpu_isa::Target::builtin("jpu-tiny").unwrap()).unwrap();
    }

    #[test]
    fn broken_programs_are_rejected_naming_the_op() {
        let mut p = program();
        p.ops.swap(0, 1);
        assert!(message(&p).contains("reads copy 0 of buffer `b` before anything writes it"), "{}", message(&p));
        let mut p = program();
        if let TileOp::Store { dst, .. } = &mut p.ops[1].0 {
            dst.start = 1;
        }
        assert!(message(&p).contains("outside tensor `y`"), "{}", message(&p));
        let mut p = program();
        if let TileOp::Load { dst, .. } = &mut p.ops[0].0 {
            dst.copy = 1;
        }
        assert!(message(&p).starts_with("tile op 0: names copy 1"), "{}", message(&p));
        let mut p = program();
        p.buffers[0].free = 1 << 20;
        assert!(message(&p).contains("buffer `b` needs 1 x 4194304 bytes per partition"), "{}", message(&p));
        let mut p = program();
        p.ops.pop();
        assert_eq!(message(&p), "no op writes the output tensor `y`");
        let mut p = program();
        p.tensors[0].role = Role::Scratch;
        assert!(message(&p).contains("reads tensor `x` before any op writes it"), "{}", message(&p));
        let mut p = program();
        p.ops.push((
            TileOp::Store {
                dst: HbmBox { tensor: 0, start: 0, rows: 1, row_stride: 8, cols: 8 },
                src: BufSlice { buf: 0, copy: 0, parts: 1, offset: 0, len: 8 },
            },
            0,
        ));
        assert!(message(&p).contains("writes the input tensor `x`"), "{}", message(&p));
    }

    /// `program()` with core 1 holding a mirror of the buffer, written by a
    /// share from core 0 and stored from there.
    fn shared() -> TileProgram {
        let mut p = program();
        p.buffers.push(Buffer { core: 1, mirrors: Some(0), ..p.buffers[0].clone() });
        let (s, on_1) = (
            BufSlice { buf: 0, copy: 0, parts: 4, offset: 0, len: 8 },
            BufSlice { buf: 1, copy: 0, parts: 4, offset: 0, len: 8 },
        );
        p.ops.insert(1, (TileOp::Share { dst: vec![on_1], src: s, queue: None }, 0));
        if let TileOp::Store { src, .. } = &mut p.ops[2].0 {
            *src = on_1;
        }
        p
    }

    #[test]
    fn shares_write_the_same_slice_of_mirrors_on_other_cores() {
        let t = jpu_isa::Target::builtin("jpu-tiny").unwrap();
        shared().validate(&t).unwrap();
        assert!(shared().to_string().contains("share b[0:4, 0:8] -> cores 1"), "{}", shared());
        assert!(shared().to_string().contains("on core 1 at the address of core 0's"), "{}", shared());
        let mut p = shared();
        if let TileOp::Share { dst, .. } = &mut p.ops[1].0 {
            dst[0].offset = 1;
            dst[0].len = 7;
        }
        assert!(message(&p).contains("a share's destinations must be the source's slice"), "{}", message(&p));
        let mut p = shared();
        p.buffers[1].mirrors = None;
        assert!(message(&p).contains("a share's destinations must be"), "{}", message(&p));
        let mut p = shared();
        p.buffers[1].core = 0;
        assert!(
            message(&p).contains("buffer `b` mirrors a buffer of another shape, of its own core"),
            "{}",
            message(&p)
        );
        let mut p = shared();
        p.buffers[1].free = 4;
        assert!(message(&p).contains("mirrors a buffer of another shape"), "{}", message(&p));
    }
}
