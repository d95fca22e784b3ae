//! Our resize of the last two axes for CPU plans (the bank extractor's bilinear upsampling
//! of its stride-16 features to the stride-8 grid).
//!
//! tract's `Resize` resamples one axis at a time through a generic loop whose innermost
//! run, for the last axis, is one float long: 1.1 ms of the extractor's 15 ms for a
//! `[1, 112, 14, 14] -> [1, 112, 28, 28]` upsampling (1 thread). [`Resample`] takes tract's
//! own per-axis plans (the same source indices and weights, [`Resize::plan_axis`]) and
//! applies them in the same order, rows then columns, with the same additions: its output
//! is tract's bit for bit, only faster (whole rows at a time along the rows' axis, the
//! plan's taps read once per output column). [`use_resample`] swaps it in on a decluttered
//! model, before tract optimises it.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::nn::resize::AxisPlan;
use tract_core::ops::nn::Resize;

use super::rewrite::swap_in;
use super::simd;

/// Resampling of the last two axes of `[.., H, W]` (f32) by tract's plans for each.
#[derive(Clone, Debug)]
pub struct Resample {
    /// The rows' plan (output rows from input rows), then the columns'.
    pub plans: Arc<[AxisPlan; 2]>,
    /// The input's last two axes this op was planned for.
    pub input: [usize; 2],
}

impl PartialEq for Resample {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.plans, &other.plans) && self.input == other.input
    }
}

impl Eq for Resample {}

impl Resample {
    fn output(&self) -> [usize; 2] {
        [
            self.plans[0].extrapolated.len(),
            self.plans[1].extrapolated.len(),
        ]
    }

    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let r = input.len();
        ensure!(
            r >= 2 && input[r - 2..] == self.input,
            "planned for [.., {:?}], got {input:?}",
            self.input
        );
        let mut out: TVec<usize> = input.into();
        out[r - 2..].copy_from_slice(&self.output());
        Ok(out)
    }

    /// One plane `[H, W]` into `[H', W']`: rows, then columns; a tap of weight 0 is
    /// skipped and an extrapolated output is 0, as in tract.
    #[inline(always)]
    fn plane(&self, plane: &[f32], rows: &mut [f32], dst: &mut [f32]) {
        let ([h_out, w_out], w) = (self.output(), self.input[1]);
        let (p, q) = (&self.plans[0], &self.plans[1]);
        for (y, row) in rows.chunks_exact_mut(w).enumerate().take(h_out) {
            row.fill(0.0);
            if p.extrapolated[y] {
                continue;
            }
            let taps = p.indices[y * p.window..][..p.window].iter();
            for (&i, &wt) in taps.zip(&p.weights[y * p.window..][..p.window]) {
                if wt != 0.0 {
                    for (d, s) in row.iter_mut().zip(&plane[i * w..][..w]) {
                        *d += wt * s;
                    }
                }
            }
        }
        for (src, out) in rows.chunks_exact(w).zip(dst.chunks_exact_mut(w_out)) {
            for (x, d) in out.iter_mut().enumerate() {
                *d = 0.0;
                if q.extrapolated[x] {
                    continue;
                }
                let taps = q.indices[x * q.window..][..q.window].iter();
                for (&i, &wt) in taps.zip(&q.weights[x * q.window..][..q.window]) {
                    if wt != 0.0 {
                        *d += wt * src[i];
                    }
                }
            }
        }
    }
}

impl Op for Resample {
    fn name(&self) -> StaticName {
        "MaedayResample".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} -> {:?}", self.input, self.output())])
    }

    op_as_typed_op!();
}

