//! Constructors that keep the op lowerings short: a kernel's allocator of loop variables and
//! locals (which remembers each variable's extent, so that padding guards that can never fail
//! are left out), row-major tensor views over buffers, and arithmetic on [`Index`] and [`Expr`].

use std::ops::{Add, Div, Mul, Neg, Sub};

use super::loops::{BinOp, BufId, CmpOp, Cond, Expr, Index, Kernel, Local, Loop, Stmt, UnOp, Var};

/// Allocates the loop variables and locals of one kernel.
pub struct KernelBuilder {
    name: String,
    /// Extent of each variable allocated so far, indexed by `Var`.
    extents: Vec<usize>,
    locals: u32,
}

impl KernelBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        KernelBuilder {
            name: name.into(),
            extents: Vec::new(),
            locals: 0,
        }
    }

    /// A fresh loop variable that will run over `0..extent`.
    pub fn var(&mut self, extent: usize) -> Var {
        self.extents.push(extent);
        Var(self.extents.len() as u32 - 1)
    }

    /// One fresh variable per extent, in order.
    /// The extent `var` was made with.
    pub fn extent(&self, var: Var) -> usize {
        self.extents[var.0 as usize]
    }

    pub fn vars(&mut self, extents: &[usize]) -> Vec<Var> {
        extents.iter().map(|&e| self.var(e)).collect()
    }

    pub fn local(&mut self) -> Local {
        self.locals += 1;
        Local(self.locals - 1)
    }

    /// `for var in 0..extent { body }`.
    pub fn for_(&self, var: Var, body: Vec<Stmt>) -> Stmt {
        self.looped(var, false, body)
    }

    /// The kernel's top-level loop, whose iterations the runtime may run on different threads.
    pub fn parallel_for(&self, var: Var, body: Vec<Stmt>) -> Stmt {
        self.looped(var, true, body)
    }

    /// Loops over `vars`, outermost first, around `body`.
    pub fn nest(&self, vars: &[Var], body: Vec<Stmt>) -> Vec<Stmt> {
        vars.iter()
            .rev()
            .fold(body, |body, &var| vec![self.for_(var, body)])
    }

    /// `body(kb, first, width)` for `0..len` cut into blocks of `width = block` starting at
    /// `first`, the blocks a top-level parallel loop, then one block of the rest (`len % block`)
    /// run on one thread: the top-level statements of a kernel that copies in cache-line blocks.
    pub fn in_blocks(
        &mut self,
        len: usize,
        block: usize,
        body: impl Fn(&mut KernelBuilder, Index, usize) -> Vec<Stmt>,
    ) -> Vec<Stmt> {
        let (blocks, tail) = (len / block, len % block);
        let mut stmts = Vec::new();
        if blocks > 0 {
            let outer = self.var(blocks);
            let per_block = body(self, ix(outer) * block as i64, block);
            stmts.push(self.parallel_for(outer, per_block));
        }
        if tail > 0 {
            let first = Index {
                terms: Vec::new(),
                offset: (blocks * block) as i64,
            };
            stmts.extend(body(self, first, tail));
        }
        stmts
    }

    /// `body` under the guard `0 <= index < bound` for every pair, leaving out the pairs that
    /// hold for every value of the loop variables (so unpadded layers carry no test).
    pub fn guarded(&self, bounds: &[(Index, usize)], body: Vec<Stmt>) -> Vec<Stmt> {
        let cond = bounds
            .iter()
            .filter(|(index, bound)| !self.always_within(index, *bound))
            .map(|(index, bound)| Cond::InBounds(index.clone(), *bound as i64))
            .reduce(|a, b| Cond::And(Box::new(a), Box::new(b)));
        match cond {
            Some(cond) => vec![Stmt::If(cond, body)],
            None => body,
        }
    }

    pub fn finish(self, body: Vec<Stmt>) -> Kernel {
        Kernel {
            name: self.name,
            vars: self.extents.len() as u32,
            locals: self.locals,
            body,
        }
    }

    fn looped(&self, var: Var, parallel: bool, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop(Loop {
            var,
            extent: self.extents[var.0 as usize],
            parallel,
            body,
        })
    }

    /// Whether `0 <= index < bound` for every value of its variables (an empty loop counts as
    /// in bounds: its body never runs).
    fn always_within(&self, index: &Index, bound: usize) -> bool {
        let (mut lo, mut hi) = (index.offset, index.offset);
        for &(var, coeff) in &index.terms {
            let last = self.extents[var.0 as usize] as i64 - 1;
            if last < 0 {
                return true;
            }
            lo += (coeff * last).min(0);
            hi += (coeff * last).max(0);
        }
        lo >= 0 && hi < bound as i64
    }
}

