//! The syntax tree the grammar builds: exactly what was written, with spans.
//! [`super::resolve`] turns it into the typed IR after checking it.

pub use crate::ir::Span;

/// A value with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub node: T,
    /// Where it was written.
    pub span: Span,
}

/// A whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// Functions in order.
    pub funcs: Vec<FuncDecl>,
}

/// `func @name(params) -> types { stmts }`
#[derive(Debug, Clone, PartialEq)]
pub struct FuncDecl {
    /// Name without `@`.
    pub name: Spanned<String>,
    /// Parameters.
    pub params: Vec<Param>,
    /// Declared result types.
    pub results: Vec<TypeExpr>,
    /// Statements.
    pub body: Vec<Stmt>,
    /// The `func` keyword through the name (for diagnostics).
    pub head: Span,
    /// The closing brace.
    pub end: Span,
}

/// `dtype[d0, d1, ...]`
#[derive(Debug, Clone, PartialEq)]
pub struct TypeExpr {
    /// Dtype name as written.
    pub dtype: Spanned<String>,
    /// Dims.
    pub dims: Vec<Spanned<u64>>,
    /// The whole type.
    pub span: Span,
}

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `%name = op(operands) {attrs} : type`
    Let {
        /// Result name without `%`.
        name: Spanned<String>,
        /// Op name.
        op: Spanned<String>,
        /// Operands.
        operands: Vec<OperandExpr>,
        /// Attributes.
        attrs: Vec<(Spanned<String>, Spanned<AttrValue>)>,
        /// Optional result-type annotation.
        ty: Option<TypeExpr>,
        /// The whole statement.
        span: Span,
    },
    /// `return %a, %b`
    Return {
        /// Returned values.
        values: Vec<Spanned<String>>,
        /// The whole statement.
        span: Span,
    },
    /// A statement that did not parse (its error is reported separately).
    Error,
}

/// An operand.
#[derive(Debug, Clone, PartialEq)]
pub enum OperandExpr {
    /// `%name`
    Value(Spanned<String>),
    /// A scalar literal (`0.125`, `-inf`).
    Literal(Spanned<f64>),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// An integer (with sign).
    Int(i64),
    /// A float (`inf`, `-inf` included).
    Float(f64),
    /// `true` / `false`.
    Bool(bool),
    /// A string.
    Str(String),
    /// An identifier (dtypes, and bare words like `tanh`).
    Ident(String),
    /// `[v, ...]`
    List(Vec<Spanned<AttrValue>>),
}

/// `%name: type`, or `%name: type = "file.safetensors"["tensor"]` for a stored weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The parameter's name.
    pub name: Spanned<String>,
    /// Its type.
    pub ty: TypeExpr,
    /// The file and the tensor holding its value, for a weight.
    pub weight: Option<(Spanned<String>, Spanned<String>)>,
}
