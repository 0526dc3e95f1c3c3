//! `exp` and `ln` as inline Cranelift IR: Cranelift has no instruction for either.
//!
//! Inline polynomials, not calls to an exported Rust `f32::exp`: measured on this machine
//! (cranelift 0.135, `opt_level=speed`, best of 300 runs over 2^18 elements, one thread) the
//! inline `y = exp(x)` took 3.7 ns per element against 4.9 ns for the call, `y = x·x + exp(x) +
//! y·x` 4.1–4.3 against 4.9, and a sigmoid (dominated by its division) 4.9 for both. A call
//! also makes every live `f32` of the loop spill (all xmm registers are caller-saved in the
//! System V ABI), and the polynomial vectorises: the same code builds either an `f32` or an
//! `f32x4` computation ([`Lanes`]), with the same instructions in the same order, so each lane
//! of the vector form is bitwise the scalar result (`vector.rs` relies on it, and tests it).
//!
//! The polynomials are Cephes' `expf` and `logf` (S. L. Moshier, Cephes Math Library), which
//! state a relative error of about 1 ulp in single precision; evaluated with `fma` here. The
//! sweep test below bounds them against `f64` results: see `EXP_MAX_RELATIVE_ERROR` and
//! `LN_MAX_ABSOLUTE_ERROR`.
//!
//! Edge behaviour (documented because it differs slightly from libm):
//! - `exp(x)` is exact-range for `x` in `[EXP_MIN_ARG, EXP_MAX_ARG]`; below it returns `0.0`
//!   (the true value is subnormal, below 1.2e-38); above it returns `+inf` (the true value is
//!   within a factor 1.45 of `f32::MAX` or overflows); `exp(NaN)` is NaN.
//! - `ln(x)` for `x < 0` or NaN is NaN, `ln(±0) = -inf`, `ln(+inf) = +inf`; subnormal inputs
//!   are scaled by 2^23 first, so they get the same accuracy as normal ones.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Endianness, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// The smallest argument whose result is a normal `f32`: ln(2^-126).
pub(crate) const EXP_MIN_ARG: f32 = -87.336_54;
/// The largest argument for which `round(x·log2 e) <= 127`, so that 2^n is a normal `f32`.
pub(crate) const EXP_MAX_ARG: f32 = 88.37;

/// Largest relative error of `exp` over `[EXP_MIN_ARG, EXP_MAX_ARG]` against `f64`, as found by
/// the sweep test.
#[cfg(test)]
const EXP_MAX_RELATIVE_ERROR: f64 = f32::EPSILON as f64; // measured: 8.2e-8
/// Largest error of `ln(x)` against `f64`, relative to `max(|ln x|, 1)` (absolute near x = 1,
/// where ln x is near 0, relative elsewhere), over all positive finite `f32`s, as found by the
/// sweep test.
#[cfg(test)]
const LN_MAX_ERROR: f64 = f32::EPSILON as f64; // measured: 7.9e-8

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in few bits and a correction (Cody and Waite), so that
/// `x - n·ln 2` loses no precision.
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
/// 1.5·2^23: an integer-valued `n` with |n| < 2^22 added to it lands in the mantissa's low bits.
const EXP_MAGIC: f32 = 12_582_912.0;

/// Cephes `expf` (coefficients rounded to `f32`): e^r ≈ 1 + r + r²·P(r) for |r| <= ln(2)/2, highest degree first.
const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

// `translate_sigmoid` relies on an even number of coefficients (its last partial sum is the
// negation of exp's).
const _: () = assert!(EXP_POLY.len().is_multiple_of(2));

/// Cephes `logf` (coefficients rounded to `f32`): ln(1 + f) ≈ f - f²/2 + f³·P(f) for sqrt(1/2) <= 1 + f < sqrt(2).
const LN_POLY: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    0.333_333_3,
];

