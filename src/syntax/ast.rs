//! The parsed program, before any expansion: what the user wrote, with a [`Span`] on every
//! piece that a diagnostic may point at.
//!
//! Expressions are kept flat ([`ExprKind::Sum`], [`ExprKind::Product`] hold operand lists), so
//! that walking them needs recursion only as deep as the brackets, which the parser bounds.

use crate::span::Span;

/// One `.cnn` file.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use "other.cnn"`: the path as written, and the span of the string.
    Use {
        path: String,
        span: Span,
    },
    Block(BlockDef),
    Network(NetworkDef),
}

/// A name with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `block name(params) { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDef {
    pub name: Ident,
    pub params: Vec<BlockParam>,
    pub body: Vec<Stmt>,
}

/// A block parameter, `channels` or `stride=1`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockParam {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// `network name { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkDef {
    pub name: Ident,
    pub body: Vec<Stmt>,
}

/// `[label:] statement`
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub label: Option<Ident>,
    pub kind: StmtKind,
    /// The whole statement, label included.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `let name = value`
    Let { name: Ident, value: Expr },
    /// `input [1, 28, 28]`
    Input { dims: Vec<Expr> },
    /// An op or a block call: `conv 6 kernel=5`, `vgg_block(1, 64)`.
    Layer {
        name: Ident,
        args: Vec<Arg>,
        parenthesized: bool,
    },
    /// `repeat count { body }`
    Repeat { count: Expr, body: Vec<Stmt> },
    /// `concat { branch {..} .. }` or `add { branch {..} .. }`
    Join {
        kind: JoinKind,
        branches: Vec<Branch>,
    },
    /// `residual { body }`
    Residual { body: Vec<Stmt> },
    /// `train { key = value .. }`
    Train { settings: Vec<Setting> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Concat,
    Add,
}

impl JoinKind {
    pub fn keyword(self) -> &'static str {
        match self {
            JoinKind::Concat => "concat",
            JoinKind::Add => "add",
        }
    }
}

/// `[label:] branch { body }`
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub label: Option<Ident>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// `key = value` in a `train` section.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
}

/// A positional (`6`) or keyword (`kernel=5`) argument.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub keyword: Option<Ident>,
    pub value: Expr,
    /// The whole argument, `kernel=5`.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// The literal as written; it may not fit an `i64` (reported when evaluated).
    Int(String),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A block parameter, a `let` constant, or a symbol such as `same` or `mnist`.
    Name(String),
    Tuple(Vec<Expr>),
    /// `sgd(lr=0.9)`: only meaningful as a `train` value.
    Call {
        name: Ident,
        args: Vec<Arg>,
    },
    /// `first op rest[0] op rest[1] ..` with `+`/`-`, left to right.
    Sum {
        first: Box<Expr>,
        rest: Vec<(BinOp, Expr)>,
    },
    /// `first op rest[0] ..` with `*`/`/`, left to right.
    Product {
        first: Box<Expr>,
        rest: Vec<(BinOp, Expr)>,
    },
    /// `-operand` (an odd number of minus signs; an even number cancels out).
    Neg(Box<Expr>),
    /// `base[i][j]..`
    Index {
        base: Box<Expr>,
        indices: Vec<Expr>,
    },
}
