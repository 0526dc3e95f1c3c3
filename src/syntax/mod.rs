//! Surface syntax: the pest grammar (`grammar/cnn.pest`), the [`ast`] it is turned into, a
//! canonical printer for `cnnc dump --stage ast`, and the prelude, a `.cnn` file embedded in
//! the binary.

pub mod ast;
pub mod load;
mod parse_error;
pub mod parser;
pub mod print;

pub use parser::parse;

/// The prelude: blocks always in scope (`nin`, `inception`), written in `.cnn` itself.
pub const PRELUDE: &str = include_str!("prelude.cnn");

/// The name the prelude has in diagnostics.
pub const PRELUDE_NAME: &str = "<prelude>";
