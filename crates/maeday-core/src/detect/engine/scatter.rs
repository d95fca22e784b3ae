//! `ScatterElements` as runs of the axes after the scattered one.
//!
//! The MAE's decoder puts the 49 encoded patches of each mask back among the mask tokens
//! with an ONNX `ScatterElements` (`[32, 49, 128]` updates into `[32, 196, 128]` at N = 32).
//! tract's op walks the updates one element at a time through n-dimensional indexing:
//! 7.1-8.1 ms a frame (1 thread, N = 32, the 2-core Zen 4), as much as 13 of the frame's
//! LayerNorm cores. [`Scatter`] views data, indices and updates as `[outer, axis, inner]`
//! and copies the updates' inner runs, checking every index.

use tract_core::internal::*;
use tract_core::ops::array::{ScatterElements, ScatterReduction};

/// `out = data; out[.., indices[.., u, ..], ..] = updates[.., u, ..]` along `axis` (ONNX
/// `ScatterElements` without reduction), for f32 and f16 data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scatter {
    pub axis: usize,
}

impl Op for Scatter {
    fn name(&self) -> StaticName {
        "MaedayScatter".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis {}", self.axis)])
    }

    op_as_typed_op!();
}

impl TypedOp for Scatter {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3 && inputs[0].datum_type == inputs[2].datum_type);
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }

    as_op!();
}

impl EvalOp for Scatter {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (data, indices, updates) = args_3!(inputs);
        let mut out = data.into_tensor();
        let indices = indices.cast_to::<i64>()?;
        match out.datum_type() {
            DatumType::F32 => scatter::<f32>(&mut out, &indices, &updates, self.axis)?,
            DatumType::F16 => scatter::<f16>(&mut out, &indices, &updates, self.axis)?,
            dt => bail!("MaedayScatter runs f32 and f16 data, not {dt:?}"),
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The scatter itself on `out` (the data, written in place).
fn scatter<T: Datum + Copy>(
    out: &mut Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: usize,
) -> TractResult<()> {
    let (shape, upd) = (out.shape().to_vec(), updates.shape().to_vec());
    let r = shape.len();
    let same_elsewhere = (0..r).all(|a| a == axis || shape[a] == upd[a]);
    ensure!(
        axis < r && upd.len() == r && indices.shape() == &upd[..] && same_elsewhere,
        "scatter along axis {axis}: data {shape:?}, indices {:?}, updates {upd:?}",
        indices.shape()
    );
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let (len, count) = (shape[axis], upd[axis]);
    let from = updates.try_as_plain_ram()?;
    let from = from.as_slice::<T>()?;
    let at = indices.try_as_plain_ram()?;
    let at = at.as_slice::<i64>()?;
    let mut to = out.try_as_plain_ram_mut()?;
    let to = to.as_slice_mut::<T>()?;
    for o in 0..outer {
        for u in 0..count {
            let run = (o * count + u) * inner;
            for (i, &index) in at[run..run + inner].iter().enumerate() {
                let index = if index < 0 { index + len as i64 } else { index };
                ensure!(
                    (0..len as i64).contains(&index),
                    "scatter index {index} outside 0..{len}"
                );
                to[(o * len + index as usize) * inner + i] = from[run + i];
            }
        }
    }
    Ok(())
}

/// Replace every `ScatterElements` without reduction over f32 or f16 data with [`Scatter`];
/// returns how many. Call it on an optimised model.
pub fn use_scatter(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<ScatterElements>() else {
            continue;
        };
        let dt = model.outlet_fact(node.inputs[0])?.datum_type;
        if op.reduction == ScatterReduction::None && matches!(dt, DatumType::F32 | DatumType::F16) {
            found.push((node.id, op.axis));
        }
    }
    for &(id, axis) in &found {
        let node = model.node(id);
        let patch =
            TypedModelPatch::replace_single_op(model, node, &node.inputs, Scatter { axis })?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder's shape (cut down) against tract's own op, with negative indices; an
    /// index out of range is an error.
    #[test]
    fn scatter_matches_tracts_op() {
        let (b, len, count, c) = (3, 11, 4, 5);
        let data: Vec<f32> = (0..b * len * c).map(|i| -(i as f32)).collect();
        let updates: Vec<f32> = (0..b * count * c).map(|i| i as f32 * 0.5).collect();
        // Each row of the updates to a distinct place, some written as negative indices.
        let mut indices = Vec::new();
        for bi in 0..b {
            for u in 0..count {
                let place = ((u * 3 + bi) % len) as i64;
                for ci in 0..c {
                    indices.push(if (u + ci) % 2 == 0 {
                        place
                    } else {
                        place - len as i64
                    });
                }
            }
        }
        let data = Tensor::from_shape(&[b, len, c], &data).unwrap();
        let updates = Tensor::from_shape(&[b, count, c], &updates).unwrap();
        let at = indices;
        let indices = Tensor::from_shape(&[b, count, c], &at).unwrap();
        let inputs = || {
            tvec![
                data.clone().into_tvalue(),
                indices.clone().into_tvalue(),
                updates.clone().into_tvalue()
            ]
        };
        let theirs = ScatterElements::new(1, ScatterReduction::None);
        let ctx = EvalContext::out_of_plan();
        let want = theirs.eval(&ctx, inputs()).unwrap();
        let got = Scatter { axis: 1 }.eval(&ctx, inputs()).unwrap();
        assert_eq!(got[0], want[0]);
        let mut far_at = at.clone();
        far_at[7] = len as i64;
        let far = Tensor::from_shape(&[b, count, c], &far_at).unwrap();
        let bad = tvec![data.into_tvalue(), far.into_tvalue(), updates.into_tvalue()];
        let err = Scatter { axis: 1 }.eval(&ctx, bad);
        assert!(format!("{:#}", err.unwrap_err()).contains("outside 0..11"));
    }
}
