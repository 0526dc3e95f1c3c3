//! An element-wise map folded into the kernel that produces its input.
//!
//! A sigmoid's gradient in front of a convolution's weight gradient is a kernel of its own
//! (`conv1.activation_grad`: `dz[i] = (g[i]·y[i])·(1 − y[i])`), because the weight gradient
//! reads each `dz` element 25 times; the pooling's input gradient right before it stores each
//! element of `g` once (`avgpool1.backward_input`, after `overwrite`). When, in the backward
//! schedule, a kernel only maps some buffers element-wise into another (every load at the
//! element it stores), and the last kernel before it that writes one of those buffers stores
//! every element of it once, writes none of the others, nothing between them touches the
//! map's output, and nothing else in the plan touches that buffer, [`fold_maps`] makes the
//! producer store the map's result where it stored its input (`g[j] = e` becomes
//! `dz[j] = (e·y[j])·(1 − y[j])`) and drops the map: one pass over three buffers less, and
//! `g` is never written. The operations and their order are the same, on `f32`s, so the stored
//! bits are too.

use super::loops::{visit_expr_uses, visit_uses, BufId, Expr, Index, Kernel, Stmt, Use};
use super::overwrite::stores_each_once;

/// The backward order without the maps folded into their producers, and those maps (indices
/// into `kernels`, now without use). `ignored` are kernels already dropped from the plan.
pub fn fold_maps(
    kernels: &mut [Kernel],
    order: &[usize],
    lens: &[usize],
    ignored: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let mut kept: Vec<usize> = Vec::with_capacity(order.len());
    let mut dropped = Vec::new();
    for &c in order {
        let folded = producer(kernels, &kept, c).and_then(|p| {
            let body = fold(kernels, p, c, lens, |k| {
                ignored.contains(&k) || dropped.contains(&k)
            })?;
            Some((p, body))
        });
        match folded {
            Some((p, body)) => {
                kernels[p].body = body;
                dropped.push(c);
            }
            None => kept.push(c),
        }
    }
    (kept, dropped)
}

/// The kernel of `kept` (in order) that `c`, when it is a map, could be folded into: the last
/// one writing an input of the map, with no kernel after it writing one or touching the map's
/// output.
fn producer(kernels: &[Kernel], kept: &[usize], c: usize) -> Option<usize> {
    let m = map(&kernels[c])?;
    let inputs = loaded(m.value);
    for &k in kept.iter().rev() {
        let (reads, writes) = reads_and_writes(&kernels[k]);
        if writes.iter().any(|b| inputs.contains(b)) {
            return Some(k);
        }
        if reads.contains(&m.out) || writes.contains(&m.out) {
            return None;
        }
    }
    None
}

/// An element-wise map: the store `out[index] = value` inside loops alone, every load of
/// `value` at `index`.
struct Map<'a> {
    out: BufId,
    value: &'a Expr,
}

/// `kernel` as a [`Map`], when it is one.
fn map(kernel: &Kernel) -> Option<Map<'_>> {
    let mut stmts = &kernel.body;
    loop {
        match stmts.as_slice() {
            [Stmt::Loop(lp)] => stmts = &lp.body,
            [Stmt::Store(out, index, value)] => {
                return element_wise(value, *out, index).then_some(Map { out: *out, value });
            }
            _ => return None,
        }
    }
}

/// Whether `value` reads no buffer but at `index`, never `out`, and nothing but loads and
/// arithmetic (no locals, index values or selects).
fn element_wise(value: &Expr, out: BufId, index: &Index) -> bool {
    let go = |e: &Expr| element_wise(e, out, index);
    match value {
        Expr::Load(b, i) => *b != out && i == index,
        Expr::Const(_) => true,
        Expr::Unary(_, a) => go(a),
        Expr::Binary(_, a, b) => go(a) && go(b),
        Expr::Fma(a, b, c) => go(a) && go(b) && go(c),
        Expr::Local(_) | Expr::IndexValue(_) | Expr::Select(..) => false,
    }
}

/// The buffers `expr` loads from.
fn loaded(expr: &Expr) -> Vec<BufId> {
    let mut bufs = Vec::new();
    visit_expr_uses(expr, &mut |item| {
        if let Use::Load(b) = item {
            if !bufs.contains(&b) {
                bufs.push(b);
            }
        }
    });
    bufs
}

/// What the kernel reads and what it writes (stores or adds into).
fn reads_and_writes(kernel: &Kernel) -> (Vec<BufId>, Vec<BufId>) {
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    visit_uses(&kernel.body, &mut |item| match item {
        Use::Load(b) => reads.push(b),
        Use::Store(b) | Use::Accumulate(b) => writes.push(b),
        Use::Local(_) => {}
    });
    (reads, writes)
}

