//! Our row normalisation for CPU plans: `x / sqrt(mean(x^2) + eps)` along the last axis,
//! optionally after subtracting each row's mean (a LayerNorm without its affine step).
//!
//! tract rewrites each LayerNorm into a mean subtraction (`Reduce<Sum>`, a multiplication by
//! `1/n`, a subtraction), its `RmsNorm` op and an affine step. Its `RmsNorm` runs a
//! vectorised kernel only where AVX-512 is in use; with AVX2 kernels (what
//! `cpu_kernels = "auto"` picks on a double-pumped Zen 4) or on another ISA it runs a scalar
//! loop whose sum of squares waits on every addition (3% of a frame at N = 32, one thread),
//! and its `Reduce<Sum>` over the last axis is scalar everywhere (2%). [`RowRms`] is the
//! same arithmetic with the sums split over 16 lanes, so it vectorises everywhere.
//! [`use_row_rms`] swaps it in for every f32 `RmsNorm` over the last axis of an optimised
//! plan, and takes over the mean subtraction in front of it where it has tract's shape;
//! other forms keep tract's ops.

use tract_core::internal::*;
use tract_core::ops::binary::{OptBinByScalar, TypedBinOp};
use tract_core::ops::konst::Const;
use tract_core::ops::math::{Mul, Sub};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};
use tract_linalg::BinOp;

/// `x / sqrt(mean(x^2) + eps)` over each row (the last axis) of an f32 tensor; with
/// `centre: Some(c)`, `x` is first replaced by `x - c * sum(x)` (`c = 1 / row length`: the
/// graph's own constant, so the mean is the product tract computed).
#[derive(Clone, Debug, PartialEq)]
pub struct RowRms {
    pub eps: f32,
    pub centre: Option<f32>,
}

impl Eq for RowRms {}

impl Op for RowRms {
    fn name(&self) -> StaticName {
        "MaedayRowRms".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![match self.centre {
            Some(c) => format!("eps={}, centred (mean = {c} x sum)", self.eps),
            None => format!("eps={}", self.eps),
        }])
    }

    op_as_typed_op!();
}

impl TypedOp for RowRms {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        ensure!(inputs[0].rank() > 0, "a row norm needs an axis");
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

impl EvalOp for RowRms {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.into_tensor();
        let cols = *t.shape().last().context("a row norm needs an axis")?;
        if cols > 0 {
            let mut view = t.try_as_plain_ram_mut()?;
            normalise_rows(view.as_slice_mut::<f32>()?, cols, self.eps, self.centre);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

/// Replace every f32 `RmsNorm` over the last axis with [`RowRms`], taking over the mean
/// subtraction in front of it where tract left one ([`centring`]); returns how many norms.
pub fn use_row_rms(model: &mut TypedModel) -> TractResult<usize> {
    let mut swaps = Vec::new();
    for node in model.nodes() {
        let Some(norm) = node.op_as::<RmsNorm>() else {
            continue;
        };
        let fact = model.outlet_fact(node.inputs[0])?;
        if fact.datum_type == f32::datum_type()
            && fact.rank() > 0
            && norm.axis == fact.rank() - 1
            && norm.eps.len() == 1
        {
            swaps.push((node.id, norm.eps.cast_to_scalar::<f32>()?));
        }
    }
    for &(id, eps) in &swaps {
        let op = RowRms { eps, centre: None };
        match centring(model, id)? {
            Some((x, c)) => {
                let mut patch = TypedModelPatch::default();
                let tap = patch.tap_model(model, x)?;
                let name = model.node(id).name.clone();
                let op = RowRms {
                    centre: Some(c),
                    ..op
                };
                let out = patch.wire_node(name, op, &[tap])?;
                patch.shunt_outside(model, OutletId::new(id, 0), out[0])?;
                patch.apply(model)?;
            }
            None => model.nodes[id].op = Box::new(op),
        }
    }
    model.compact()?;
    Ok(swaps.len())
}

/// Whether node `norm`'s input is tract's form of `x - mean(x)` over the last axis,
/// `OptSubByScalar(x, OptMulByScalar(Reduce<Sum>(x), c))` read by nothing else; if so, `x`
/// and `c`.
fn centring(model: &TypedModel, norm: usize) -> TractResult<Option<(OutletId, f32)>> {
    let outputs = model.output_outlets()?;
    // The node behind `outlet` when only `norm`'s chain reads it.
    let private = |outlet: OutletId| {
        (model.outlet_successors(outlet).len() == 1 && !outputs.contains(&outlet))
            .then(|| model.node(outlet.node))
    };
    let Some(sub) = private(model.node(norm).inputs[0]) else {
        return Ok(None);
    };
    // `a op b` with `b` broadcast along the last axis: tract's optimised form, or (for
    // small shapes, which it leaves alone) its plain binary op.
    let by_scalar = |node: &TypedNode, op: BinOp| {
        let optimised = node
            .op_as::<OptBinByScalar>()
            .is_some_and(|o| o.linalg_op == op);
        let plain = node.op_as::<TypedBinOp>().is_some_and(|o| match op {
            BinOp::Sub => o.0.is::<Sub>(),
            BinOp::Mul => o.0.is::<Mul>(),
            _ => false,
        });
        (optimised || plain) && node.inputs.len() == 2
    };
    if !by_scalar(sub, BinOp::Sub) {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], sub.inputs[1]);
    let Some(mul) = private(mean).filter(|m| by_scalar(m, BinOp::Mul)) else {
        return Ok(None);
    };
    let Some(sum) = private(mul.inputs[0]) else {
        return Ok(None);
    };
    let rank = model.outlet_fact(x)?.rank();
    let sums_last = sum.op_as::<Reduce>().is_some_and(|r| {
        r.reducer == Reducer::Sum && r.axes.as_slice() == [rank - 1] && sum.inputs == [x]
    });
    let c = model
        .node(mul.inputs[1].node)
        .op_as::<Const>()
        .map(|k| k.val());
    match c {
        Some(c) if sums_last && c.len() == 1 && c.datum_type() == f32::datum_type() => {
            Ok(Some((x, c.cast_to_scalar::<f32>()?)))
        }
        _ => Ok(None),
    }
}

/// Each `cols`-long row of `x` divided by its root mean square (plus `eps` under the root),
/// after subtracting `centre * sum(row)` when `centre` is given. AVX2 + FMA where the CPU
/// has them, SSE2 otherwise on x86-64, NEON on aarch64.
pub fn normalise_rows(x: &mut [f32], cols: usize, eps: f32, centre: Option<f32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { normalise_rows_avx2(x, cols, eps, centre) };
            return;
        }
    }
    normalise_rows_generic(x, cols, eps, centre)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normalise_rows_avx2(x: &mut [f32], cols: usize, eps: f32, centre: Option<f32>) {
    normalise_rows_generic(x, cols, eps, centre)
}

/// Independent partial sums: two AVX2 registers' worth.
const LANES: usize = 16;

/// `f(v)` summed over `row` in [`LANES`] partial sums (then the tail).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let split = row.len() - row.len() % LANES;
    let mut sums = [0f32; LANES];
    for chunk in row[..split].chunks_exact(LANES) {
        for (acc, &v) in sums.iter_mut().zip(chunk) {
            *acc += f(v);
        }
    }
    let tail: f32 = row[split..].iter().map(|&v| f(v)).sum();
    sums.iter().sum::<f32>() + tail
}

