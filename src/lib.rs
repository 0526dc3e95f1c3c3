//! cnnc: a compiler for the `.cnn` language.
//!
//! Data flows one way: `syntax → ir → passes → lower → jit → runtime → cli`.
//! `span` and `diag` are leaves used by every stage; `reference` is the slow, obvious oracle
//! that sees only `ir`.

pub mod cli;
pub mod diag;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod passes;
pub mod reference;
pub mod runtime;
pub mod span;
pub mod syntax;
