//! Target descriptions: the machine parameters every stage reads.
//!
//! A [`Target`] is loaded from a TOML description (`isa/targets/*.toml`) and
//! validated once; after [`Target::from_toml`] succeeds, every limit is positive
//! and every derived quantity (bank size, engine count, peak rates) is consistent,
//! so later code may divide by them and index with them without further checks.
//! No machine number is a constant in code: the built-in targets are the TOML
//! files compiled in with `include_str!`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Most cores a target may have (a fabric destination is a 32-bit core set).
pub const MAX_CORES: u32 = 32;

/// Names of the built-in targets, in the order `jalc` lists them.
pub const BUILTIN_TARGETS: &[&str] = &["jpu1", "jpu-tiny"];

const JPU1_TOML: &str = include_str!("../targets/jpu1.toml");
const JPU_TINY_TOML: &str = include_str!("../targets/jpu-tiny.toml");

/// Errors from loading or validating a target description.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// The TOML text does not parse or does not have the expected fields.
    #[error("target description does not parse: {0}")]
    Parse(String),
    /// A parameter is out of its allowed range.
    #[error("target `{target}`: `{field}` {message}")]
    Invalid {
        /// Target name (as far as it was read).
        target: String,
        /// Dotted field path, e.g. `psum.banks`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No built-in target has this name.
    #[error("unknown target `{0}` (built-in targets: {list}; or a description file, NAME.toml)", list = BUILTIN_TARGETS.join(", "))]
    Unknown(String),
    /// A target description file cannot be read.
    #[error("cannot read the target description {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// An exact rational number of bytes per cycle (HBM bandwidth is 800/3 on jpu1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    /// Numerator.
    pub num: u64,
    /// Denominator (positive).
    pub den: u64,
}

impl Ratio {
    /// The value as a float (for reports only; timing uses exact arithmetic).
    pub fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

/// The on-chip fabric: core-to-core DMA and remote semaphore signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// Bytes per cycle of one core's fabric egress (its transfers into other
    /// cores' SRAM share it; a multicast is charged once).
    pub bytes_per_cycle: Ratio,
    /// Cycles from an instruction's completion until its signal of another
    /// core's semaphore is visible there.
    pub signal_latency_cycles: u64,
}

/// High-bandwidth memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hbm {
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Per-core share of bandwidth, bytes per cycle.
    pub bytes_per_cycle: Ratio,
}

/// A partitioned on-core memory (SRAM scratchpad or PSUM accumulator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitioned {
    /// Number of partitions (rows).
    pub partitions: u32,
    /// Bytes per partition.
    pub partition_bytes: u32,
    /// PSUM only: banks per partition (SRAM: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banks: Option<u32>,
}

/// Tensor (PE) engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pe {
    /// Contraction dim K: partitions of both matmul operands.
    pub rows: u32,
    /// Stationary free dim M: PSUM partitions written.
    pub cols: u32,
    /// Largest moving free size N.
    pub max_moving_free: u32,
}

/// A lane-parallel engine (VE or ACT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lanes {
    /// One lane per partition.
    pub lanes: u32,
}

/// DMA engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dma {
    /// Independent queues, each an engine with its own stream.
    pub queues: u32,
    /// Access-pattern dims per descriptor side.
    pub max_dims: u32,
}

/// Synchronisation resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// Monotonic semaphore counters per core.
    pub semaphores: u32,
}

/// PE timing rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeTiming {
    /// matmul with 16-bit operands: max(N, this).
    pub matmul_min_cycles_16bit: u64,
    /// matmul with 8-bit operands: max(ceil(N / cols_per_cycle), this).
    pub matmul_min_cycles_8bit: u64,
    /// Moving columns consumed per cycle with 8-bit operands.
    pub matmul_8bit_columns_per_cycle: u64,
    /// f32 operands cost this times the 16-bit cost.
    pub matmul_f32_factor: u64,
    /// transpose: max(P, this).
    pub transpose_min_cycles: u64,
}

/// Fixed-overhead-plus-elements timing (VE, ACT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneTiming {
    /// Cycles per instruction before the first element.
    pub fixed_cycles: u64,
}

/// DMA timing rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmaTiming {
    /// Cycles from issue until data may start moving.
    pub latency_cycles: u64,
    /// A contiguous run shorter than this costs this many bytes.
    pub min_run_bytes: u64,
}

/// All timing rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// PE.
    pub pe: PeTiming,
    /// VE.
    pub ve: LaneTiming,
    /// ACT.
    pub act: LaneTiming,
    /// DMA.
    pub dma: DmaTiming,
}