/// e^x for an `f32` or `f32x4` value `x` (lane-wise: each lane gets exactly the scalar result).
pub(crate) fn translate_exp(b: &mut FunctionBuilder, x: Value) -> Value {
    let mut l = Lanes::of(b, x);
    // x = n·ln 2 + r with n an integer and |r| <= ln(2)/2; e^x = 2^n · e^r.
    let log2_e = l.float(LOG2_E);
    let scaled = l.b.ins().fmul(x, log2_e);
    let n_float = l.b.ins().nearest(scaled);
    let minus_ln2_high = l.float(-LN2_HIGH);
    let minus_ln2_low = l.float(-LN2_LOW);
    let r = l.b.ins().fma(n_float, minus_ln2_high, x);
    let r = l.b.ins().fma(n_float, minus_ln2_low, r);

    let r_squared = l.b.ins().fmul(r, r);
    let poly = l.horner(r, &EXP_POLY);
    let tail = l.b.ins().fma(poly, r_squared, r);
    let one = l.float(1.0);
    let e_r = l.b.ins().fadd(tail, one);

    // Out of range (or NaN) 2^n is meaningless; the result is replaced below.
    let two_to_n = l.two_to_the(n_float);
    let result = l.b.ins().fmul(e_r, two_to_n);

    let max_arg = l.float(EXP_MAX_ARG);
    let too_big = l.b.ins().fcmp(FloatCC::GreaterThan, x, max_arg);
    let infinity = l.float(f32::INFINITY);
    let result = l.select(too_big, infinity, result);
    let min_arg = l.float(EXP_MIN_ARG);
    let too_small = l.b.ins().fcmp(FloatCC::LessThan, x, min_arg);
    let zero = l.float(0.0);
    l.select(too_small, zero, result)
}

/// `1 / (1 + e^−x)` for an `f32` or `f32x4` value `x` (lane-wise, each lane the scalar result):
/// the sigmoid, which `lower::activation` writes as that composition and
/// `Translator::translate_arithmetic` recognises.
///
/// For `−x` in `[EXP_MIN_ARG, EXP_MAX_ARG]` it is bitwise [`translate_exp`] of `−x` then the
/// add and divide, with fewer instructions: the negation is folded into the constants (every
/// intermediate is exactly the composition's or its negation: `fma` and products round the
/// same under a change of sign, so Horner's rule on `−r` with every other coefficient negated
/// gives `±` the same partial sums), and instead of exp's two compare-and-selects for out-of-range
/// arguments `x` is first clamped to that range (`minps`, `maxps`; NaN stays NaN). Outside it:
/// `x > 87.34` gives 1, as before; `x < −88.37` gives `1 / (1 + e^88.37)` ≈ 4.1e−39 where the
/// composition gave 0 (the true value, which PyTorch returns, lies between the two).
/// Measured with `cnnc bench models/lenet.cnn --batch 256 --threads 1 --layers`: see the
/// README's "Other figures".
pub(crate) fn translate_sigmoid(b: &mut FunctionBuilder, x: Value) -> Value {
    let mut l = Lanes::of(b, x);
    // x within [−EXP_MAX_ARG, −EXP_MIN_ARG], written `c < x ? c : x` and `x < c ? c : x` so
    // that x64 emits one `minps`/`maxps` each and a NaN `x` is what comes out.
    let upper = l.float(-EXP_MIN_ARG);
    let above = l.b.ins().fcmp(FloatCC::LessThan, upper, x);
    let x = l.select(above, upper, x);
    let lower = l.float(-EXP_MAX_ARG);
    let below = l.b.ins().fcmp(FloatCC::LessThan, x, lower);
    let x = l.select(below, lower, x);

    // −x = n·ln 2 + r_true; here `r = −r_true`, computed exactly as exp computes `r_true`
    // from `−x` but with every sign flipped.
    let minus_log2_e = l.float(-LOG2_E);
    let scaled = l.b.ins().fmul(x, minus_log2_e);
    let n_float = l.b.ins().nearest(scaled);
    let ln2_high = l.float(LN2_HIGH);
    let ln2_low = l.float(LN2_LOW);
    let r = l.b.ins().fma(n_float, ln2_high, x);
    let r = l.b.ins().fma(n_float, ln2_low, r);

    // Horner on r with the coefficients of odd steps negated: the k-th partial sum is
    // (−1)^k times exp's, so the last (k = 5) is −P(r_true).
    let r_squared = l.b.ins().fmul(r, r);
    let alternating: Vec<f32> = EXP_POLY
        .iter()
        .enumerate()
        .map(|(k, &c)| if k % 2 == 1 { -c } else { c })
        .collect();
    let minus_poly = l.horner(r, &alternating);
    // exp's tail r_true + r_true²·P is the negation of this; e^r_true = 1 + tail.
    let minus_tail = l.b.ins().fma(minus_poly, r_squared, r);
    let one = l.float(1.0);
    let e_r = l.b.ins().fsub(one, minus_tail);

    let two_to_n = l.two_to_the(n_float);
    let e = l.b.ins().fmul(e_r, two_to_n);

    let denominator = l.b.ins().fadd(one, e);
    l.b.ins().fdiv(one, denominator)
}

