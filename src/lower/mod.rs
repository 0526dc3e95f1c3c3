//! Lowering: each IR op becomes loop nests (`loops`), forward and backward side by side.

pub mod interp;
pub mod loops;
