//! Passes: rewrites of a checked [`Graph`] into a graph that computes the same values faster.
//!
//! A pass keeps every `NodeId`, name, shape and parameter, so that buffers, checkpoints, dumps
//! and the reference line up between the graph the user wrote and the graph the engine
//! lowers; it only changes what a node computes *inside* its kernel (e.g. an activation
//! moved into its producer's kernel as an epilogue, the activation node turned into an
//! identity that aliases its producer's buffers; a batchnorm marked to run inside its
//! convolution's kernel at inference). `ir::verify` holds after every pass.
//!
//! `cnnc check`, `params` and `dump --stage ir` show the graph as written; the engine
//! (`runtime::Engine`) and `dump --stage fused` use [`fuse`]'s result.

pub mod fold;
pub mod fuse;

use crate::ir::Graph;

/// Runs every pass, in order.
pub fn fuse(graph: &Graph) -> Graph {
    fold::batchnorms_into_convs(&fuse::activations_into_producers(graph))
}