/// ln x for an `f32` or `f32x4` value `x` (lane-wise: each lane gets exactly the scalar result).
pub(crate) fn translate_ln(b: &mut FunctionBuilder, x: Value) -> Value {
    let mut l = Lanes::of(b, x);
    // Subnormals have no implicit leading bit: scale them into the normal range first.
    let min_normal = l.float(f32::MIN_POSITIVE);
    let subnormal = l.b.ins().fcmp(FloatCC::LessThan, x, min_normal);
    let two_to_23 = l.float(8_388_608.0);
    let x_scaled = l.b.ins().fmul(x, two_to_23);
    let normal_x = l.select(subnormal, x_scaled, x);
    let exponent_shift = l.int(23);
    let no_shift = l.int(0);
    let scale_shift = l.select(subnormal, exponent_shift, no_shift);

    // x = m·2^e with m in [0.5, 1) (frexp), then moved to [sqrt(1/2), sqrt(2)) as 1 + f.
    let bits = l.bitcast(l.int_ty, normal_x);
    let exponent_bits = l.b.ins().ushr_imm_s(bits, 23);
    let exponent_bias = l.int(-126);
    let e = l.b.ins().iadd(exponent_bits, exponent_bias);
    let e = l.b.ins().isub(e, scale_shift);
    let mantissa_mask = l.int(0x007f_ffff);
    let mantissa_bits = l.b.ins().band(bits, mantissa_mask);
    let half_exponent_bits = l.int(0x3f00_0000);
    let half_exponent = l.b.ins().bor(mantissa_bits, half_exponent_bits);
    let m = l.bitcast(l.float_ty, half_exponent);
    let sqrt_half = l.float(std::f32::consts::FRAC_1_SQRT_2);
    let below = l.b.ins().fcmp(FloatCC::LessThan, m, sqrt_half);
    let one = l.float(1.0);
    let twice_m = l.b.ins().fadd(m, m);
    let doubled = l.select(below, twice_m, m);
    let f = l.b.ins().fsub(doubled, one);
    let e = l.decrement_where(below, e);
    let e = l.b.ins().fcvt_from_sint(l.float_ty, e);

    let f_squared = l.b.ins().fmul(f, f);
    let f_cubed = l.b.ins().fmul(f_squared, f);
    let poly = l.horner(f, &LN_POLY);
    let y = l.b.ins().fmul(f_cubed, poly);
    let ln2_low = l.float(LN2_LOW);
    let y = l.b.ins().fma(e, ln2_low, y);
    let minus_half = l.float(-0.5);
    let y = l.b.ins().fma(f_squared, minus_half, y);
    let result = l.b.ins().fadd(f, y);
    let ln2_high = l.float(LN2_HIGH);
    let result = l.b.ins().fma(e, ln2_high, result);

    let zero = l.float(0.0);
    let infinity = l.float(f32::INFINITY);
    let is_infinite = l.b.ins().fcmp(FloatCC::Equal, x, infinity);
    let result = l.select(is_infinite, infinity, result);
    let is_zero = l.b.ins().fcmp(FloatCC::Equal, x, zero);
    let minus_infinity = l.float(f32::NEG_INFINITY);
    let result = l.select(is_zero, minus_infinity, result);
    let negative_or_nan = l.b.ins().fcmp(FloatCC::UnorderedOrLessThan, x, zero);
    let nan = l.float(f32::NAN);
    l.select(negative_or_nan, nan, result)
}

/// The builder with the shape of the values being computed: `f32`/`i32` scalars, or
/// `f32x4`/`i32x4` vectors. The few operations whose form differs between the two (constants,
/// selects on a condition, bit casts) go through here; every arithmetic instruction is the same
/// and rounds the same in each lane as in the scalar, which is what makes vector results
/// bitwise the scalar ones.
struct Lanes<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    float_ty: Type,
    int_ty: Type,
}

