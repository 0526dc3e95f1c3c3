//! Dropout: in training `y = x ⊙ mask`, where the runtime draws `mask` before each step from
//! its seeded generator, each element `0` (dropped, probability `p`) or `1/(1 − p)` (kept),
//! the same convention as `reference::dropout`, so both can be given one mask. Outside
//! training `y = x`.

use super::builder::{ix, KernelBuilder, Tensor};
use super::loops::{Expr, Index, Kernel, Stmt};

/// `write(target, [n, e], value(source[n, e], [n, e]))` for every element (`write` is
/// `Tensor::store` or `Tensor::accumulate`), parallel over the batch.
fn elementwise(
    name: String,
    source: &Tensor,
    target: &Tensor,
    write: fn(&Tensor, &[Index], Expr) -> Stmt,
    value: impl Fn(Expr, &[Index]) -> Expr,
) -> Kernel {
    let (source, target) = (source.rows(), target.rows());
    let mut kb = KernelBuilder::new(name);
    let (n, e) = (kb.var(source.dims[0]), kb.var(source.dims[1]));
    let at = [ix(n), ix(e)];
    let v = value(source.load(&at), &at);
    let top = kb.parallel_for(n, vec![kb.for_(e, vec![write(&target, &at, v)])]);
    kb.finish(vec![top])
}

/// Training: `y = x ⊙ mask`.
pub fn forward_train(name: &str, x: &Tensor, mask: &Tensor, y: &Tensor) -> Kernel {
    let mask = mask.rows();
    elementwise(
        format!("{name}.forward_train"),
        x,
        y,
        Tensor::store,
        |x, at| x * mask.load(at),
    )
}

/// Inference: a copy (the output keeps its own buffer, which training writes).
pub fn forward_infer(name: &str, x: &Tensor, y: &Tensor) -> Kernel {
    elementwise(format!("{name}.forward"), x, y, Tensor::store, |x, _| x)
}

/// `dx += dy ⊙ mask`.
pub fn backward(name: &str, mask: &Tensor, dy: &Tensor, dx: &Tensor) -> Kernel {
    let mask = mask.rows();
    elementwise(
        format!("{name}.backward_input"),
        dy,
        dx,
        Tensor::accumulate,
        |dy, at| dy * mask.load(at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp::run;
    use crate::lower::loops::BufId;

    /// p = 0.5: kept elements are scaled by 2.
    #[test]
    fn mask_scales_kept_elements_forward_and_backward() {
        let [x, mask, y, dx]: [Tensor; 4] = [0, 1, 2, 3].map(|b| Tensor::new(BufId(b), vec![2, 2]));
        let mut bufs = vec![
            vec![1., 2., 3., 4.],
            vec![2., 0., 0., 2.],
            vec![0.; 4],
            vec![1.; 4],
        ];
        run(&forward_train("d", &x, &mask, &y), &mut bufs).unwrap();
        assert_eq!(bufs[2], vec![2., 0., 0., 8.]);
        run(&backward("d", &mask, &x, &dx), &mut bufs).unwrap();
        assert_eq!(bufs[3], vec![3., 1., 1., 9.]);
        run(&forward_infer("d", &x, &y), &mut bufs).unwrap();
        assert_eq!(bufs[2], bufs[0]);
    }
}
