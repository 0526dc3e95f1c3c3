//! Fitting samples to the network's input: adding a missing channel axis, and bilinear resizing
//! when the spatial size differs (d2l's AlexNet, VGG, ... take 224×224 Fashion-MNIST).
//!
//! The resize is `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`, which
//! is what torchvision's `Resize` does on tensors when upsampling (its antialias only affects
//! downsampling, which cnnc does without antialias). d2l resizes the PIL image before
//! `ToTensor`, which also rounds the result to bytes: cnnc keeps the unrounded values, a
//! difference of at most 0.5/255 per pixel.

use super::{DataError, Dataset};
use crate::ir::Shape;

/// Returns `data` with samples of the network's `input` shape, resizing 2-D images if needed
/// (and adding a note the first time). `what` names the data in errors.
pub fn fit_to_input(
    mut data: Dataset,
    input: &Shape,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<Dataset, DataError> {
    // `[N, H, W]` arrays for a one-channel network: the channel axis is implied.
    if data.sample_shape.len() + 1 == input.rank() && input.channels() == 1 {
        data.sample_shape.insert(0, 1);
    }
    let mismatch = |reason: String| DataError::Mismatch {
        what: what.to_string(),
        reason,
    };
    let found = Shape(data.sample_shape.clone());
    if data.sample_shape.len() != input.rank() {
        return Err(mismatch(format!(
            "samples of shape {found} for a network whose input is {input}"
        )));
    }
    if data.sample_shape[0] != input.channels() {
        return Err(mismatch(format!(
            "samples have {} channels, the network's input {input} has {}",
            data.sample_shape[0],
            input.channels()
        )));
    }
    if data.sample_shape[1..] == *input.spatial() {
        return Ok(data);
    }
    if data.sample_shape.contains(&0) {
        return Err(mismatch(format!(
            "empty samples of shape {found} cannot be resized to {input}"
        )));
    }
    let (&[in_h, in_w], &[out_h, out_w]) = (&data.sample_shape[1..], input.spatial()) else {
        return Err(mismatch(format!(
            "samples of shape {found} for a network whose input is {input} (only 2-D images are resized)"
        )));
    };
    let note = format!("images resized bilinearly from {in_h}×{in_w} to {out_h}×{out_w} to fit the network's input");
    if !notes.contains(&note) {
        notes.push(note);
    }
    let planes = data.len() * input.channels();
    let mut resized = Vec::with_capacity(planes * out_h * out_w);
    for plane in data.images.chunks_exact(in_h * in_w) {
        resized.extend(bilinear(plane, (in_h, in_w), (out_h, out_w)));
    }
    data.images = resized;
    data.sample_shape = input.0.clone();
    Ok(data)
}

/// For each output index along one axis: the two source indices and their weights, as
/// PyTorch's `compute_source_index_and_lambda` (align_corners=False) computes them in f32.
fn axis_weights(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let real = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let lambda1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - lambda1, lambda1)
        })
        .collect()
}

/// Bilinear resize of one `h×w` plane (row-major) to `out_h×out_w`.
pub fn bilinear(plane: &[f32], (h, w): (usize, usize), (out_h, out_w): (usize, usize)) -> Vec<f32> {
    let rows = axis_weights(h, out_h);
    let cols = axis_weights(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, wy0, wy1) in &rows {
        for &(x0, x1, wx0, wx1) in &cols {
            let top = wx0 * plane[y0 * w + x0] + wx1 * plane[y0 * w + x1];
            let bottom = wx0 * plane[y1 * w + x0] + wx1 * plane[y1 * w + x1];
            out.push(wy0 * top + wy1 * bottom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::data::Labels;

    fn data(sample_shape: Vec<usize>, images: Vec<f32>) -> Dataset {
        Dataset {
            images,
            sample_shape,
            labels: Labels::Classes {
                values: vec![0],
                classes: 1,
            },
        }
    }

    #[test]
    fn upsampling_matches_torch_interpolate() {
        // torch.nn.functional.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4),
        // mode="bilinear", align_corners=False); all values are exact in f32.
        let expected = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(bilinear(&[1.0, 2.0, 3.0, 4.0], (2, 2), (4, 4)), expected);
    }

    #[test]
    fn halving_averages_each_2x2_block() {
        let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(bilinear(&plane, (4, 4), (2, 2)), [2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn same_size_is_the_identity() {
        let plane: Vec<f32> = (0..12).map(|v| v as f32 * 0.1).collect();
        assert_eq!(bilinear(&plane, (3, 4), (3, 4)), plane);
    }

    #[test]
    fn fits_28_to_224_with_one_note() {
        let mut notes = Vec::new();
        let plane = vec![0.5; 28 * 28];
        let fitted = fit_to_input(
            data(vec![1, 28, 28], plane.clone()),
            &Shape(vec![1, 224, 224]),
            "train",
            &mut notes,
        )
        .expect("resize");
        assert_eq!(fitted.images.len(), 224 * 224);
        assert!(
            fitted.images.iter().all(|&v| (v - 0.5).abs() < 1e-6),
            "a constant stays constant (±1e-6)"
        );
        fit_to_input(
            data(vec![1, 28, 28], plane),
            &Shape(vec![1, 224, 224]),
            "test",
            &mut notes,
        )
        .expect("resize");
        assert_eq!(
            notes,
            vec!["images resized bilinearly from 28×28 to 224×224 to fit the network's input"]
        );
    }

    #[test]
    fn adds_a_missing_channel_axis_and_refuses_what_does_not_fit() {
        let mut notes = Vec::new();
        let fitted = fit_to_input(
            data(vec![2, 2], vec![0.0; 4]),
            &Shape(vec![1, 2, 2]),
            "x",
            &mut notes,
        )
        .expect("fit");
        assert_eq!(fitted.sample_shape, vec![1, 2, 2]);
        assert!(notes.is_empty());
        let err = fit_to_input(
            data(vec![1, 2, 2], vec![0.0; 4]),
            &Shape(vec![3, 2, 2]),
            "x",
            &mut notes,
        )
        .expect_err("1 channel for 3");
        assert!(err.to_string().contains("1 channels"), "{err}");
        let err = fit_to_input(
            data(vec![1, 4], vec![0.0; 4]),
            &Shape(vec![1, 8]),
            "x",
            &mut notes,
        )
        .expect_err("1-D");
        assert!(err.to_string().contains("only 2-D"), "{err}");
        let err = fit_to_input(
            data(vec![1, 2, 2], vec![0.0; 4]),
            &Shape(vec![4]),
            "x",
            &mut notes,
        )
        .expect_err("rank");
        assert!(matches!(err, DataError::Mismatch { .. }));
        let empty = data(vec![1, 0, 2], vec![]);
        let err = fit_to_input(empty, &Shape(vec![1, 4, 4]), "x", &mut notes).expect_err("empty");
        assert!(err.to_string().contains("empty samples"), "{err}");
    }
}
