//! Program inputs and outputs as `.npy` files.
//!
//! Inputs: any numpy bool, integer or float `.npy` (either byte order, C or Fortran
//! order) is converted to the tensor's declared dtype with round-to-nearest-even
//! (f64 values round once, through a round-to-odd f32; integers into an integer
//! tensor must fit it, else the input is refused). Its shape must equal the
//! declared shape. An input may be named by its tensor name or by its external
//! (model-file) name. Outputs: `DIR/<name>.npy`, float32 (int32 for integer
//! dtypes), with the declared shape; an output with an external name is written
//! as `DIR/<external name>.npy` (characters outside `[A-Za-z0-9_.-]` made `_`) in
//! its external type (float32 for every float type).

use std::path::{Path, PathBuf};

use jpu_isa::numerics::{load_f32, store_f32, store_f64};
use jpu_isa::program::{ExternalType, Role, TensorDecl};
use jpu_isa::{DType, Program};
use npyz::{TypeChar, WriterBuilder};

/// Bad input files: what and where.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An input is missing, unknown, or does not fit its tensor.
    #[error("{0}")]
    Mismatch(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> IoError {
    IoError::File { path: path.to_path_buf(), message: message.into() }
}

/// Stores an integer into one element of `dtype` (exact or one rounding; saturating).
fn store_i128(dtype: DType, v: i128, out: &mut [u8]) {
    match dtype {
        DType::I8 => out[0] = v.clamp(-128, 127) as i8 as u8,
        DType::I32 => out[..4].copy_from_slice(&(v.clamp(i32::MIN as i128, i32::MAX as i128) as i32).to_le_bytes()),
        // |v| < 2^64 is exact in f64 only below 2^53; above, round-to-odd through f64 first.
        _ if v.unsigned_abs() < (1u128 << 53) => store_f64(dtype, v as f64, out),
        DType::F32 => out[..4].copy_from_slice(&(v as f32).to_le_bytes()),
        _ => store_f32(dtype, v as f32, out),
    }
}

/// Bytes an `.npy` header may take beyond its data (numpy pads headers to 64
/// bytes; format 2 allows 4 GiB, far more than any real one).
const NPY_HEADER_MAX: u64 = 1 << 20;

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, IoError> {
    jpu_isa::bytes::read_file_limited(path, limit).map_err(|m| file_err(path, m))
}

/// Reads an `.npy` file and converts it to the bytes of `tensor` (its dtype and shape).
pub fn read_npy_for(path: &Path, tensor: &TensorDecl) -> Result<Vec<u8>, IoError> {
    // An .npy of the tensor's elements in any numeric dtype (at most 8 bytes each)
    // plus its header: a larger file cannot match, so it is not read.
    let limit = tensor.elems().saturating_mul(8).saturating_add(NPY_HEADER_MAX);
    let bytes = read_limited(path, limit)?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| file_err(path, format!("not a valid .npy file: {e}")))?;
    let shape = npy.shape().to_vec();
    if shape != tensor.shape {
        return Err(IoError::Mismatch(format!(
            "input `{}`: {} has shape {:?}, but the program declares {}{:?}",
            tensor.name,
            path.display(),
            shape,
            tensor.dtype,
            tensor.shape
        )));
    }
    let fortran = matches!(npy.order(), npyz::Order::Fortran);
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(file_err(path, "structured or array dtypes are not supported; save a plain numeric array"));
    };
    let (kind, size) = (ts.type_char(), ts.size_field());
    let size_bytes = tensor.dtype.size_bytes() as usize;
    let n = tensor.elems() as usize;
    let mut out = vec![0u8; n * size_bytes];
    let bad = |e: std::io::Error| file_err(path, format!("cannot read the data: {e}"));
    // The file's element at each C-order position (a Fortran-order file only;
    // a C-order file is read in place).
    let order: Option<Vec<usize>> = fortran.then(|| fortran_to_c(&shape));
    let source = |dst: usize| order.as_ref().map_or(dst, |o| o[dst]);
    macro_rules! fill {
        ($t:ty, $store:expr) => {{
            let v: Vec<$t> = npy.into_vec::<$t>().map_err(bad)?;
            if v.len() != n {
                return Err(file_err(path, format!("holds {} elements; its shape needs {n}", v.len())));
            }
            for (dst, o) in out.chunks_exact_mut(size_bytes).enumerate() {
                $store(v[source(dst)], o);
            }
        }};
    }
    let d = tensor.dtype;
    // Integers into an integer tensor must fit it (an int64 token id past i32 is an error, not a clamp).
    let fits = |x: i128| match d {
        DType::I8 => (-128..=127).contains(&x),
        DType::I32 => (i32::MIN as i128..=i32::MAX as i128).contains(&x),
        _ => true,
    };
    macro_rules! fill_int {
        ($t:ty) => {{
            let v: Vec<$t> = npy.into_vec::<$t>().map_err(bad)?;
            if v.len() != n {
                return Err(file_err(path, format!("holds {} elements; its shape needs {n}", v.len())));
            }
            if let Some((i, x)) = v.iter().enumerate().find(|(_, &x)| !fits(x as i128)) {
                return Err(IoError::Mismatch(format!(
                    "input `{}`: {} element {i} is {x}, outside the range of {d}",
                    tensor.name,
                    path.display()
                )));
            }
            for (dst, o) in out.chunks_exact_mut(size_bytes).enumerate() {
                store_i128(d, v[source(dst)] as i128, o);
            }
        }};
    }
    match (kind, size) {
        (TypeChar::Float, 2) => fill!(half::f16, |x: half::f16, o: &mut [u8]| store_f64(d, x.to_f64(), o)),
        (TypeChar::Float, 4) => fill!(f32, |x: f32, o: &mut [u8]| store_f32(d, x, o)),
        (TypeChar::Float, 8) => fill!(f64, |x: f64, o: &mut [u8]| store_f64(d, x, o)),
        (TypeChar::Int, 1) => fill_int!(i8),
        (TypeChar::Int, 2) => fill_int!(i16),
        (TypeChar::Int, 4) => fill_int!(i32),
        (TypeChar::Int, 8) => fill_int!(i64),
        (TypeChar::Uint, 1) => fill_int!(u8),
        (TypeChar::Uint, 2) => fill_int!(u16),
        (TypeChar::Uint, 4) => fill_int!(u32),
        (TypeChar::Uint, 8) => fill_int!(u64),
        (TypeChar::Bool, 1) => fill!(bool, |x: bool, o: &mut [u8]| store_i128(d, x as i128, o)),
        _ => return Err(file_err(path, format!("dtype `{ts}` is not a numpy bool, integer or float type"))),
    }
    Ok(out)
}