impl TypedOp for Resample {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let Some(shape) = inputs[0].shape.as_concrete() else {
            bail!("a resample needs a concrete input shape")
        };
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

impl EvalOp for Resample {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let mut out = Tensor::zero::<f32>(&shape)?;
        let ([h, w], [ho, wo]) = (self.input, self.output());
        if h * w > 0 && ho * wo > 0 {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let mut rows = vec![0f32; ho * w];
            let planes = from.as_slice::<f32>()?.chunks_exact(h * w);
            for (plane, dst) in planes.zip(to.as_slice_mut::<f32>()?.chunks_exact_mut(ho * wo)) {
                simd::vectorised(|| self.plane(plane, &mut rows, dst));
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Replace every f32 `Resize` that only changes the last two axes of a concrete shape with
/// [`Resample`] on tract's own plans; returns how many. Call it on a decluttered model.
pub fn use_resample(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(op) = resample_of(model, node)? {
            found.push((node.id, op));
        }
    }
    for (id, op) in &found {
        swap_in(model, *id, *id, op.clone())?;
    }
    model.compact()?;
    Ok(found.len())
}

fn resample_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Resample>> {
    let Some(resize) = node.op_as::<Resize>() else {
        return Ok(None);
    };
    let fact = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), Some(out)) = (
        fact.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
    ) else {
        return Ok(None);
    };
    let r = shape.len();
    if fact.datum_type != f32::datum_type() || r < 2 || out.len() != r {
        return Ok(None);
    }
    // The scales tract's eval would use: the scales input when it has one per axis, else
    // output / input sizes.
    let given = resize
        .optional_scales_input
        .and_then(|i| node.inputs.get(i))
        .and_then(|&o| model.outlet_fact(o).ok()?.konst.clone())
        .filter(|s| s.len() == r);
    let scales: TVec<f32> = match given {
        Some(s) => s
            .cast_to::<f32>()?
            .try_as_plain_ram()?
            .as_slice::<f32>()?
            .into(),
        None => out
            .iter()
            .zip(shape)
            .map(|(o, i)| *o as f32 / *i as f32)
            .collect(),
    };
    let untouched = (0..r - 2).all(|a| shape[a] == out[a] && scales[a] == 1.0);
    if !untouched {
        return Ok(None);
    }
    let plan = |a: usize| resize.plan_axis(scales[a], shape[a], out[a]);
    // An axis tract skips (same length, scale 1) is the identity plan.
    let identity = |a: usize| {
        (shape[a] == out[a] && scales[a] == 1.0).then(|| AxisPlan {
            window: 1,
            indices: (0..shape[a]).collect(),
            weights: vec![1.0; shape[a]],
            extrapolated: vec![false; shape[a]],
        })
    };
    let plans = [
        identity(r - 2).unwrap_or_else(|| plan(r - 2)),
        identity(r - 1).unwrap_or_else(|| plan(r - 1)),
    ];
    let valid = plans
        .iter()
        .zip([shape[r - 2], shape[r - 1]])
        .all(|(p, len)| {
            p.indices.iter().all(|&i| i < len) && p.indices.len() == p.window * p.extrapolated.len()
        });
    Ok(valid.then(|| Resample {
        plans: Arc::new(plans),
        input: [shape[r - 2], shape[r - 1]],
    }))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::nn::{CoordTransformer, Interpolator, Nearest};

    use super::*;

    fn model(interpolator: Interpolator, coord: CoordTransformer, to: [usize; 2]) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 3, 7, 10])).unwrap();
        let sizes = tensor1(&[1i64, 3, to[0] as i64, to[1] as i64]);
        let sizes = m.add_const("sizes", sizes).unwrap();
        let op = Resize {
            coord_transformer: coord,
            interpolator,
            nearest: Nearest::Floor,
            optional_scales_input: None,
            optional_sizes_input: Some(1),
        };
        let y = m.wire_node("resize", op, &[x, sizes]).unwrap();
        m.select_output_outlets(&y).unwrap();
        m
    }

    /// tract's own Resize and ours, bit for bit: bilinear up and down, nearest, cubic.
    #[test]
    fn resamples_match_tract_bit_for_bit() {
        let input: Vec<f32> = (0..3 * 70)
            .map(|i| ((i * 29) % 97) as f32 / 13.0 - 3.0)
            .collect();
        let input = Tensor::from_shape(&[1, 3, 7, 10], &input).unwrap();
        for (interpolator, coord, to) in [
            (Interpolator::Linear, CoordTransformer::HalfPixel, [14, 20]),
            (
                Interpolator::Linear,
                CoordTransformer::PytorchHalfPixel,
                [5, 23],
            ),
            (Interpolator::Linear, CoordTransformer::AlignCorners, [7, 4]),
            (
                Interpolator::Nearest,
                CoordTransformer::Asymmetric,
                [14, 10],
            ),
            (Interpolator::Cubic, CoordTransformer::HalfPixel, [9, 13]),
        ] {
            let theirs = model(interpolator.clone(), coord.clone(), to);
            let mut ours = theirs.clone();
            assert_eq!(use_resample(&mut ours).unwrap(), 1);
            let run = |m: TypedModel| {
                let plan = m.into_optimized().unwrap().into_runnable().unwrap();
                plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
                    .clone()
                    .into_tensor()
            };
            let (want, got) = (run(theirs), run(ours));
            assert_eq!(want.shape(), got.shape());
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.to_plain_array_view::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&want), bits(&got), "{interpolator:?} {coord:?} {to:?}");
        }
    }
}
