//! File-driven test harness for the Jalapeño toolchain.
//!
//! Test cases are files under `testsuite/cases/`. The first line of each names its
//! kind, `; test: KIND` (or `// test: KIND` for `.tir`); one runner per kind turns the
//! file into text, and an insta snapshot pins that text. docs/testing.md says how to
//! add a case and review snapshots.

pub mod bench;
pub mod fuzz_checks;
pub mod kernels;
pub mod tir_gen;

/// Compile options at `level` with the schedule file `text` (which must parse).
pub fn scheduled(text: &str, level: u8) -> jalc::driver::Options {
    let schedule = jalc::schedule::Schedule::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    jalc::driver::Options::with(level, schedule)
}

/// The GEMM kernel among `kernels`, if there is one.
pub fn gemm(kernels: &[Box<dyn jalc::kernels::Kernel>]) -> Option<&jalc::kernels::gemm::GemmKernel> {
    kernels.iter().find_map(|k| k.as_any().downcast_ref())
}

/// The kind a case file declares on its first line, if any.
pub fn case_kind(src: &str) -> Option<&str> {
    let first = src.lines().next()?;
    let rest = first.strip_prefix(';').or_else(|| first.strip_prefix("//"))?;
    rest.trim().strip_prefix("test:").map(str::trim)
}

/// The path of a case relative to the testsuite directory, with `/` separators
/// (stable across machines, so it can appear in snapshots).
pub fn case_name(path: &std::path::Path) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_from_the_first_line() {
        assert_eq!(case_kind("; test: disasm\n.target"), Some("disasm"));
        assert_eq!(case_kind("// test: parse\n"), Some("parse"));
        assert_eq!(case_kind(".target \"jpu1\"\n; test: disasm"), None);
    }
}
