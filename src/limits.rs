//! Every documented limit of cnnc, in one place (the README lists them). They keep hostile or
//! mistaken inputs from overflowing the stack, hanging, or allocating without bound.

/// Deepest nesting of brackets, braces and parentheses in a file, and of block calls while
/// expanding. Checked before the text reaches pest, whose parser recurses per level.
pub const MAX_NESTING: usize = 64;

/// Most elements of one tensor for one image (activations and each parameter).
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Most parameters and buffers of one network, summed.
pub const MAX_PARAMS: usize = 1 << 31;

/// Most nodes of one network after blocks and `repeat` are expanded.
pub const MAX_NODES: usize = 100_000;

/// Most statements executed while expanding one network (`repeat` bodies count once per
/// iteration), so that `repeat 1000000000 { let x = 1 }` is an error rather than a hang.
pub const MAX_EXPANSION_STEPS: usize = 1_000_000;

/// Most samples in one batch an engine is compiled for (`--batch`, the `train` section's
/// `batch`, `cnnc bench`): with [`MAX_ELEMENTS`] per image the buffers' lengths stay far from
/// overflowing. Below it, a workspace larger than the memory available is refused too
/// (`runtime::engine::allocate`).
pub const MAX_BATCH: usize = 1 << 24;
