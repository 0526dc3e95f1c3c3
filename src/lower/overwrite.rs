//! Gradient zeroing that the first writer makes unnecessary.
//!
//! Backward kernels add into gradients (`dx[i] += …`), so the plan zeroes every gradient just
//! before its first use (`memory::sink_initialisers`). When that first user writes every
//! element the zeroing wrote exactly once, and nothing else (a pooling's input gradient with
//! windows that tile the input, a crop, a dense layer's input gradient), the zeroing is
//! wasted work: a pass over memory that the next kernel covers anyway. [`skip_zeroing`] drops
//! it and makes the first user store instead of add:
//! - `b[i] += e` becomes `b[i] = 0.0 + e` (the same addition onto the zero it would have read,
//!   so the stored bits are the same, `-0.0` included);
//! - a contraction's `acc = b[o]` before its `b[o] = f(acc)` becomes `acc = 0.0` (the zero it
//!   would have loaded: the element is written once, after this load).
//!
//! The check is exact, by enumerating both kernels' write indices (affine in the loop
//! variables), and conservative: a write under an `if`, any other read of the buffer, an
//! element written twice or not written, or more than [`MAX_ENUMERATED`] iterations, and the
//! zeroing stays.

use super::loops::{
    visit_cond_uses, visit_expr_uses, visit_uses, BinOp, BufId, Cond, Expr, Index, Kernel, Stmt,
    Use, Var,
};

/// Above this many written elements (kernel iterations) the check is not attempted; the
/// largest LeNet gradient at batch 256 is 1.2M elements, a ResNet-18 one at batch 8 1.6M.
const MAX_ENUMERATED: usize = 1 << 24;

/// The backward order without the zeroing kernels whose buffer's first user covers it, and
/// those kernels (indices into `kernels`, which now have no use). The first users are
/// rewritten in `kernels` to store instead of add.
pub fn skip_zeroing(
    kernels: &mut [Kernel],
    order: &[usize],
    lens: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let mut kept = Vec::with_capacity(order.len());
    let mut dropped = Vec::new();
    for (position, &z) in order.iter().enumerate() {
        let Some(buf) = zeroed_buffer(&kernels[z]) else {
            kept.push(z);
            continue;
        };
        // The first later kernel touching the buffer (other zeroings may come between).
        let first_user = order[position + 1..]
            .iter()
            .copied()
            .find(|&k| touches(&kernels[k].body, buf));
        let covered = first_user.and_then(|k| {
            let len = *lens.get(buf.0 as usize)?;
            covering_rewrite(&kernels[z], &kernels[k], buf, len).map(|body| (k, body))
        });
        match covered {
            Some((k, body)) => {
                kernels[k].body = body;
                dropped.push(z);
            }
            None => kept.push(z),
        }
    }
    (kept, dropped)
}

/// The one buffer `kernel` stores `0.0` into, when that is all it does.
fn zeroed_buffer(kernel: &Kernel) -> Option<BufId> {
    let mut target = None;
    let mut only_zeros = true;
    walk(&kernel.body, &mut |stmt| match stmt {
        Stmt::Store(buf, _, Expr::Const(c)) if *c == 0.0 && c.is_sign_positive() => {
            if target.is_some_and(|t| t != *buf) {
                only_zeros = false;
            }
            target = Some(*buf);
        }
        Stmt::Loop(_) => {}
        _ => only_zeros = false,
    });
    target.filter(|_| only_zeros)
}

/// Whether any statement or expression of `stmts` reads or writes `buf`.
fn touches(stmts: &[Stmt], buf: BufId) -> bool {
    let mut found = false;
    visit_uses(stmts, &mut |item| {
        found |= matches!(item, Use::Load(b) | Use::Store(b) | Use::Accumulate(b) if b == buf);
    });
    found
}

