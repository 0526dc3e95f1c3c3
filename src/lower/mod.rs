//! Lowering: each IR op becomes loop nests (`loops`), forward and backward side by side, one
//! file per op family; `step` assembles them into a [`Plan`] for inference and training;
//! `interp` runs any kernel slowly with every access checked; `print` dumps a plan as text.

pub mod activation;
pub mod builder;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod interp;
pub mod join;
pub mod loops;
pub mod loss;
mod map;
pub mod memory;
pub mod norm;
mod overwrite;
pub mod pool;
pub mod print;
mod races;
pub mod step;

pub use step::{plan, BufferDecl, BufferRole, Plan};