/// A contraction nest (the shape `loops` documents under "Contraction nests"): for each row
/// `i` and lane `j`, `acc = init`, then `acc = fma(a, b, acc)` over the reduction variables in
/// order (outermost first), then `out[at] = epilogue(acc)`.
pub struct Contraction {
    /// The rows loop, if any, and whether it is the kernel's top-level parallel loop.
    pub rows: Option<(Var, bool)>,
    pub lanes: Var,
    pub reductions: Vec<Var>,
    pub init: Expr,
    pub a: Expr,
    pub b: Expr,
    pub out: Tensor,
    pub at: Vec<Index>,
}

impl KernelBuilder {
    /// The loops of `c`, with a fresh accumulator; `epilogue` maps the sum to the stored value.
    pub fn contraction(&mut self, c: Contraction, epilogue: impl FnOnce(Expr) -> Expr) -> Stmt {
        let acc = self.local();
        let step = set(acc, fma(c.a, c.b, local(acc)));
        let lane = [
            vec![set(acc, c.init)],
            self.nest(&c.reductions, vec![step]),
            vec![c.out.store(&c.at, epilogue(local(acc)))],
        ]
        .concat();
        let lanes = self.for_(c.lanes, lane);
        match c.rows {
            None => lanes,
            Some((rows, parallel)) => self.looped(rows, parallel, vec![lanes]),
        }
    }
}

/// Top-level loops over `0..extent` in chunks of `chunk` rows, so that a rows loop sits inside
/// a parallel loop with enough iterations for every thread: `for c (parallel) { nest }` with
/// row `c·chunk + i`, then, for the rest, a nest whose rows loop is itself parallel. `nest`
/// gets the rows variable, the row index and whether the rows loop is the parallel one.
pub fn row_chunks(
    kb: &mut KernelBuilder,
    extent: usize,
    chunk: usize,
    mut nest: impl FnMut(&mut KernelBuilder, Var, Index, bool) -> Stmt,
) -> Vec<Stmt> {
    let (full, rest) = (extent / chunk, extent % chunk);
    let mut top = Vec::new();
    if full > 0 {
        let (c, i) = (kb.var(full), kb.var(chunk));
        let body = nest(kb, i, ix(c) * chunk as i64 + ix(i), false);
        top.push(kb.parallel_for(c, vec![body]));
    }
    if rest > 0 {
        let i = kb.var(rest);
        top.push(nest(kb, i, ix(i) + (full * chunk) as i64, true));
    }
    top
}

/// A scratch buffer a lowering asks the plan for: its name within the node (the buffer is
/// called `<node>.<name>`) and its dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct ScratchSpec {
    pub name: &'static str,
    pub dims: Vec<usize>,
}

/// The scratch buffers the plan declared for one node, by name. Kernels fill a scratch buffer
/// right before the kernel that reads it, in the same schedule, so the runtime never fills one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scratch(Vec<(&'static str, Tensor)>);

impl Scratch {
    pub fn new(buffers: Vec<(&'static str, Tensor)>) -> Scratch {
        Scratch(buffers)
    }

    /// Buffers `first, first + 1, ..` for `specs`, in order (for tests that build their own table).
    pub fn numbered(first: u32, specs: &[ScratchSpec]) -> Scratch {
        Scratch(
            specs
                .iter()
                .zip(first..)
                .map(|(s, buf)| (s.name, Tensor::new(BufId(buf), s.dims.clone())))
                .collect(),
        )
    }

    /// The buffer `name`. Lowerings ask only for what their `scratch` function declared for the
    /// same layer, so a missing name is a bug in the lowering, not in the user's network.
    pub fn get(&self, name: &str) -> &Tensor {
        self.try_get(name)
            .unwrap_or_else(|| panic!("scratch buffer {name} was not declared"))
    }

    /// The buffer `name`, if it was declared.
    pub fn try_get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }
}