/// `user`'s body rewritten to store instead of add, when it writes exactly the elements
/// `zeroing` zeroes, each once, and reads `buf` only as a contraction's initial value at the
/// element it then writes.
fn covering_rewrite(zeroing: &Kernel, user: &Kernel, buf: BufId, len: usize) -> Option<Vec<Stmt>> {
    let mut zero_sites = Vec::new();
    sites(&zeroing.body, buf, &mut Vec::new(), &mut zero_sites)?;
    let mut user_sites = Vec::new();
    sites(&user.body, buf, &mut Vec::new(), &mut user_sites)?;
    let exact = match (intervals(&zero_sites, len), intervals(&user_sites, len)) {
        (Some(zeroed), Some(written)) => same_cover(zeroed, written),
        // A loop the index does not move with writes its elements more than once (a sum
        // over output channels into an input gradient): no need to count.
        _ if user_sites.iter().any(repeats) => false,
        // As many writes as zeroed elements is needed for each to be written once (overlapping
        // pooling windows write more).
        _ if writes(&user_sites) != writes(&zero_sites) => false,
        _ => enumerated_cover(&zero_sites, &user_sites, len)?,
    };
    if !exact {
        return None;
    }
    rewrite(&user.body, buf)
}

/// Whether `kernel` stores every element of `buf` (`0..len`) exactly once, outside any `if`,
/// and neither reads it nor adds into it (`map.rs` folds a map of `buf` into such a kernel).
pub(super) fn stores_each_once(kernel: &Kernel, buf: BufId, len: usize) -> bool {
    let mut plain_stores = true;
    visit_uses(&kernel.body, &mut |item| {
        plain_stores &= !matches!(item, Use::Load(b) | Use::Accumulate(b) if b == buf);
    });
    let mut written = Vec::new();
    if !plain_stores || sites(&kernel.body, buf, &mut Vec::new(), &mut written).is_none() {
        return false;
    }
    match intervals(&written, len) {
        Some(runs) => same_cover(vec![(0, len)], runs),
        None if written.iter().any(repeats) => false,
        None => {
            let mut count = vec![0u8; len];
            let enumerated = for_each_index(&written, len, &mut |i| {
                count[i] = count[i].saturating_add(1)
            });
            enumerated.is_some() && count.iter().all(|&c| c == 1)
        }
    }
}

/// Whether the `written` runs are disjoint and cover exactly what the `zeroed` runs cover.
fn same_cover(mut zeroed: Vec<(usize, usize)>, mut written: Vec<(usize, usize)>) -> bool {
    zeroed.sort_unstable();
    written.sort_unstable();
    if written.windows(2).any(|w| w[0].1 > w[1].0) {
        return false;
    }
    // Both as unions of maximal runs: adjacent or overlapping runs joined.
    let union = |runs: Vec<(usize, usize)>| {
        let mut joined: Vec<(usize, usize)> = Vec::new();
        for (start, end) in runs.into_iter().filter(|(s, e)| s < e) {
            match joined.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => joined.push((start, end)),
            }
        }
        joined
    };
    union(zeroed) == union(written)
}

/// The writes as runs `[start, end)` of consecutive elements, when they form runs: each site
/// a lattice `offset + Σ coeff·var`, sites that differ only in their offset joined into one
/// lattice when their offsets form a box (a pooling's window taps written as statements of
/// their own), then each lattice's dimensions chained when each stride is the span of the
/// ones below it (a pooling's taps and outputs over a tiled row make one run). `None` when
/// that does not work out, or an element would be written twice.
fn intervals(sites: &[Site], len: usize) -> Option<Vec<(usize, usize)>> {
    // Sites with the same dimensions, and their offsets.
    let mut lattices: Vec<(Dims, Vec<i64>)> = Vec::new();
    for site in sites {
        let (dims, offset) = lattice(site)?;
        match lattices.iter_mut().find(|(d, _)| *d == dims) {
            Some((_, offsets)) => offsets.push(offset),
            None => lattices.push((dims, vec![offset])),
        }
    }
    lattices
        .into_iter()
        .map(|(mut dims, mut offsets)| {
            if dims.iter().any(|&(_, extent)| extent == 0) {
                return Some((0, 0));
            }
            offsets.sort_unstable();
            let start = offsets[0];
            let relative: Vec<i64> = offsets.iter().map(|o| o - start).collect();
            dims.extend(box_dims(&relative)?);
            dims.sort_unstable();
            let mut span = 1usize;
            for (coeff, extent) in dims {
                if coeff != i64::try_from(span).ok()? {
                    return None;
                }
                span = span.checked_mul(extent)?;
            }
            let start = usize::try_from(start).ok()?;
            let end = start.checked_add(span).filter(|&end| end <= len)?;
            Some((start, end))
        })
        .collect()
}