/// A validated target description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Short name (`jpu1`, `jpu-tiny`), at most 16 ASCII bytes.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Core clock in GHz.
    pub clock_ghz: f64,
    /// Cores per chip.
    pub cores: u32,
    /// HBM.
    pub hbm: Hbm,
    /// SRAM scratchpad (per core).
    pub sram: Partitioned,
    /// PSUM accumulator (per core).
    pub psum: Partitioned,
    /// Tensor engine.
    pub pe: Pe,
    /// Vector engine.
    pub ve: Lanes,
    /// Activation engine.
    pub act: Lanes,
    /// DMA queues.
    pub dma: Dma,
    /// Semaphores.
    pub sync: Sync,
    /// The on-chip fabric between cores.
    pub fabric: Fabric,
    /// Timing rules.
    pub timing: Timing,
}

impl Target {
    /// Parses and validates a TOML target description.
    pub fn from_toml(text: &str) -> Result<Target, TargetError> {
        let target: Target = toml::from_str(text).map_err(|e| TargetError::Parse(e.to_string()))?;
        target.validate()?;
        Ok(target)
    }

    /// A built-in target by name, or the description in a `.toml` file (any
    /// argument that is not a built-in name is read as a file; files over 1 MiB
    /// are refused before reading).
    pub fn resolve(name_or_file: &str) -> Result<Target, TargetError> {
        if BUILTIN_TARGETS.contains(&name_or_file) {
            return Target::builtin(name_or_file);
        }
        let path = std::path::Path::new(name_or_file);
        if path.extension().is_none_or(|e| e != "toml") && !path.exists() {
            return Err(TargetError::Unknown(name_or_file.to_string()));
        }
        let file = |message: String| TargetError::File { path: name_or_file.to_string(), message };
        let len = std::fs::metadata(path).map_err(|e| file(e.to_string()))?.len();
        if len > 1 << 20 {
            return Err(file(format!("{len} bytes; a target description is at most 1 MiB")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Target::from_toml(&text)
    }

    /// Loads a built-in target by name.
    pub fn builtin(name: &str) -> Result<Target, TargetError> {
        let text = match name {
            "jpu1" => JPU1_TOML,
            "jpu-tiny" => JPU_TINY_TOML,
            other => return Err(TargetError::Unknown(other.to_string())),
        };
        Target::from_toml(text)
    }

    fn validate(&self) -> Result<(), TargetError> {
        let fail =
            |field: &'static str, message: String| TargetError::Invalid { target: self.name.clone(), field, message };
        let positive = |field: &'static str, v: u64| {
            if v == 0 {
                Err(fail(field, "must be positive".into()))
            } else {
                Ok(())
            }
        };
        if self.name.is_empty() || self.name.len() > 16 || !self.name.is_ascii() {
            return Err(fail("name", "must be 1 to 16 ASCII bytes".into()));
        }
        if !(self.clock_ghz.is_finite() && self.clock_ghz > 0.0) {
            return Err(fail("clock_ghz", "must be a positive number".into()));
        }
        if !(1..=MAX_CORES).contains(&self.cores) {
            return Err(fail("cores", format!("must be in 1..={MAX_CORES}")));
        }
        positive("hbm.size_bytes", self.hbm.size_bytes)?;
        positive("hbm.bytes_per_cycle.num", self.hbm.bytes_per_cycle.num)?;
        positive("hbm.bytes_per_cycle.den", self.hbm.bytes_per_cycle.den)?;
        positive("fabric.bytes_per_cycle.num", self.fabric.bytes_per_cycle.num)?;
        positive("fabric.bytes_per_cycle.den", self.fabric.bytes_per_cycle.den)?;
        for (field, mem) in [("sram.partitions", &self.sram), ("psum.partitions", &self.psum)] {
            if !(1..=256).contains(&mem.partitions) {
                return Err(fail(field, "must be in 1..=256".into()));
            }
        }
        if !(4..=1 << 30).contains(&self.sram.partition_bytes) {
            return Err(fail("sram.partition_bytes", "must be in 4..=2^30".into()));
        }
        if self.sram.banks.is_some() {
            return Err(fail("sram.banks", "SRAM is not banked".into()));
        }
        let banks = self.psum.banks.ok_or_else(|| fail("psum.banks", "is required".into()))?;
        if banks == 0
            || !self.psum.partition_bytes.is_multiple_of(banks)
            || !(self.psum.partition_bytes / banks).is_multiple_of(4)
        {
            return Err(fail(
                "psum.banks",
                "must divide psum.partition_bytes into banks of a multiple of 4 bytes".into(),
            ));
        }
        if self.pe.rows == 0 || self.pe.rows > self.sram.partitions {
            return Err(fail("pe.rows", "must be in 1..=sram.partitions".into()));
        }
        if self.pe.cols == 0 || self.pe.cols > self.psum.partitions {
            return Err(fail("pe.cols", "must be in 1..=psum.partitions".into()));
        }
        if self.pe.max_moving_free == 0 || self.pe.max_moving_free * 4 > self.psum_bank_bytes() {
            return Err(fail("pe.max_moving_free", "must be positive and fit one PSUM bank of f32".into()));
        }
        if self.ve.lanes != self.sram.partitions {
            return Err(fail("ve.lanes", "must equal sram.partitions (one lane per partition)".into()));
        }
        if self.act.lanes != self.sram.partitions {
            return Err(fail("act.lanes", "must equal sram.partitions (one lane per partition)".into()));
        }
        if !(1..=16).contains(&self.dma.queues) {
            return Err(fail("dma.queues", "must be in 1..=16".into()));
        }
        if !(1..=4).contains(&self.dma.max_dims) {
            return Err(fail("dma.max_dims", "must be in 1..=4".into()));
        }
        if !(1..=255).contains(&self.sync.semaphores) {
            return Err(fail("sync.semaphores", "must be in 1..=255".into()));
        }
        let t = &self.timing;
        positive("timing.pe.matmul_8bit_columns_per_cycle", t.pe.matmul_8bit_columns_per_cycle)?;
        positive("timing.pe.matmul_f32_factor", t.pe.matmul_f32_factor)?;
        positive("timing.dma.min_run_bytes", t.dma.min_run_bytes)?;
        Ok(())
    }

    /// Bytes per PSUM bank per partition.
    pub fn psum_bank_bytes(&self) -> u32 {
        // `validate` guarantees banks is present and divides partition_bytes.
        self.psum.partition_bytes / self.psum.banks.unwrap_or(1)
    }

    /// Engines per core: PE, VE, ACT, then one per DMA queue.
    pub fn engines_per_core(&self) -> u32 {
        3 + self.dma.queues
    }

    /// Peak PE FLOPs per cycle for 16-bit operands (2 x rows x cols).
    pub fn pe_flops_per_cycle_16bit(&self) -> u64 {
        2 * self.pe.rows as u64 * self.pe.cols as u64
    }

    /// A stable hash of the validated description (independent of TOML layout and
    /// comments): the first 8 bytes of SHA-256 over its canonical JSON form.
    pub fn hash(&self) -> [u8; 8] {
        // Serialising a plain struct of numbers and strings cannot fail.
        let canonical = serde_json::to_vec(self).expect("target serialises");
        let digest = Sha256::digest(&canonical);
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_have_machine_numbers() {
        let t = Target::builtin("jpu1").unwrap();
        assert_eq!(t.sram.partitions, 128);
        assert_eq!(t.sram.partition_bytes as u64 * 128, 24 << 20);
        assert_eq!(t.psum_bank_bytes(), 2048);
        assert_eq!(t.pe_flops_per_cycle_16bit(), 32768);
        assert_eq!(t.engines_per_core(), 7);
        assert!((t.hbm.bytes_per_cycle.as_f64() - 266.666).abs() < 0.01);
        let tiny = Target::builtin("jpu-tiny").unwrap();
        assert_eq!(tiny.psum_bank_bytes(), 512);
        assert_eq!(tiny.engines_per_core(), 5);
        assert_ne!(t.hash(), tiny.hash());
    }

    #[test]
    fn hash_ignores_layout_and_comments() {
        let a = Target::from_toml(JPU_TINY_TOML).unwrap();
        let stripped: String =
            JPU_TINY_TOML.lines().map(|l| l.split('#').next().unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n");
        let b = Target::from_toml(&stripped).unwrap();
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn invalid_descriptions_are_rejected_naming_the_field() {
        let bad = JPU_TINY_TOML.replace("banks = 4", "banks = 3");
        let err = Target::from_toml(&bad).unwrap_err();
        assert!(err.to_string().contains("psum.banks"), "{err}");
        let bad = JPU_TINY_TOML.replace("max_moving_free = 128", "max_moving_free = 129");
        assert!(Target::from_toml(&bad).unwrap_err().to_string().contains("pe.max_moving_free"));
        let bad = JPU_TINY_TOML.replace("queues = 2", "queues = 0");
        assert!(Target::from_toml(&bad).unwrap_err().to_string().contains("dma.queues"));
        let bad = JPU_TINY_TOML.replace("cores = 2", "cores = 2\nbogus = 1");
        assert!(matches!(Target::from_toml(&bad), Err(TargetError::Parse(_))));
        assert!(matches!(Target::builtin("jpu9"), Err(TargetError::Unknown(_))));
    }
}