/// Reads an `.npy` file of at most `elems` elements (larger files are refused
/// before reading) as exact f64 values in C order, with its shape (any numpy
/// bool, integer or float dtype; integers beyond 2^53 round to the nearest f64).
pub fn read_npy_f64(path: &Path, elems: u64) -> Result<(Vec<u64>, Vec<f64>), IoError> {
    let bytes = read_limited(path, elems.saturating_mul(8).saturating_add(NPY_HEADER_MAX))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| file_err(path, format!("not a valid .npy file: {e}")))?;
    let shape = npy.shape().to_vec();
    let fortran = matches!(npy.order(), npyz::Order::Fortran);
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(file_err(path, "structured or array dtypes are not supported; save a plain numeric array"));
    };
    let bad = |e: std::io::Error| file_err(path, format!("cannot read the data: {e}"));
    macro_rules! values {
        ($t:ty, $conv:expr) => {
            npy.into_vec::<$t>().map_err(bad)?.into_iter().map($conv).collect::<Vec<f64>>()
        };
    }
    let raw: Vec<f64> = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 2) => values!(half::f16, |x: half::f16| x.to_f64()),
        (TypeChar::Float, 4) => values!(f32, |x: f32| x as f64),
        (TypeChar::Float, 8) => values!(f64, |x: f64| x),
        (TypeChar::Int, 1) => values!(i8, |x: i8| x as f64),
        (TypeChar::Int, 2) => values!(i16, |x: i16| x as f64),
        (TypeChar::Int, 4) => values!(i32, |x: i32| x as f64),
        (TypeChar::Int, 8) => values!(i64, |x: i64| x as f64),
        (TypeChar::Uint, 1) => values!(u8, |x: u8| x as f64),
        (TypeChar::Uint, 2) => values!(u16, |x: u16| x as f64),
        (TypeChar::Uint, 4) => values!(u32, |x: u32| x as f64),
        (TypeChar::Uint, 8) => values!(u64, |x: u64| x as f64),
        (TypeChar::Bool, 1) => values!(bool, |x: bool| x as u8 as f64),
        _ => return Err(file_err(path, format!("dtype `{ts}` is not a numpy bool, integer or float type"))),
    };
    let n: u64 = shape.iter().product();
    if raw.len() as u64 != n {
        return Err(file_err(path, format!("holds {} elements; its shape needs {n}", raw.len())));
    }
    let data = if fortran { fortran_to_c(&shape).into_iter().map(|i| raw[i]).collect() } else { raw };
    Ok((shape, data))
}