/// Kernel `p`'s body with the map `c` folded in, when it can be (see the module doc).
fn fold(
    kernels: &[Kernel],
    p: usize,
    c: usize,
    lens: &[usize],
    ignored: impl Fn(usize) -> bool,
) -> Option<Vec<Stmt>> {
    let m = map(&kernels[c])?;
    let len = *lens.get(m.out.0 as usize)?;
    if !stores_each_once(&kernels[c], m.out, len) {
        return None;
    }
    let (p_reads, p_writes) = reads_and_writes(&kernels[p]);
    let inputs = loaded(m.value);
    // The map's input the producer writes: exactly one, and the others it leaves alone.
    let mut produced = inputs.iter().filter(|b| p_writes.contains(b));
    let (&g, None) = (produced.next()?, produced.next()) else {
        return None;
    };
    let others_untouched = (kernels.iter().enumerate())
        .filter(|&(k, _)| k != p && k != c && !ignored(k))
        .all(|(_, kernel)| {
            let (reads, writes) = reads_and_writes(kernel);
            !reads.contains(&g) && !writes.contains(&g)
        });
    let fits = lens.get(g.0 as usize) == Some(&len)
        && !p_reads.contains(&m.out)
        && !p_writes.contains(&m.out)
        && others_untouched
        && stores_each_once(&kernels[p], g, len);
    fits.then(|| substitute(&kernels[p].body, g, &m))
}

/// `stmts` with every `g[j] = e` made `out[j] = value`, `value`'s `g` replaced by `e` and its
/// other loads moved to `j`.
fn substitute(stmts: &[Stmt], g: BufId, m: &Map) -> Vec<Stmt> {
    (stmts.iter())
        .map(|stmt| match stmt {
            Stmt::Loop(lp) => {
                let mut lp = lp.clone();
                lp.body = substitute(&lp.body, g, m);
                Stmt::Loop(lp)
            }
            Stmt::If(cond, body) => Stmt::If(cond.clone(), substitute(body, g, m)),
            Stmt::Store(b, j, e) if *b == g => Stmt::Store(m.out, j.clone(), at(m.value, g, e, j)),
            _ => stmt.clone(),
        })
        .collect()
}