/// A buffer seen as a row-major tensor (batch axis first for activations).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub buf: BufId,
    pub dims: Vec<usize>,
}

impl Tensor {
    pub fn new(buf: BufId, dims: Vec<usize>) -> Self {
        Tensor { buf, dims }
    }

    /// The same buffer with other dimensions of the same element count (e.g. `[N, C, ΠS]`).
    pub fn view(&self, dims: Vec<usize>) -> Tensor {
        debug_assert_eq!(
            dims.iter().product::<usize>(),
            self.dims.iter().product::<usize>()
        );
        Tensor {
            buf: self.buf,
            dims,
        }
    }

    /// `[N, E]`: one row per sample (element-wise ops, dense, losses).
    pub fn rows(&self) -> Tensor {
        let per_sample = self.dims[1..].iter().product();
        self.view(vec![self.dims[0], per_sample])
    }

    /// `[N, C, P]`: the channel axis between the batch and the flattened spatial positions
    /// (per-channel ops; `P = 1` for vectors).
    pub fn channels_view(&self) -> Tensor {
        let positions = self.dims[2..].iter().product();
        self.view(vec![self.dims[0], self.dims[1], positions])
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The linear element index of `coords` (one per dimension).
    pub fn at(&self, coords: &[Index]) -> Index {
        debug_assert_eq!(coords.len(), self.dims.len());
        // Outermost axis first, so dumps read like the tensor's indexing.
        let mut strides = vec![1i64; self.dims.len()];
        for d in (1..self.dims.len()).rev() {
            strides[d - 1] = strides[d] * self.dims[d] as i64;
        }
        coords
            .iter()
            .zip(strides)
            .fold(Index::default(), |linear, (coord, stride)| {
                linear + coord.clone() * stride
            })
    }

    pub fn load(&self, coords: &[Index]) -> Expr {
        Expr::Load(self.buf, self.at(coords))
    }

    pub fn store(&self, coords: &[Index], value: Expr) -> Stmt {
        Stmt::Store(self.buf, self.at(coords), value)
    }

    pub fn accumulate(&self, coords: &[Index], value: Expr) -> Stmt {
        Stmt::Accumulate(self.buf, self.at(coords), value)
    }
}

/// The input position `o·stride + k·dilation − pad_before` of each spatial axis of a window.
pub fn window_positions(
    out: &[Var],
    window: &[Var],
    stride: &[usize],
    dilation: &[usize],
    pad_before: &[usize],
) -> Vec<Index> {
    (0..out.len())
        .map(|d| {
            ix(out[d]) * stride[d] as i64 + ix(window[d]) * dilation[d] as i64
                - pad_before[d] as i64
        })
        .collect()
}

/// The row-major offset of a window position inside its window (`Σ k_d · Π_{e>d} K_e`).
pub fn window_offset(window: &[Var], extents: &[usize]) -> Index {
    let coords: Vec<Index> = window.iter().map(|&k| ix(k)).collect();
    Tensor::new(BufId(0), extents.to_vec()).at(&coords)
}

/// The index `var`.
pub fn ix(var: Var) -> Index {
    Index {
        terms: vec![(var, 1)],
        offset: 0,
    }
}

/// The constant index `c`.
pub fn ic(c: i64) -> Index {
    Index {
        terms: Vec::new(),
        offset: c,
    }
}

/// Variables as indices, for `Tensor::at`.
pub fn ixs(vars: &[Var]) -> Vec<Index> {
    vars.iter().map(|&v| ix(v)).collect()
}

impl Add for Index {
    type Output = Index;
    /// Sums two affine indices, merging the terms of a shared variable.
    fn add(mut self, other: Index) -> Index {
        for (var, coeff) in other.terms {
            match self.terms.iter_mut().find(|(v, _)| *v == var) {
                Some((_, c)) => *c += coeff,
                None => self.terms.push((var, coeff)),
            }
        }
        self.terms.retain(|&(_, c)| c != 0);
        self.offset += other.offset;
        self
    }
}

impl Add<i64> for Index {
    type Output = Index;
    fn add(mut self, c: i64) -> Index {
        self.offset += c;
        self
    }
}

impl Sub<i64> for Index {
    type Output = Index;
    fn sub(self, c: i64) -> Index {
        self + -c
    }
}

impl Sub for Index {
    type Output = Index;
    fn sub(self, other: Index) -> Index {
        self + other * -1
    }
}

impl Mul<i64> for Index {
    type Output = Index;
    fn mul(mut self, k: i64) -> Index {
        for (_, c) in &mut self.terms {
            *c *= k;
        }
        self.terms.retain(|&(_, c)| c != 0);
        self.offset *= k;
        self
    }
}

fn binary(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::Binary(op, Box::new(a), Box::new(b))
}

impl Add for Expr {
    type Output = Expr;
    fn add(self, b: Expr) -> Expr {
        binary(BinOp::Add, self, b)
    }
}

impl Sub for Expr {
    type Output = Expr;
    fn sub(self, b: Expr) -> Expr {
        binary(BinOp::Sub, self, b)
    }
}

impl Mul for Expr {
    type Output = Expr;
    fn mul(self, b: Expr) -> Expr {
        binary(BinOp::Mul, self, b)
    }
}

impl Div for Expr {
    type Output = Expr;
    fn div(self, b: Expr) -> Expr {
        binary(BinOp::Div, self, b)
    }
}

impl Neg for Expr {
    type Output = Expr;
    fn neg(self) -> Expr {
        Expr::Unary(UnOp::Neg, Box::new(self))
    }
}

pub fn cst(c: f32) -> Expr {
    Expr::Const(c)
}

pub fn local(l: Local) -> Expr {
    Expr::Local(l)
}

pub fn max(a: Expr, b: Expr) -> Expr {
    binary(BinOp::Max, a, b)
}

pub fn exp(a: Expr) -> Expr {
    Expr::Unary(UnOp::Exp, Box::new(a))
}

pub fn ln(a: Expr) -> Expr {
    Expr::Unary(UnOp::Ln, Box::new(a))
}

pub fn sqrt(a: Expr) -> Expr {
    Expr::Unary(UnOp::Sqrt, Box::new(a))
}

pub fn abs(a: Expr) -> Expr {
    Expr::Unary(UnOp::Abs, Box::new(a))
}

/// `a·b + c` with one rounding.
pub fn fma(a: Expr, b: Expr, c: Expr) -> Expr {
    Expr::Fma(Box::new(a), Box::new(b), Box::new(c))
}

pub fn cmp(op: CmpOp, a: Expr, b: Expr) -> Cond {
    Cond::Cmp(op, Box::new(a), Box::new(b))
}

/// `if cond { a } else { b }`; both arms are evaluated, so neither may load out of bounds.
pub fn select(cond: Cond, a: Expr, b: Expr) -> Expr {
    Expr::Select(Box::new(cond), Box::new(a), Box::new(b))
}

/// `l = value`
pub fn set(l: Local, value: Expr) -> Stmt {
    Stmt::Let(l, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_index_is_row_major() {
        let t = Tensor::new(BufId(3), vec![2, 3, 4]);
        let index = t.at(&[ix(Var(0)), ix(Var(1)) + 1, ic(2)]);
        assert_eq!(index.terms, vec![(Var(0), 12), (Var(1), 4)]);
        assert_eq!(index.offset, 6);
    }

    #[test]
    fn index_arithmetic_merges_and_drops_zero_terms() {
        let a = ix(Var(0)) * 3 + ix(Var(1)) - 2;
        let b = a.clone() - ix(Var(1));
        assert_eq!(a.terms, vec![(Var(0), 3), (Var(1), 1)]);
        assert_eq!(b.terms, vec![(Var(0), 3)]);
        assert_eq!(b.offset, -2);
    }

    #[test]
    fn guards_that_always_hold_are_left_out() {
        let mut kb = KernelBuilder::new("k");
        let (o, k) = (kb.var(4), kb.var(3));
        let body = vec![Stmt::Let(Local(0), cst(1.))];
        // o + k ranges over 0..=5: needs no test against 6, needs one against 5 and with padding.
        assert_eq!(kb.guarded(&[(ix(o) + ix(k), 6)], body.clone()), body);
        assert!(matches!(
            kb.guarded(&[(ix(o) + ix(k), 5)], body.clone())[..],
            [Stmt::If(Cond::InBounds(_, 5), _)]
        ));
        assert!(matches!(
            kb.guarded(&[(ix(o) + ix(k) - 1, 6), (ix(o), 4)], body)[..],
            [Stmt::If(Cond::InBounds(_, 6), _)]
        ));
    }
}
