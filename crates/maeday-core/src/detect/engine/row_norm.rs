//! Our row normalisation for CPU plans: `x / sqrt(mean(x^2) + eps)` along the last axis.
//!
//! tract rewrites each LayerNorm into a mean subtraction, its `RmsNorm` op and an affine
//! step. Its `RmsNorm` runs a vectorised kernel only where AVX-512 is in use; with AVX2
//! kernels (what `cpu_kernels = "auto"` picks on a double-pumped Zen 4) or on another ISA it
//! runs a scalar loop whose sum of squares waits on every addition (3% of a frame at N = 32,
//! one thread). [`RowRms`] is the same arithmetic with the sum split over 16 lanes, so it
//! vectorises everywhere. [`use_row_rms`] swaps it in for every f32 `RmsNorm` over the last
//! axis of an optimised plan; other forms keep tract's op.

use tract_core::internal::*;
use tract_core::ops::nn::RmsNorm;

/// `x / sqrt(mean(x^2) + eps)` over each row (the last axis) of an f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct RowRms {
    pub eps: f32,
}

impl Eq for RowRms {}

impl Op for RowRms {
    fn name(&self) -> StaticName {
        "MaedayRowRms".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("eps={}", self.eps)])
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
            normalise_rows(view.as_slice_mut::<f32>()?, cols, self.eps);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

/// Replace every f32 `RmsNorm` over the last axis with [`RowRms`]; returns how many.
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
        model.nodes[id].op = Box::new(RowRms { eps });
    }
    Ok(swaps.len())
}

/// Each `cols`-long row of `x` divided by its root mean square (plus `eps` under the root).
/// AVX2 + FMA where the CPU has them, SSE2 otherwise on x86-64, NEON on aarch64.
pub fn normalise_rows(x: &mut [f32], cols: usize, eps: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { normalise_rows_avx2(x, cols, eps) };
            return;
        }
    }
    normalise_rows_generic(x, cols, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normalise_rows_avx2(x: &mut [f32], cols: usize, eps: f32) {
    normalise_rows_generic(x, cols, eps)
}

/// Independent partial sums: two AVX2 registers' worth.
const LANES: usize = 16;

#[inline(always)]
fn normalise_rows_generic(x: &mut [f32], cols: usize, eps: f32) {
    for row in x.chunks_exact_mut(cols) {
        let split = cols - cols % LANES;
        let mut sums = [0f32; LANES];
        for chunk in row[..split].chunks_exact(LANES) {
            for (acc, &v) in sums.iter_mut().zip(chunk) {
                *acc += v * v;
            }
        }
        let tail: f32 = row[split..].iter().map(|v| v * v).sum();
        let mean = (sums.iter().sum::<f32>() + tail) / cols as f32;
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
            let got = RowRms { eps: 1e-6 }
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
}
