//! Our box sum (`SumPool`, e.g. a 3x3 average pool) for CPU plans, stride 1.
//!
//! tract's `OptSumPool` walks every output's window through its generic patch machinery:
//! 1.05 ms of the bank extractor's 3x3 mean over `[1, 152, 28, 28]` features (1 thread,
//! ~2 GFLOP/s). A stride-1 box sum is separable: [`BoxSum`] sums each row's window, then
//! each column's window of those sums, and divides by the window's size (or by how many of
//! its taps fall inside the input, as ONNX's `count_include_pad = 0` asks). [`use_box_sum`]
//! swaps it in on a decluttered model, before tract optimises it.

use tract_core::internal::*;
use tract_core::ops::cnn::{PaddingSpec, SumPool};
use tract_core::ops::nn::DataFormat;

use super::simd;

/// Sums over a `kernel`-sized window, stride 1, over the last two axes of `[.., H, W]`
/// (f32), with `pad` zero rows / columns before and after; `normalize` divides by the
/// window's size, or with `!count_include_pad` by its taps inside the input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BoxSum {
    pub kernel: [usize; 2],
    /// `[before, after]` per axis (rows, columns).
    pub pad: [[usize; 2]; 2],
    pub normalize: bool,
    pub count_include_pad: bool,
}

impl BoxSum {
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let r = input.len();
        ensure!(r >= 2, "a box sum needs [.., H, W], got {input:?}");
        let mut out: TVec<usize> = input.into();
        for a in 0..2 {
            let padded = input[r - 2 + a] + self.pad[a][0] + self.pad[a][1];
            ensure!(padded >= self.kernel[a], "{self:?} does not fit {input:?}");
            out[r - 2 + a] = padded - self.kernel[a] + 1;
        }
        Ok(out)
    }
}