/// Writes `values` as `.npy` data of `shape` (the dtype follows `T`).
fn write_npy_values<T: npyz::AutoSerialize>(
    w: impl std::io::Write,
    shape: &[u64],
    values: impl Iterator<Item = T>,
) -> std::io::Result<()> {
    let mut wr = npyz::WriteOptions::new().default_dtype().shape(shape).writer(w).begin_nd()?;
    wr.extend(values)?;
    wr.finish()
}

/// Writes f32 (or, with `int`, int32) values as an `.npy` file of `shape`.
pub fn write_npy(path: &Path, shape: &[u64], values: &[f64], int: bool) -> Result<(), IoError> {
    let file = std::fs::File::create(path).map_err(|e| file_err(path, format!("cannot create: {e}")))?;
    let w = std::io::BufWriter::new(file);
    let result = if int {
        write_npy_values(w, shape, values.iter().map(|&v| v as i32))
    } else {
        write_npy_values(w, shape, values.iter().map(|&v| v as f32))
    };
    result.map_err(|e| file_err(path, format!("cannot write: {e}")))
}

/// For C-order index i, the index of the same element in Fortran order.
fn fortran_to_c(shape: &[u64]) -> Vec<usize> {
    let n: u64 = shape.iter().product();
    let mut out = Vec::with_capacity(n as usize);
    let mut idx = vec![0u64; shape.len()];
    for _ in 0..n {
        let mut f = 0u64;
        let mut stride = 1u64;
        for (k, &d) in shape.iter().enumerate() {
            f += idx[k] * stride;
            stride *= d;
        }
        out.push(f as usize);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Loads every input tensor of `program` from `NAME=PATH` pairs.
pub fn load_inputs(program: &Program, files: &[(String, PathBuf)]) -> Result<Vec<(String, Vec<u8>)>, IoError> {
    // External (model-file) names resolve to their tensors.
    let files: Vec<(String, PathBuf)> = files
        .iter()
        .map(|(name, path)| {
            let external = program.external.iter().find(|x| &x.name == name);
            let tensor = external.and_then(|x| program.tensors.get(x.tensor as usize)).map(|t| t.name.clone());
            (tensor.unwrap_or_else(|| name.clone()), path.clone())
        })
        .collect();
    let files = &files[..];
    let mut out = Vec::new();
    for (name, _) in files {
        match program.tensors.iter().find(|t| &t.name == name) {
            Some(t) if t.role == Role::Input => {}
            Some(t) => {
                let article = if t.role == Role::Output { "an" } else { "a" };
                return Err(IoError::Mismatch(format!(
                    "`{name}` is {article} {} tensor, not an input of the program",
                    t.role.name()
                )));
            }
            None => {
                let inputs: Vec<&str> =
                    program.tensors.iter().filter(|t| t.role == Role::Input).map(|t| t.name.as_str()).collect();
                return Err(IoError::Mismatch(format!(
                    "the program has no input `{name}` (its inputs: {})",
                    if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") }
                )));
            }
        }
    }
    for t in program.tensors.iter().filter(|t| t.role == Role::Input) {
        let matching: Vec<&PathBuf> = files.iter().filter(|(n, _)| n == &t.name).map(|(_, p)| p).collect();
        match matching.as_slice() {
            [] => {
                return Err(IoError::Mismatch(format!(
                    "missing input `{}` ({}{:?}): pass --input {}=FILE.npy",
                    t.name, t.dtype, t.shape, t.name
                )))
            }
            [path] => out.push((t.name.clone(), read_npy_for(path, t)?)),
            _ => return Err(IoError::Mismatch(format!("input `{}` is given more than once", t.name))),
        }
    }
    Ok(out)
}

/// Decodes a tensor's bytes as f32 values.
pub fn decode_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(dtype.size_bytes() as usize).map(|c| load_f32(dtype, c)).collect()
}

/// Writes each output as `dir/<name>.npy` (float32, or int32 for integer dtypes).
pub fn write_outputs(program: &Program, outputs: &[(String, Vec<u8>)], dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, format!("cannot create the directory: {e}")))?;
    let mut written = Vec::new();
    for (name, bytes) in outputs {
        let Some(index) = program.tensors.iter().position(|t| &t.name == name) else { continue };
        let t = &program.tensors[index];
        if let Some(x) = program.external.iter().find(|x| x.tensor as usize == index) {
            let path = dir.join(format!("{}.npy", file_name(&x.name)));
            write_external(&path, t, x.elem, bytes)?;
            written.push(path);
            continue;
        }
        let path = dir.join(format!("{name}.npy"));
        let file = std::fs::File::create(&path).map_err(|e| file_err(&path, format!("cannot create: {e}")))?;
        let w = std::io::BufWriter::new(file);
        let result = if t.dtype.is_int() {
            let vals: Vec<i32> = bytes
                .chunks_exact(t.dtype.size_bytes() as usize)
                .map(|c| {
                    if t.dtype == DType::I8 {
                        c[0] as i8 as i32
                    } else {
                        i32::from_le_bytes([c[0], c[1], c[2], c[3]])
                    }
                })
                .collect();
            write_npy_values(w, &t.shape, vals.into_iter())
        } else {
            write_npy_values(w, &t.shape, decode_f32(t.dtype, bytes).into_iter())
        };
        result.map_err(|e| file_err(&path, format!("cannot write: {e}")))?;
        written.push(path);
    }
    Ok(written)
}