/// How many writes the sites make (`None` past `usize`).
fn writes(sites: &[Site]) -> Option<usize> {
    (sites.iter()).try_fold(0usize, |total, site| total.checked_add(site.count()?))
}

/// Whether a loop of more than one iteration around the site leaves its index unchanged.
fn repeats(site: &Site) -> bool {
    (site.loops.iter()).any(|&(var, extent)| extent > 1 && site.coefficient(var) == 0)
}

/// Whether every variable of the site's index is one of its loops'.
fn uses_only_its_loops(site: &Site) -> bool {
    (site.index.terms.iter()).all(|(v, _)| site.loops.iter().any(|(w, _)| w == v))
}

/// `(coefficient, extent)` of the loops a write moves with, sorted.
type Dims = Vec<(i64, usize)>;

/// A site's writes as `(dims, offset)`: the index's coefficient and extent of each enclosing
/// loop of more than one iteration, sorted; `None` when a coefficient is not positive (an
/// element written twice) or the index uses a variable of no enclosing loop.
fn lattice(site: &Site) -> Option<(Dims, i64)> {
    if !uses_only_its_loops(site) {
        return None;
    }
    let mut dims = Vec::new();
    for &(var, extent) in &site.loops {
        let coeff = site.coefficient(var);
        match extent {
            0 => return Some((vec![(1, 0)], 0)),
            1 => {}
            _ if coeff <= 0 => return None,
            _ => dims.push((coeff, extent)),
        }
    }
    dims.sort_unstable();
    Some((dims, site.index.offset))
}

/// `offsets` (sorted, the first 0) as a box `{Σ k_i·stride_i : k_i < extent_i}`, returned as
/// `(stride, extent)` pairs; `None` when they are not one (or repeat an offset).
fn box_dims(offsets: &[i64]) -> Option<Vec<(i64, usize)>> {
    if offsets.len() == 1 {
        return Some(Vec::new());
    }
    let stride = offsets[1] - offsets[0];
    if stride <= 0 {
        return None;
    }
    let extent = (1..)
        .take_while(|k| offsets.binary_search(&(k * stride)).is_ok())
        .count()
        + 1;
    // Every offset belongs to exactly one run `x, x + stride, …` of `extent` starting at an
    // offset no run has taken yet, smallest first.
    let mut taken = vec![false; offsets.len()];
    let mut starts = Vec::new();
    for i in 0..offsets.len() {
        if taken[i] {
            continue;
        }
        starts.push(offsets[i] - offsets[0]);
        for k in 0..extent as i64 {
            let j = offsets.binary_search(&(offsets[i] + k * stride)).ok()?;
            if taken[j] {
                return None;
            }
            taken[j] = true;
        }
    }
    let mut dims = vec![(stride, extent)];
    dims.extend(box_dims(&starts)?);
    Some(dims)
}

/// [`same_cover`] by enumerating every written index; `None` when it cannot be decided (an
/// index out of bounds or too many elements).
fn enumerated_cover(zero_sites: &[Site], user_sites: &[Site], len: usize) -> Option<bool> {
    let mut zeroed = vec![false; len];
    for_each_index(zero_sites, len, &mut |i| zeroed[i] = true)?;
    let mut written = vec![0u8; len];
    for_each_index(user_sites, len, &mut |i| {
        written[i] = written[i].saturating_add(1)
    })?;
    Some(zeroed.iter().zip(&written).all(|(&z, &w)| w == u8::from(z)))
}

/// A write of the buffer: the loops around it (outermost first) and its index.
struct Site<'a> {
    loops: Vec<(Var, usize)>,
    index: &'a Index,
}

impl Site<'_> {
    /// The index's coefficient of `var` (0 when the index does not move with it).
    fn coefficient(&self, var: Var) -> i64 {
        (self.index.terms.iter().filter(|(v, _)| *v == var))
            .map(|(_, c)| c)
            .sum()
    }

    /// How many times the site writes (`None` past `usize`).
    fn count(&self) -> Option<usize> {
        (self.loops.iter()).try_fold(1usize, |n, &(_, extent)| n.checked_mul(extent))
    }
}