#[inline(always)]
fn normalise_rows_generic(x: &mut [f32], cols: usize, eps: f32, centre: Option<f32>) {
    for row in x.chunks_exact_mut(cols) {
        if let Some(c) = centre {
            let mean = lane_sum(row, |v| v) * c;
            for v in row.iter_mut() {
                *v -= mean;
            }
        }
        let mean = lane_sum(row, |v| v * v) / cols as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_tracts_rms_norm() {
        for cols in [192usize, 128, 7] {
            let rows = 5;
            let mut s = 3u64;
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
                })
                .collect();
            let x = Tensor::from_shape(&[1, rows, cols], &data).unwrap();
            let theirs = RmsNorm {
                axis: 2,
                eps: Arc::new(tensor0(1e-6f32)),
            };
            let ctx = EvalContext::out_of_plan();
            let want = theirs
                .eval(&ctx, tvec!(x.clone().into_tvalue()))
                .unwrap()
                .remove(0);
            let got = RowRms {
                eps: 1e-6,
                centre: None,
            }
            .eval(&ctx, tvec!(x.into_tvalue()))
            .unwrap()
            .remove(0);
            let want = want.to_plain_array_view::<f32>().unwrap();
            let got = got.to_plain_array_view::<f32>().unwrap();
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{cols}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn only_f32_last_axis_norms_are_swapped() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 8])).unwrap();
        let eps = Arc::new(tensor0(1e-5f32));
        let last = RmsNorm {
            axis: 2,
            eps: eps.clone(),
        };
        let a = model.wire_node("last", last, &[x]).unwrap()[0];
        let b = model
            .wire_node("middle", RmsNorm { axis: 1, eps }, &[a])
            .unwrap()[0];
        model.select_output_outlets(&[b]).unwrap();
        assert_eq!(use_row_rms(&mut model).unwrap(), 1);
        let names: Vec<String> = model.nodes().iter().map(|n| n.op().name().into()).collect();
        assert_eq!(names, ["Source", "MaedayRowRms", "RmsNorm"]);
    }

    /// A LayerNorm's core as tract's optimiser leaves it (sum, times 1/n, subtract, RmsNorm)
    /// becomes one centred [`RowRms`] with the same output.
    #[test]
    fn the_mean_subtraction_is_taken_over() {
        let (rows, cols) = (6usize, 40usize);
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, rows, cols])).unwrap();
        let sum = Reduce::new(tvec![2], Reducer::Sum);
        let s = model.wire_node("sum", sum, &[x]).unwrap()[0];
        let c = model
            .add_const("c", tensor3(&[[[1.0 / cols as f32]]]))
            .unwrap();
        let m = model
            .wire_node("mean", tract_core::ops::math::mul(), &[s, c])
            .unwrap()[0];
        let d = model
            .wire_node("centred", tract_core::ops::math::sub(), &[x, m])
            .unwrap()[0];
        let eps = Arc::new(tensor0(1e-5f32));
        let n = model
            .wire_node("norm", RmsNorm { axis: 2, eps }, &[d])
            .unwrap()[0];
        model.select_output_outlets(&[n]).unwrap();
        let mut model = model.into_optimized().unwrap();
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 40.0) * 0.3)
            .collect();
        let input = Tensor::from_shape(&[1, rows, cols], &data).unwrap();
        let run = |m: &TypedModel| {
            let out = m
                .clone()
                .into_runnable()
                .unwrap()
                .run(tvec!(input.clone().into_tvalue()));
            out.unwrap().remove(0).into_tensor()
        };
        let want = run(&model);
        assert_eq!(use_row_rms(&mut model).unwrap(), 1);
        let names: Vec<String> = model.nodes().iter().map(|n| n.op().name().into()).collect();
        assert_eq!(names, ["Source", "MaedayRowRms"]);
        let got = run(&model);
        let (g, w) = (
            got.to_plain_array_view::<f32>().unwrap(),
            want.to_plain_array_view::<f32>().unwrap(),
        );
        for (g, w) in g.iter().zip(w.iter()) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}
