//! The runtime: everything the training loop and the `forward`/`grad`/`init` commands stand on,
//! apart from the generated code itself.
//!
//! - [`data`]: datasets (IDX, `.npz`, MNIST and Fashion-MNIST lookup, synthetic), resizing and
//!   shuffled batches.
//! - [`tensors`]: `.npy` arrays in and out.
//! - [`checkpoint`]: safetensors weights, optimiser state and progress, written atomically.
//! - [`optim`]: `torch.optim.SGD` and `torch.optim.Adam` on flat `f32` slices.
//! - [`init`]: PyTorch's default and Xavier initialisation.
//! - [`report`]: progress bar, epoch line, JSON-lines log and SVG plot, all as strings.
//! - [`engines`]: one network compiled for several batch sizes, sharing its parameters.
//! - [`peak`]: the machine's fp32 peak, measured (for `cnnc bench`).
//! - [`train`]: the training loop; [`eval`]: accuracy and confusion matrix in inference mode.
//!
//! Nothing here prints: errors are values naming the file, array or tensor at fault, and notes
//! are returned for the CLI to show.
//!
//! Randomness comes from [`rng`]: one ChaCha8 stream per purpose derived from the run's seed,
//! so the state of a run is fully described by `(seed, epoch)` and `--resume` needs no RNG
//! state in the checkpoint.

pub mod checkpoint;
pub mod data;
pub mod engine;
pub mod engines;
pub mod eval;
pub mod init;
pub mod optim;
pub mod peak;
pub mod report;
pub mod schedule;
pub mod tensors;
pub mod train;

use rand::rngs::ChaCha8Rng;
use rand::SeedableRng;

/// What a random stream is used for; each purpose gets its own independent ChaCha stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Initial weights (`cnnc init`, a fresh training run).
    Init,
    /// The samples of `data = synthetic`.
    Synthetic,
    /// The sample order of one epoch (0-based).
    Shuffle { epoch: u64 },
    /// The dropout masks of one optimiser step (0-based, counted over the whole run), so a
    /// resumed run draws the masks the uninterrupted run would have drawn.
    Dropout { step: u64 },
}

/// The first stream id of [`Stream::Dropout`].
const DROPOUT_STREAMS: u64 = 1 << 63;

/// The random number generator for `stream` under `seed`. ChaCha8 is portable and its output
/// is fixed by its specification, so a seed gives the same numbers on every machine and build.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Stream ids: 0 and 1 for the fixed purposes, 2 + epoch for shuffles, and the upper half
    // of the id space for dropout steps (no run reaches 2^63 epochs or steps).
    rng.set_stream(match stream {
        Stream::Init => 0,
        Stream::Synthetic => 1,
        Stream::Shuffle { epoch } => epoch.saturating_add(2),
        Stream::Dropout { step } => DROPOUT_STREAMS | step,
    });
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, stream| rng(seed, stream).next_u64();
        assert_eq!(draw(7, Stream::Init), draw(7, Stream::Init));
        assert_ne!(draw(7, Stream::Init), draw(8, Stream::Init));
        assert_ne!(draw(7, Stream::Init), draw(7, Stream::Synthetic));
        assert_ne!(
            draw(7, Stream::Shuffle { epoch: 0 }),
            draw(7, Stream::Shuffle { epoch: 1 })
        );
        assert_ne!(
            draw(7, Stream::Dropout { step: 0 }),
            draw(7, Stream::Shuffle { epoch: 0 })
        );
        assert_ne!(
            draw(7, Stream::Dropout { step: 0 }),
            draw(7, Stream::Dropout { step: 1 })
        );
    }
}
