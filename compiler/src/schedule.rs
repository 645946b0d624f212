//! Schedule files: per-kernel overrides of the chosen schedules (`--schedule`).
//!
//! ```text
//! # comments start with `#`
//! [%c]              # the kernel that computes %c (any value it computes)
//! tile_n = 256
//! loop_order = m_outer
//!
//! [k2]              # the second kernel, as `--emit kernels` names it
//! width = 128
//! ```
//!
//! A section names one kernel; its `field = value` lines override those fields
//! of that kernel's chosen schedule, and every other field keeps its chosen
//! value. This module only parses; the driver's schedule stage resolves each
//! section to its kernel and hands the fields to the kernel, which checks them
//! against the target ([`crate::kernels::Kernel::schedule`]).

use crate::error::CompileError;
use crate::ir::Span;
use crate::kernels::Field;

/// How a section names its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRef {
    /// `kN`: the N-th kernel (1-based), as `--emit kernels` lists them.
    Index(usize),
    /// `%name`: the kernel that computes this value.
    Value(String),
}

impl std::fmt::Display for KernelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelRef::Index(n) => write!(f, "k{n}"),
            KernelRef::Value(v) => write!(f, "%{v}"),
        }
    }
}

/// One `[kernel]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The kernel it applies to.
    pub kernel: KernelRef,
    /// The header's bytes in the file.
    pub span: Span,
    /// 1-based line of the header.
    pub line: usize,
    /// Its overrides, in order.
    pub fields: Vec<Field>,
}

/// A parsed schedule file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Sections in file order.
    pub sections: Vec<Section>,
}

fn syntax(line: usize, span: Span, message: String) -> CompileError {
    CompileError::ScheduleSyntax { line, message, span }
}

impl Schedule {
    /// Parses a schedule file.
    pub fn parse(text: &str) -> Result<Schedule, CompileError> {
        let mut sections: Vec<Section> = Vec::new();
        let mut offset = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            let (line, start) = (n + 1, offset);
            offset += raw.len();
            let body = raw.split('#').next().unwrap_or("").trim();
            let span = start..start + raw.trim_end().len();
            if body.is_empty() {
                continue;
            }
            if let Some(name) = body.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
                let kernel = kernel_ref(name.trim()).map_err(|m| syntax(line, span.clone(), m))?;
                if let Some(s) = sections.iter().find(|s| s.kernel == kernel) {
                    let msg = format!("kernel `{kernel}` has a section already (line {})", s.line);
                    return Err(syntax(line, span, msg));
                }
                sections.push(Section { kernel, span, line, fields: Vec::new() });
                continue;
            }
            let Some((key, value)) = body.split_once('=') else {
                return Err(syntax(line, span, format!("expected `[kernel]` or `field = value`, found `{body}`")));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(section) = sections.last_mut() else {
                let msg = format!("`{key} = {value}` comes before any `[kernel]` section; name the kernel it applies to, e.g. `[k1]` or `[%value]`");
                return Err(syntax(line, span, msg));
            };
            if key.is_empty() || value.is_empty() {
                return Err(syntax(line, span, format!("expected `field = value`, found `{body}`")));
            }
            if let Some(f) = section.fields.iter().find(|f| f.name == key) {
                return Err(syntax(
                    line,
                    span,
                    format!("`{key}` is set twice for `{}` (line {})", section.kernel, f.line),
                ));
            }
            section.fields.push(Field { name: key.into(), value: value.into(), line });
        }
        Ok(Schedule { sections })
    }
}

fn kernel_ref(name: &str) -> Result<KernelRef, String> {
    if let Some(v) = name.strip_prefix('%') {
        if crate::ir::check::is_value_name(v) {
            return Ok(KernelRef::Value(v.into()));
        }
    } else if let Some(n) = name.strip_prefix('k').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0) {
        return Ok(KernelRef::Index(n));
    }
    Err(format!("`[{name}]` names no kernel: write `[kN]` (N from 1, as `--emit kernels` lists them) or `[%value]`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_fields_parse_with_their_lines() {
        let s = Schedule::parse("# t\n[%c]\ntile_n = 256  # narrower\n\n[k2]\nwidth=128\n").unwrap();
        assert_eq!(s.sections.len(), 2);
        assert_eq!(s.sections[0].kernel, KernelRef::Value("c".into()));
        assert_eq!(s.sections[0].fields, vec![Field { name: "tile_n".into(), value: "256".into(), line: 3 }]);
        assert_eq!(s.sections[1].kernel, KernelRef::Index(2));
        assert_eq!(s.sections[1].line, 5);
        assert_eq!(&"# t\n[%c]\n"[s.sections[0].span.clone()], "[%c]");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let err = |t: &str| Schedule::parse(t).unwrap_err().to_string();
        assert!(
            err("tile_n = 3").starts_with("line 1: `tile_n = 3` comes before any `[kernel]` section"),
            "{}",
            err("tile_n = 3")
        );
        assert!(err("[k0]\n").contains("names no kernel"));
        assert!(err("[gemm]\n").contains("names no kernel"));
        assert!(err("[k1]\ntile_m 3").starts_with("line 2: expected `[kernel]` or `field = value`"));
        assert!(err("[k1]\ntile_m = 3\ntile_m = 4").starts_with("line 3: `tile_m` is set twice for `k1` (line 2)"));
        assert!(err("[k1]\n[k1]").contains("has a section already (line 1)"));
    }
}