impl<'a, 'b> Lanes<'a, 'b> {
    fn of(b: &'a mut FunctionBuilder<'b>, x: Value) -> Self {
        let float_ty = b.func.dfg.value_type(x);
        let int_ty = if float_ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        };
        Self {
            b,
            float_ty,
            int_ty,
        }
    }

    fn float(&mut self, value: f32) -> Value {
        let scalar = self.b.ins().f32const(value);
        self.splat_if_vector(self.float_ty, scalar)
    }

    fn int(&mut self, value: i32) -> Value {
        let scalar = self.b.ins().iconst(types::I32, i64::from(value));
        self.splat_if_vector(self.int_ty, scalar)
    }

    fn splat_if_vector(&mut self, ty: Type, scalar: Value) -> Value {
        if ty.is_vector() {
            self.b.ins().splat(ty, scalar)
        } else {
            scalar
        }
    }

    /// `holds ? a : otherwise`, where `holds` is an `fcmp` result: an `i8` for scalars, an
    /// all-ones/all-zeros lane mask for vectors.
    fn select(&mut self, holds: Value, a: Value, otherwise: Value) -> Value {
        if !self.float_ty.is_vector() {
            return self.b.ins().select(holds, a, otherwise);
        }
        let ty = self.b.func.dfg.value_type(a);
        let mask = if ty == self.int_ty {
            holds
        } else {
            self.bitcast(ty, holds)
        };
        self.b.ins().bitselect(mask, a, otherwise)
    }

    /// `value - 1` where `holds` (an `fcmp` result), else `value`.
    fn decrement_where(&mut self, holds: Value, value: Value) -> Value {
        if self.float_ty.is_vector() {
            // A true lane of the mask is all ones, i.e. -1.
            self.b.ins().iadd(value, holds)
        } else {
            let one_or_zero = self.b.ins().uextend(types::I32, holds);
            self.b.ins().isub(value, one_or_zero)
        }
    }

    fn bitcast(&mut self, ty: Type, value: Value) -> Value {
        // Cranelift requires the lane order of a vector bit cast to be explicit.
        let flags = if ty.is_vector() {
            MemFlagsData::new().with_endianness(Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        self.b.ins().bitcast(ty, flags, value)
    }

    /// 2^n built from its bits, for an integer-valued `n` (as `nearest` gives it). Adding
    /// 1.5·2^23 to n puts n in the low bits of the sum's mantissa (exactly, for |n| < 2^22), so
    /// the biased exponent is those bits minus the sum's own plus 127: two integer operations
    /// where a saturating conversion and a clamp took eleven (the conversion alone is seven on
    /// x64). For n in [-126, 127] the bits are those of 2^n exactly; otherwise (or for NaN) they
    /// are meaningless, and the callers keep such n away or replace the result.
    fn two_to_the(&mut self, n_float: Value) -> Value {
        let magic = self.float(EXP_MAGIC);
        let shifted = self.b.ins().fadd(n_float, magic);
        let shifted_bits = self.bitcast(self.int_ty, shifted);
        let rebias = self.int(127 - EXP_MAGIC.to_bits() as i32);
        let biased = self.b.ins().iadd(shifted_bits, rebias);
        let bits = self.b.ins().ishl_imm_s(biased, 23);
        self.bitcast(self.float_ty, bits)
    }

    /// `coeffs[0]·x^(k-1) + … + coeffs[k-1]` by Horner's rule with fused multiply-adds.
    fn horner(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let (first, rest) = coeffs
            .split_first()
            .expect("a polynomial has a coefficient");
        let mut acc = self.float(*first);
        for &coeff in rest {
            let c = self.float(coeff);
            acc = self.b.ins().fma(acc, x, c);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use crate::jit::{Buffers, Compiled};
    use crate::lower::builder::{cst, exp};
    use crate::lower::loops::{BufId, Expr, Index, Kernel, Loop, Stmt, UnOp, Var};

    /// `y = op(x)` elementwise, through the JIT.
    fn jit_map(op: UnOp, x: &[f32]) -> Vec<f32> {
        jit_expr(|x| Expr::Unary(op, Box::new(x)), x)
    }

    /// `y = f(x)` elementwise, through the JIT (a loop it vectorises, the last `len % 4`
    /// elements computed on scalars).
    fn jit_expr(f: impl Fn(Expr) -> Expr, x: &[f32]) -> Vec<f32> {
        let i = Index {
            terms: vec![(Var(0), 1)],
            offset: 0,
        };
        let value = f(Expr::Load(BufId(0), i.clone()));
        let body = vec![Stmt::Loop(Loop {
            var: Var(0),
            extent: x.len(),
            parallel: false,
            body: vec![Stmt::Store(BufId(1), i, value)],
        })];
        let kernel = Kernel {
            name: "map".to_string(),
            vars: 1,
            locals: 0,
            body,
        };
        let lens = [x.len(), x.len()];
        let compiled = Compiled::new(&[kernel], &lens).expect("kernel compiles");
        let mut bufs = Buffers::new(&lens);
        bufs.get_mut(BufId(0)).copy_from_slice(x);
        compiled.run(0, &mut bufs, 1).expect("kernel runs");
        bufs.get(BufId(1)).to_vec()
    }

    /// Evenly spaced points of `[lo, hi]`.
    fn sweep(lo: f32, hi: f32, count: usize) -> Vec<f32> {
        (0..count)
            .map(|i| lo + (hi - lo) * (i as f32 / (count - 1) as f32))
            .collect()
    }

    #[test]
    fn exp_relative_error_is_within_bound_over_its_range() {
        let x = sweep(super::EXP_MIN_ARG, super::EXP_MAX_ARG, 200_001);
        let y = jit_map(UnOp::Exp, &x);
        let worst = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| {
                let exact = (x as f64).exp();
                ((y as f64 - exact) / exact).abs()
            })
            .fold(0.0, f64::max);
        assert!(
            worst <= super::EXP_MAX_RELATIVE_ERROR,
            "worst relative error {worst:e}"
        );
    }

    #[test]
    fn exp_edges() {
        let y = jit_map(
            UnOp::Exp,
            &[
                0.0,
                -100.0,
                100.0,
                f32::NEG_INFINITY,
                f32::INFINITY,
                f32::NAN,
                1.0,
            ],
        );
        assert_eq!(&y[..5], &[1.0, 0.0, f32::INFINITY, 0.0, f32::INFINITY]);
        assert!(y[5].is_nan());
        assert!((y[6] - std::f32::consts::E).abs() <= 2.0 * f32::EPSILON);
    }

    /// The sigmoid as `lower::activation` writes it (and the JIT recognises), and the same sum
    /// with the add's operands swapped, which the JIT translates as written.
    fn sigmoid(x: Expr) -> Expr {
        cst(1.0) / (cst(1.0) + exp(-x))
    }
    fn sigmoid_as_composed(x: Expr) -> Expr {
        cst(1.0) / (exp(-x) + cst(1.0))
    }

    #[test]
    fn sigmoid_is_bitwise_the_composition_in_range_on_vectors_and_scalars() {
        // 200,003 points: the last three on the scalar path.
        let x = sweep(-super::EXP_MAX_ARG, -super::EXP_MIN_ARG, 200_003);
        let fast = jit_expr(sigmoid, &x);
        let composed = jit_expr(sigmoid_as_composed, &x);
        for ((x, fast), composed) in x.iter().zip(&fast).zip(&composed) {
            assert_eq!(fast.to_bits(), composed.to_bits(), "sigmoid({x})");
        }
    }

    #[test]
    fn sigmoid_edges() {
        let edges = [
            0.0,
            -0.0,
            100.0,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            87.34,
            -88.37,
        ];
        for len in [edges.len(), 4 * edges.len()] {
            // Once with the edges on the scalar path and once on vectors.
            let x: Vec<f32> = edges.iter().copied().cycle().take(len).collect();
            let y = jit_expr(sigmoid, &x);
            for (x, y) in x.iter().zip(&y) {
                match *x {
                    x if x.is_nan() => assert!(y.is_nan()),
                    x if x >= 87.34 => assert_eq!(*y, 1.0, "sigmoid({x})"),
                    0.0 => assert_eq!(*y, 0.5),
                    // 1 / (1 + e^88.37): the clamped argument's value (PyTorch's is the
                    // subnormal true value, 0 beyond about −103.3).
                    x => {
                        assert!(*y > 0.0 && *y < 4.2e-39, "sigmoid({x}) = {y:e}");
                        assert!((y - 1.0 / (1.0 + 88.37f32.exp())).abs() <= 1e-44);
                    }
                }
            }
        }
    }

    #[test]
    fn ln_absolute_error_is_within_bound_from_subnormals_to_the_largest_float() {
        // Log-spaced over 2^-149 .. 2^128, plus a fine sweep around 1 where ln is near 0.
        let mut x: Vec<f32> = (0..200_000)
            .map(|i| (2.0f64.powf(-149.0 + 277.0 * i as f64 / 200_000.0)) as f32)
            .collect();
        x.extend(sweep(0.5, 2.0, 100_001));
        x.retain(|v| *v > 0.0 && v.is_finite());
        let y = jit_map(UnOp::Ln, &x);
        let worst = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| {
                let exact = (x as f64).ln();
                (y as f64 - exact).abs() / exact.abs().max(1.0)
            })
            .fold(0.0, f64::max);
        assert!(worst <= super::LN_MAX_ERROR, "worst error {worst:e}");
    }

    #[test]
    fn ln_edges() {
        let y = jit_map(
            UnOp::Ln,
            &[
                1.0,
                0.0,
                -0.0,
                f32::INFINITY,
                -1.0,
                f32::NAN,
                std::f32::consts::E,
            ],
        );
        assert_eq!(
            &y[..4],
            &[0.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::INFINITY]
        );
        assert!(y[4].is_nan() && y[5].is_nan());
        assert!((y[6] - 1.0).abs() <= f32::EPSILON);
    }
}