/// Collects the writes of `buf` in `stmts`; `None` if one is under an `if`.
fn sites<'a>(
    stmts: &'a [Stmt],
    buf: BufId,
    loops: &mut Vec<(Var, usize)>,
    out: &mut Vec<Site<'a>>,
) -> Option<()> {
    for stmt in stmts {
        match stmt {
            Stmt::Loop(lp) => {
                loops.push((lp.var, lp.extent));
                sites(&lp.body, buf, loops, out)?;
                loops.pop();
            }
            Stmt::If(_, body) if touches(body, buf) => return None,
            Stmt::Store(b, index, _) | Stmt::Accumulate(b, index, _) if *b == buf => {
                out.push(Site {
                    loops: loops.clone(),
                    index,
                });
            }
            _ => {}
        }
    }
    Some(())
}

/// Calls `visit` with every element index the sites write, once per write; `None` when an
/// index falls outside `0..len`, a site's index uses a variable of no enclosing loop, or the
/// writes number more than [`MAX_ENUMERATED`].
fn for_each_index(sites: &[Site], len: usize, visit: &mut impl FnMut(usize)) -> Option<()> {
    let mut total = 0usize;
    for site in sites {
        let count = site.count()?;
        total = total.checked_add(count)?;
        if total > MAX_ENUMERATED || !uses_only_its_loops(site) {
            return None;
        }
        // Coefficient of each enclosing loop, innermost last.
        let coeffs: Vec<i64> = (site.loops.iter())
            .map(|&(v, _)| site.coefficient(v))
            .collect();
        if count == 0 {
            continue;
        }
        let levels = site.loops.len();
        let mut counters = vec![0usize; levels];
        let mut index = site.index.offset;
        'elements: loop {
            visit(usize::try_from(index).ok().filter(|&i| i < len)?);
            // Odometer: step the innermost loop, carrying outwards.
            let mut level = levels;
            loop {
                if level == 0 {
                    break 'elements;
                }
                level -= 1;
                counters[level] += 1;
                index += coeffs[level];
                if counters[level] < site.loops[level].1 {
                    break;
                }
                index -= coeffs[level] * counters[level] as i64;
                counters[level] = 0;
            }
        }
    }
    Some(())
}

/// `stmts` with every `buf[i] += e` made `buf[i] = 0.0 + e` and every contraction initial value
/// `acc = buf[o]` (followed in the same body by a store to `buf[o]`) made `acc = 0.0`; `None`
/// if `buf` is read anywhere else.
fn rewrite(stmts: &[Stmt], buf: BufId) -> Option<Vec<Stmt>> {
    let mut out = Vec::with_capacity(stmts.len());
    for (k, stmt) in stmts.iter().enumerate() {
        let new = match stmt {
            Stmt::Loop(lp) => {
                let mut lp = lp.clone();
                lp.body = rewrite(&lp.body, buf)?;
                Stmt::Loop(lp)
            }
            Stmt::If(cond, body) => {
                if touches(body, buf) || cond_reads(cond, buf) {
                    return None;
                }
                stmt.clone()
            }
            Stmt::Accumulate(b, index, value) if *b == buf => {
                if expr_reads(value, buf) {
                    return None;
                }
                let zero_plus = Expr::Binary(
                    BinOp::Add,
                    Box::new(Expr::Const(0.0)),
                    Box::new(value.clone()),
                );
                Stmt::Store(buf, index.clone(), zero_plus)
            }
            Stmt::Let(local, Expr::Load(b, index)) if *b == buf => {
                let stored_later = stmts[k + 1..]
                    .iter()
                    .any(|s| matches!(s, Stmt::Store(b, o, _) if *b == buf && o == index));
                if !stored_later {
                    return None;
                }
                Stmt::Let(*local, Expr::Const(0.0))
            }
            Stmt::Store(_, _, value) | Stmt::Accumulate(_, _, value) | Stmt::Let(_, value) => {
                if expr_reads(value, buf) {
                    return None;
                }
                stmt.clone()
            }
        };
        out.push(new);
    }
    Some(out)
}

/// Whether `expr` loads from `buf`.
fn expr_reads(expr: &Expr, buf: BufId) -> bool {
    let mut found = false;
    visit_expr_uses(expr, &mut |item| found |= item == Use::Load(buf));
    found
}