/// `value` with `g`'s loads replaced by `e` and every other load moved to `j`.
fn at(value: &Expr, g: BufId, e: &Expr, j: &Index) -> Expr {
    let go = |x: &Expr| Box::new(at(x, g, e, j));
    match value {
        Expr::Load(b, _) if *b == g => e.clone(),
        Expr::Load(b, _) => Expr::Load(*b, j.clone()),
        Expr::Unary(op, a) => Expr::Unary(*op, go(a)),
        Expr::Binary(op, a, b) => Expr::Binary(*op, go(a), go(b)),
        Expr::Fma(a, b, c) => Expr::Fma(go(a), go(b), go(c)),
        Expr::Select(cond, a, b) => Expr::Select(cond.clone(), go(a), go(b)),
        Expr::Const(_) | Expr::Local(_) | Expr::IndexValue(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp;
    use crate::lower::loops::test_builders::{index, lp};
    use crate::lower::loops::BinOp;

    const DY: BufId = BufId(0);
    const G: BufId = BufId(1);
    const Y: BufId = BufId(2);
    const DZ: BufId = BufId(3);
    /// Written by kernels that only need to read something.
    const SINK: BufId = BufId(4);
    const LEN: usize = 8;

    fn kernel(name: &str, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name: name.into(),
            vars: 3,
            locals: 0,
            body,
        }
    }

    fn load(buf: BufId, i: Index) -> Expr {
        Expr::Load(buf, i)
    }

    fn binary(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    /// A pooling's input gradient over `LEN` elements in windows of 2: `g[2i + k] = 0.0 +
    /// dy[i] / 2`, the window taps as two statements.
    fn producer(write: impl Fn(BufId, Index, Expr) -> Stmt) -> Kernel {
        let value = |k| {
            write(
                G,
                index(&[(0, 2)], k),
                binary(
                    BinOp::Add,
                    Expr::Const(0.0),
                    binary(BinOp::Div, load(DY, index(&[(0, 1)], 0)), Expr::Const(2.0)),
                ),
            )
        };
        kernel(
            "pool.backward_input",
            vec![lp(0, LEN / 2, true, vec![value(0), value(1)])],
        )
    }

    fn stores() -> Kernel {
        producer(Stmt::Store)
    }

    /// A sigmoid's gradient in two loops: `dz[4a + b] = (g[…]·y[…])·(1 − y[…])`, `g` read at
    /// `shift` past the element.
    fn sigmoid_grad(shift: i64) -> Kernel {
        let at = index(&[(1, 4), (2, 1)], 0);
        let y = || load(Y, at.clone());
        let value = binary(
            BinOp::Mul,
            binary(BinOp::Mul, load(G, index(&[(1, 4), (2, 1)], shift)), y()),
            binary(BinOp::Sub, Expr::Const(1.0), y()),
        );
        kernel(
            "sigmoid.activation_grad",
            vec![lp(
                1,
                LEN / 4,
                true,
                vec![lp(2, 4, false, vec![Stmt::Store(DZ, at, value)])],
            )],
        )
    }

    /// `y[i] = 0.5` for every `i`: a kernel writing a map's other input.
    fn writes_y() -> Kernel {
        kernel(
            "y.reset",
            vec![lp(
                0,
                LEN,
                true,
                vec![Stmt::Store(Y, index(&[(0, 1)], 0), Expr::Const(0.5))],
            )],
        )
    }

    /// `sink[i] = buf[i]` for every `i`: a kernel reading `buf`.
    fn reads(buf: BufId) -> Kernel {
        let i = || index(&[(0, 1)], 0);
        kernel(
            "reader",
            vec![lp(
                0,
                LEN,
                true,
                vec![Stmt::Store(SINK, i(), load(buf, i()))],
            )],
        )
    }

    fn lens() -> Vec<usize> {
        vec![LEN / 2, LEN, LEN, LEN]
    }

    fn inputs() -> Vec<Vec<f32>> {
        let values =
            |seed: f32, n: usize| (0..n).map(|i| (seed * (i as f32 + 1.3)).sin()).collect();
        vec![
            values(0.7, LEN / 2),
            vec![f32::NAN; LEN],
            values(1.9, LEN),
            vec![f32::NAN; LEN],
        ]
    }

    fn run(kernels: &[Kernel], order: &[usize]) -> Vec<Vec<f32>> {
        let mut bufs = inputs();
        for &k in order {
            interp::run(&kernels[k], &mut bufs).expect("the interpreter runs");
        }
        bufs
    }

    #[test]
    fn a_map_is_stored_by_its_producer_with_the_same_bits() {
        let original = vec![stores(), sigmoid_grad(0)];
        let mut kernels = original.clone();
        let (order, dropped) = fold_maps(&mut kernels, &[0, 1], &lens(), &[]);
        assert_eq!((order.as_slice(), dropped.as_slice()), (&[0][..], &[1][..]));
        let mut written = Vec::new();
        visit_uses(&kernels[0].body, &mut |item| {
            if let Use::Store(b) = item {
                written.push(b);
            }
        });
        assert_eq!(
            written,
            [DZ, DZ],
            "the producer stores the map's output only"
        );
        let (before, after) = (run(&original, &[0, 1]), run(&kernels, &[0]));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&after[DZ.0 as usize]), bits(&before[DZ.0 as usize]));
        assert!(
            after[G.0 as usize].iter().all(|x| x.is_nan()),
            "g is never written"
        );
    }

    #[test]
    fn maps_that_cannot_move_are_left() {
        let lens = lens();
        let unchanged = |kernels: Vec<Kernel>, order: &[usize]| {
            let mut folded = kernels.clone();
            let (kept, dropped) = fold_maps(&mut folded, order, &lens, &[]);
            kept == order && dropped.is_empty() && folded == kernels
        };
        // The map reads its input at another element than it writes.
        assert!(unchanged(vec![stores(), sigmoid_grad(1)], &[0, 1]));
        // The producer adds into the input instead of storing it.
        assert!(unchanged(
            vec![producer(Stmt::Accumulate), sigmoid_grad(0)],
            &[0, 1]
        ));
        // The producer writes half of the input.
        let mut half = stores();
        let Stmt::Loop(outer) = &mut half.body[0] else {
            unreachable!()
        };
        outer.body.pop();
        assert!(unchanged(vec![half, sigmoid_grad(0)], &[0, 1]));
        // Another kernel reads the input.
        assert!(unchanged(
            vec![stores(), sigmoid_grad(0), reads(G)],
            &[0, 1]
        ));
        // A kernel between them writes the map's other input (which a later kernel reads,
        // so the map cannot go into that one either).
        assert!(unchanged(
            vec![stores(), writes_y(), sigmoid_grad(0), reads(Y)],
            &[0, 1, 2, 3]
        ));
    }

    #[test]
    fn a_kernel_between_that_touches_nothing_of_the_map_does_not_stop_it() {
        let mut kernels = vec![stores(), kernel("other", vec![]), sigmoid_grad(0)];
        let (order, dropped) = fold_maps(&mut kernels, &[0, 1, 2], &lens(), &[]);
        assert_eq!((order, dropped), (vec![0, 1], vec![2]));
    }
}