/// An external name as a file name: characters outside `[A-Za-z0-9_.-]` become `_`.
pub fn file_name(external: &str) -> String {
    external.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' }).collect()
}

/// Writes tensor `t`'s bytes as an `.npy` of external type `elem` (float32 for floats).
fn write_external(path: &Path, t: &TensorDecl, elem: ExternalType, bytes: &[u8]) -> Result<(), IoError> {
    let file = std::fs::File::create(path).map_err(|e| file_err(path, format!("cannot create: {e}")))?;
    let w = std::io::BufWriter::new(file);
    let values = bytes.chunks_exact(t.dtype.size_bytes() as usize).map(|c| jpu_isa::numerics::load_f64(t.dtype, c));
    let shape = &t.shape;
    let result = match elem {
        ExternalType::I64 => write_npy_values(w, shape, values.map(|v| v as i64)),
        ExternalType::I32 => write_npy_values(w, shape, values.map(|v| v as i32)),
        ExternalType::I16 => write_npy_values(w, shape, values.map(|v| v as i16)),
        ExternalType::I8 => write_npy_values(w, shape, values.map(|v| v as i8)),
        ExternalType::U8 => write_npy_values(w, shape, values.map(|v| v as u8)),
        ExternalType::Bool => write_npy_values(w, shape, values.map(|v| v != 0.0)),
        _ => write_npy_values(w, shape, values.map(|v| v as f32)),
    };
    result.map_err(|e| file_err(path, format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_names_become_file_names() {
        assert_eq!(file_name("onnx::Shape_422"), "onnx__Shape_422");
        assert_eq!(file_name("/model/Add_output_0"), "_model_Add_output_0");
        assert_eq!(file_name("a-b.c é"), "a-b.c__");
    }

    #[test]
    fn fortran_order_maps_to_c_order() {
        // A 2x3 array in Fortran order stores column by column.
        assert_eq!(fortran_to_c(&[2, 3]), vec![0, 2, 4, 1, 3, 5]);
    }

    /// The same 2x3 f32 array saved in C and in Fortran order (numpy's layout
    /// of `np.save(f, a)` and `np.save(f, np.asfortranarray(a))`) loads as the
    /// same bf16 bytes.
    #[test]
    fn c_and_fortran_files_load_the_same_bytes() {
        let npy = |fortran: bool, values: &[f32]| {
            let dict = format!(
                "{{'descr': '<f4', 'fortran_order': {}, 'shape': (2, 3), }}",
                if fortran { "True" } else { "False" }
            );
            let mut header = dict.into_bytes();
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(b' ');
            }
            header.push(b'\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend((header.len() as u16).to_le_bytes());
            bytes.extend(header);
            bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            bytes
        };
        let dir = std::env::temp_dir().join(format!("jpu-io-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, f) = (dir.join("c.npy"), dir.join("f.npy"));
        std::fs::write(&c, npy(false, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).unwrap();
        std::fs::write(&f, npy(true, &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0])).unwrap();
        let decl = TensorDecl {
            name: "x".into(),
            dtype: DType::Bf16,
            shape: vec![2, 3],
            addr: 0,
            role: jpu_isa::program::Role::Input,
            data: Vec::new(),
        };
        let want: Vec<u8> =
            [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        assert_eq!(read_npy_for(&c, &decl).unwrap(), want);
        assert_eq!(read_npy_for(&f, &decl).unwrap(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