impl Op for BoxSum {
    fn name(&self) -> StaticName {
        "MaedayBoxSum".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl TypedOp for BoxSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let Some(shape) = inputs[0].shape.as_concrete() else {
            bail!("a box sum needs a concrete input shape")
        };
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

impl EvalOp for BoxSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let r = shape.len();
        let (hw, o) = (
            [input.shape()[r - 2], input.shape()[r - 1]],
            [shape[r - 2], shape[r - 1]],
        );
        let mut out = Tensor::zero::<f32>(&shape)?;
        {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let (from, to) = (from.as_slice::<f32>()?, to.as_slice_mut::<f32>()?);
            if hw[0] * hw[1] > 0 && o[0] * o[1] > 0 {
                let planes = from.chunks_exact(hw[0] * hw[1]);
                let divisors = self.divisors(hw, o);
                for (plane, dst) in planes.zip(to.chunks_exact_mut(o[0] * o[1])) {
                    simd::vectorised(|| self.plane(plane, hw, o, divisors.as_deref(), dst));
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl BoxSum {
    /// Input indices under each output index of axis `a` (`len` long): `start..end`.
    fn taps(&self, a: usize, outputs: usize, len: usize) -> Vec<(usize, usize)> {
        (0..outputs)
            .map(|i| {
                let start = i.saturating_sub(self.pad[a][0]);
                let end = (i + self.kernel[a]).saturating_sub(self.pad[a][0]).min(len);
                (start, end.max(start))
            })
            .collect()
    }

    /// What each output is divided by (`[H', W']`), or `None` without normalisation.
    fn divisors(&self, hw: [usize; 2], o: [usize; 2]) -> Option<Vec<f32>> {
        if !self.normalize {
            return None;
        }
        let (rows_at, cols_at) = (self.taps(0, o[0], hw[0]), self.taps(1, o[1], hw[1]));
        let full = self.kernel[0] * self.kernel[1];
        let count = |(a, b): (usize, usize), (c, d): (usize, usize)| {
            let n = if self.count_include_pad {
                full
            } else {
                (b - a) * (d - c)
            };
            n.max(1) as f32
        };
        let rows = rows_at.iter();
        Some(
            rows.flat_map(|&r| cols_at.iter().map(move |&c| count(r, c)))
                .collect(),
        )
    }

    /// One plane: each row's window sums (the row copied between zero pads, then the
    /// kernel's shifted copies added), then the columns' sums of those, then the divisors.
    #[inline(always)]
    fn plane(
        &self,
        plane: &[f32],
        hw: [usize; 2],
        o: [usize; 2],
        divisors: Option<&[f32]>,
        dst: &mut [f32],
    ) {
        let [h, w] = hw;
        let ([top, _], [left, _]) = (self.pad[0], self.pad[1]);
        let mut padded = vec![0f32; o[1] + self.kernel[1] - 1];
        let mut sums = vec![0f32; h * o[1]];
        for (src, sums) in plane.chunks_exact(w).zip(sums.chunks_exact_mut(o[1])) {
            let n = w.min(padded.len().saturating_sub(left));
            padded[left..left + n].copy_from_slice(&src[..n]);
            for j in 0..self.kernel[1] {
                for (s, v) in sums.iter_mut().zip(&padded[j..j + o[1]]) {
                    *s += v;
                }
            }
        }
        for (y, out) in dst.chunks_exact_mut(o[1]).enumerate() {
            out.fill(0.0);
            let rows = y.saturating_sub(top)..(y + self.kernel[0]).saturating_sub(top).min(h);
            for r in rows {
                for (d, s) in out.iter_mut().zip(&sums[r * o[1]..][..o[1]]) {
                    *d += s;
                }
            }
        }
        if let Some(divisors) = divisors {
            dst.iter_mut().zip(divisors).for_each(|(d, n)| *d /= n);
        }
    }
}

/// Replace every stride-1, undilated, 2-D f32 `SumPool` over channels-first data with
/// [`BoxSum`]; returns how many. Call it on a decluttered model, before `into_optimized`.
pub fn use_box_sum(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(op) = box_sum_of(model, node)? {
            found.push((node.id, op));
        }
    }
    for (id, op) in &found {
        model.nodes[*id].op = Box::new(op.clone());
    }
    Ok(found.len())
}

fn box_sum_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<BoxSum>> {
    let Some(pool) = node.op_as::<SumPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    let fact = model.outlet_fact(node.inputs[0])?;
    let rank = match spec.data_format {
        DataFormat::NCHW => 4,
        DataFormat::CHW => 3,
        _ => return Ok(None),
    };
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type()
        || shape.len() != rank
        || spec.kernel_shape.len() != 2
        || spec.strides().iter().any(|&s| s != 1)
        || spec.dilations().iter().any(|&d| d != 1)
    {
        return Ok(None);
    }
    let k = [spec.kernel_shape[0], spec.kernel_shape[1]];
    let same = |a: usize, upper: bool| {
        let total = k[a] - 1;
        let small = total / 2;
        if upper {
            [small, total - small]
        } else {
            [total - small, small]
        }
    };
    let pad = match &spec.padding {
        PaddingSpec::Valid => [[0, 0], [0, 0]],
        PaddingSpec::SameUpper => [same(0, true), same(1, true)],
        PaddingSpec::SameLower => [same(0, false), same(1, false)],
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => {
            [[b[0], a[0]], [b[1], a[1]]]
        }
        _ => return Ok(None),
    };
    let op = BoxSum {
        kernel: k,
        pad,
        normalize: pool.normalize,
        count_include_pad: pool.count_include_pad,
    };
    // Only where our geometry gives tract's own output shape.
    let want = node.outputs[0].fact.shape.as_concrete();
    let same_shape = op.output_shape(shape).ok().as_deref() == want;
    Ok(same_shape.then_some(op))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::PoolSpec;

    use super::*;

    fn pool(padding: PaddingSpec, count_include_pad: bool, normalize: bool) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 3, 11, 9])).unwrap();
        let op = SumPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 5],
                padding,
                dilations: None,
                strides: None,
                input_channels: 3,
                output_channels: 3,
            },
            count_include_pad,
            normalize,
        };
        let y = m.wire_node("pool", op, &[x]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// tract's own `OptSumPool` and ours on the same input: every padding we take, with
    /// and without the count of taps inside.
    #[test]
    fn box_sums_match_tract() {
        let input: Vec<f32> = (0..3 * 11 * 9)
            .map(|i| ((i * 37) % 101) as f32 / 17.0 - 2.0)
            .collect();
        let input = Tensor::from_shape(&[1, 3, 11, 9], &input).unwrap();
        for padding in [
            PaddingSpec::SameUpper,
            PaddingSpec::SameLower,
            PaddingSpec::Valid,
            PaddingSpec::Explicit(tvec![0, 2], tvec![2, 1]),
        ] {
            for (count_include_pad, normalize) in [(false, true), (true, true), (false, false)] {
                let theirs = pool(padding.clone(), count_include_pad, normalize);
                let mut ours = theirs.clone();
                assert_eq!(use_box_sum(&mut ours).unwrap(), 1);
                let run = |m: TypedModel| {
                    let plan = m.into_optimized().unwrap().into_runnable().unwrap();
                    plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
                        .clone()
                        .into_tensor()
                };
                let (want, got) = (run(theirs), run(ours));
                assert_eq!(want.shape(), got.shape(), "{padding:?}");
                let (want, got) = (
                    want.to_plain_array_view::<f32>().unwrap().to_owned(),
                    got.to_plain_array_view::<f32>().unwrap().to_owned(),
                );
                let worst = want
                    .iter()
                    .zip(got.iter())
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst < 1e-5,
                    "{padding:?} {count_include_pad} {normalize}: {worst}"
                );
            }
        }
    }
}