/// Whether `cond` loads from `buf`.
fn cond_reads(cond: &Cond, buf: BufId) -> bool {
    let mut found = false;
    visit_cond_uses(cond, &mut |item| found |= item == Use::Load(buf));
    found
}

/// Calls `visit` for every statement of `stmts`, loops' bodies included.
fn walk(stmts: &[Stmt], visit: &mut impl FnMut(&Stmt)) {
    for stmt in stmts {
        visit(stmt);
        match stmt {
            Stmt::Loop(lp) => walk(&lp.body, visit),
            Stmt::If(_, body) => walk(body, visit),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::interp;
    use crate::lower::loops::test_builders::index;
    use crate::lower::loops::Local;

    const DX: BufId = BufId(0);
    const DY: BufId = BufId(1);

    /// A loop, the top-level one (`Var(0)`) parallel.
    fn lp(var: u32, extent: usize, body: Vec<Stmt>) -> Stmt {
        crate::lower::loops::test_builders::lp(var, extent, var == 0, body)
    }

    fn kernel(name: &str, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name: name.into(),
            vars: 4,
            locals: 1,
            body,
        }
    }

    /// `dx[0..len] = 0`.
    fn zeroing(len: usize) -> Kernel {
        kernel(
            "dx.zero_grad",
            vec![lp(
                0,
                len,
                vec![Stmt::Store(DX, index(&[(0, 1)], 0), Expr::Const(0.0))],
            )],
        )
    }

    /// An average pooling's input gradient over a row of `4` outputs with windows of `size`
    /// at `stride`: `dx[stride·i + k] += dy[i] / size`.
    fn pool_backward(size: usize, stride: i64) -> Kernel {
        let value = Expr::Binary(
            BinOp::Div,
            Box::new(Expr::Load(DY, index(&[(0, 1)], 0))),
            Box::new(Expr::Const(size as f32)),
        );
        kernel(
            "pool.backward_input",
            vec![lp(
                0,
                4,
                vec![lp(
                    1,
                    size,
                    vec![Stmt::Accumulate(
                        DX,
                        index(&[(0, stride), (1, 1)], 0),
                        value,
                    )],
                )],
            )],
        )
    }

    /// Runs `order` of `kernels` on `dx` poisoned with NaN and `dy` with signed values
    /// (`-0.0` among them), and returns `dx`.
    fn run(kernels: &[Kernel], order: &[usize], dx_len: usize) -> Vec<f32> {
        let mut bufs = vec![vec![f32::NAN; dx_len], vec![1.5, -0.0, -2.25, 0.0]];
        for &k in order {
            interp::run(&kernels[k], &mut bufs).expect("kernel runs");
        }
        bufs.swap_remove(0)
    }

    fn skip(kernels: &mut [Kernel], dx_len: usize) -> (Vec<usize>, Vec<usize>) {
        skip_zeroing(kernels, &[0, 1], &[dx_len, 4])
    }

    #[test]
    fn tiling_windows_store_and_the_zeroing_goes_with_the_same_bits() {
        let original = vec![zeroing(8), pool_backward(2, 2)];
        let mut kernels = original.clone();
        let (order, dropped) = skip(&mut kernels, 8);
        assert_eq!((order.as_slice(), dropped.as_slice()), (&[1][..], &[0][..]));
        let Stmt::Loop(outer) = &kernels[1].body[0] else {
            panic!()
        };
        let Stmt::Loop(inner) = &outer.body[0] else {
            panic!()
        };
        assert!(
            matches!(&inner.body[0], Stmt::Store(DX, _, Expr::Binary(BinOp::Add, zero, _)) if **zero == Expr::Const(0.0))
        );
        let before: Vec<u32> = run(&original, &[0, 1], 8)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let after: Vec<u32> = run(&kernels, &order, 8)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(before, after);
        assert_eq!(
            f32::from_bits(after[2]).to_bits(),
            0.0f32.to_bits(),
            "0.0 + -0.0 is +0.0"
        );
    }

    #[test]
    fn overlapping_or_partial_writes_keep_the_zeroing() {
        // Windows of 3 at stride 2 overlap: dx[2] gets two contributions.
        let mut kernels = vec![zeroing(9), pool_backward(3, 2)];
        assert_eq!(skip(&mut kernels, 9).1, Vec::<usize>::new());
        // Windows of 2 at stride 3 leave every third element unwritten.
        let mut kernels = vec![zeroing(12), pool_backward(2, 3)];
        assert_eq!(skip(&mut kernels, 12).1, Vec::<usize>::new());
        assert!(matches!(
            kernels[1].body[0],
            Stmt::Loop(ref l) if matches!(l.body[0], Stmt::Loop(ref m) if matches!(m.body[0], Stmt::Accumulate(..)))
        ));
    }

    #[test]
    fn a_guarded_write_or_another_read_keeps_the_zeroing() {
        let guarded = kernel(
            "guarded",
            vec![lp(
                0,
                8,
                vec![Stmt::If(
                    Cond::InBounds(index(&[(0, 1)], 0), 8),
                    vec![Stmt::Accumulate(DX, index(&[(0, 1)], 0), Expr::Const(1.0))],
                )],
            )],
        );
        let mut kernels = vec![zeroing(8), guarded];
        assert!(skip(&mut kernels, 8).1.is_empty());
        let reads_neighbour = kernel(
            "reads",
            vec![lp(
                0,
                8,
                vec![Stmt::Accumulate(
                    DX,
                    index(&[(0, 1)], 0),
                    Expr::Load(DX, index(&[(0, 1)], 0)),
                )],
            )],
        );
        let mut kernels = vec![zeroing(8), reads_neighbour];
        assert!(skip(&mut kernels, 8).1.is_empty());
    }

    #[test]
    fn a_contraction_starting_from_the_zeroed_element_starts_from_zero() {
        // dx[i] = Σ_j dy[j]·dy[j] + dx[i], as a dense layer's input gradient is written.
        let acc = Local(0);
        let at_i = index(&[(0, 1)], 0);
        let user = kernel(
            "dense.backward_input",
            vec![lp(
                0,
                4,
                vec![
                    Stmt::Let(acc, Expr::Load(DX, at_i.clone())),
                    lp(
                        1,
                        4,
                        vec![Stmt::Let(
                            acc,
                            Expr::Fma(
                                Box::new(Expr::Load(DY, index(&[(1, 1)], 0))),
                                Box::new(Expr::Load(DY, index(&[(1, 1)], 0))),
                                Box::new(Expr::Local(acc)),
                            ),
                        )],
                    ),
                    Stmt::Store(DX, at_i, Expr::Local(acc)),
                ],
            )],
        );
        let original = vec![zeroing(4), user];
        let mut kernels = original.clone();
        let (order, dropped) = skip(&mut kernels, 4);
        assert_eq!(dropped, vec![0]);
        let Stmt::Loop(outer) = &kernels[1].body[0] else {
            panic!()
        };
        assert_eq!(outer.body[0], Stmt::Let(acc, Expr::Const(0.0)));
        assert_eq!(run(&original, &[0, 1], 4), run(&kernels, &order, 4));
    }

    #[test]
    fn window_taps_written_as_separate_statements_are_counted_one_by_one() {
        // dx[2i] += dy[i]; dx[2i + 1] += dy[i]: no statement writes a run, together they tile.
        let tap = |offset| {
            Stmt::Accumulate(
                DX,
                index(&[(0, 2)], offset),
                Expr::Load(DY, index(&[(0, 1)], 0)),
            )
        };
        let user = kernel("taps", vec![lp(0, 4, vec![tap(0), tap(1)])]);
        let original = vec![zeroing(8), user];
        let mut kernels = original.clone();
        let (order, dropped) = skip(&mut kernels, 8);
        assert_eq!(dropped, vec![0]);
        assert_eq!(run(&original, &[0, 1], 8), run(&kernels, &order, 8));
        // The same taps over 9 elements leave the last one to the zeroing.
        let mut kernels = original.clone();
        kernels[0] = zeroing(9);
        assert!(skip(&mut kernels, 9).1.is_empty());
    }

    #[test]
    fn a_zeroing_that_no_kernel_follows_stays() {
        let mut kernels = vec![zeroing(4)];
        let (order, dropped) = skip_zeroing(&mut kernels, &[0], &[4, 4]);
        assert_eq!((order, dropped), (vec![0], vec![]));
    }
}
