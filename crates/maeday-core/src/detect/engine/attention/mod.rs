//! Our attention op for the CPU plan: softmax(Q K^T * scale) V, one whole head at a time.
//!
//! tract lowers the graph's ONNX `Attention` nodes (see `models/workstation/attention.py`) to
//! its flash-attention op, written for long sequences: it walks 32 x 32 blocks with an online
//! softmax, allocates on every block, and computes `exp` one scalar at a time. Our heads are
//! short (50 tokens in the encoder, 197 in the decoder), so a head's whole score matrix fits
//! in L2 (197 x 197 x 4 bytes = 155 KB), and a few of its rows fit in L1. [`HeadAttention`]
//! computes six query rows at a time from register tiles ([`tiles`]: scores, their softmax
//! with a vectorised `exp` ([`heads::exp_shifted`]), then P V), with AVX2 + FMA on x86-64
//! and NEON on aarch64; elsewhere, or for shapes the tiles do not take, one sgemm per head
//! for the scores and one for P V ([`heads::attend`]). Same maths, another summation order:
//! it agrees with the flash op to a few 1e-7 (`tests/reference.rs` checks the whole graph
//! against torch).
//!
//! [`use_head_attention`] swaps it in for every non-causal, unmasked flash-attention node of
//! an optimised plan. Like the flash op it computes in f32 whatever its inputs (f16 plans on
//! ARMv8.2 cast in and out), on the calling thread (our workers already split the masks).

mod heads;
mod tiles;

use tract_core::internal::*;
use tract_core::ops::change_axes::AxisOp;
use tract_transformers::ops::flash_sdpa::FlashSdpaOp;

use self::heads::{strided, View};
pub use self::heads::{Layout, PLAIN};

/// Attention over Q, K, V of logical shape `[batch, heads, tokens, head_dim]` (the same
/// number of heads in all three), no mask, not causal. `scale`: the flash op's, `None` =
/// `1/sqrt(D)`. `layouts`: those of Q, K, V and the output.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadAttention {
    pub scale: Option<f32>,
    pub layouts: [Layout; 4],
}

impl Eq for HeadAttention {}

impl Op for HeadAttention {
    fn name(&self) -> StaticName {
        "MaedayHeadAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "scale={:?}, layouts={:?}",
            self.scale, self.layouts
        )])
    }

    op_as_typed_op!();
}

/// The logical `[batch, heads, tokens, dim]` sizes of a tensor in `layout`.
fn logical<D: Clone>(shape: &[D], layout: Layout) -> TractResult<[D; 4]> {
    ensure!(shape.len() == 4, "attention takes rank-4 tensors");
    Ok(layout.map(|axis| shape[axis].clone()))
}

impl TypedOp for HeadAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3, "attention takes Q, K, V");
        let [q, k, v] = [0, 1, 2].map(|i| logical(&inputs[i].shape, self.layouts[i]));
        let (q, k, v) = (q?, k?, v?);
        ensure!(q[0] == k[0] && k[0] == v[0], "batch differs");
        ensure!(q[1] == k[1] && k[1] == v[1], "heads differ");
        ensure!(k[2] == v[2], "K and V lengths differ");
        ensure!(q[3] == k[3] && k[3] == v[3], "head dims differ");
        let mut shape = q.clone();
        for (a, &axis) in self.layouts[3].iter().enumerate() {
            shape[axis] = q[a].clone();
        }
        Ok(tvec!(inputs[0].datum_type.fact(&shape)))
    }

    as_op!();
}

impl EvalOp for HeadAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let [q, k, v] = &inputs[..] else {
            bail!("attention takes Q, K, V")
        };
        let dt = q.datum_type();
        let (q, k, v) = (
            q.cast_to::<f32>()?,
            k.cast_to::<f32>()?,
            v.cast_to::<f32>()?,
        );
        let [b, h, tq, d] = logical(q.shape(), self.layouts[0])?;
        let tk = logical(k.shape(), self.layouts[1])?[2];
        let mut shape = [0; 4];
        for (a, &axis) in self.layouts[3].iter().enumerate() {
            shape[axis] = [b, h, tq, d][a];
        }
        let scale = self.scale.unwrap_or(1.0 / (d as f32).sqrt());
        // SAFETY: `attend` writes every element (the output's view covers the whole tensor).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let views = [
            strided(q.shape(), self.layouts[0])?,
            strided(k.shape(), self.layouts[1])?,
            strided(v.shape(), self.layouts[2])?,
        ];
        let out_view = strided(&shape, self.layouts[3])?;
        ensure!(views[1].sizes == [b, h, tk, d] && views[2].sizes == [b, h, tk, d]);
        {
            let mut out_plain = out.try_as_plain_ram_mut()?;
            attend(
                [
                    q.try_as_plain_ram()?.as_slice::<f32>()?,
                    k.try_as_plain_ram()?.as_slice::<f32>()?,
                    v.try_as_plain_ram()?.as_slice::<f32>()?,
                ],
                views,
                out_plain.as_slice_mut::<f32>()?,
                out_view,
                scale,
            );
        }
        let out = if dt == f32::datum_type() {
            out
        } else {
            out.cast_to_dt(dt)?.into_owned()
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The layout a tensor has when `AxisOp::Move(from, to)` turns it into the logical order
/// (for an input), or the logical order into it (for the output).
fn moved(from: usize, to: usize, output: bool) -> Layout {
    let mut order = vec![0, 1, 2, 3];
    let axis = order.remove(from);
    order.insert(to, axis);
    let order: Layout = [order[0], order[1], order[2], order[3]];
    if !output {
        return order;
    }
    let mut inverse = [0; 4];
    for (j, &a) in order.iter().enumerate() {
        inverse[a] = j;
    }
    inverse
}

/// `Move(from, to)` if the node making `outlet` is an axis move of a rank-4 tensor.
fn lone_move(model: &TypedModel, outlet: OutletId) -> Option<(usize, usize)> {
    let node = model.node(outlet.node);
    match node.op_as::<AxisOp>()? {
        AxisOp::Move(from, to) if model.outlet_fact(outlet).ok()?.rank() == 4 => Some((*from, *to)),
        _ => None,
    }
}

/// Replace every flash-attention node tract's optimiser made (non-causal, 3 inputs) with
/// [`HeadAttention`], taking over the axis moves that feed it and the one that follows it
/// when nothing else reads them; returns how many were replaced.
pub fn use_head_attention(model: &mut TypedModel) -> TractResult<usize> {
    let flash: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|n| n.op_as::<FlashSdpaOp>().is_some_and(|f| !f.causal) && n.inputs.len() == 3)
        .map(|n| n.id)
        .collect();
    let mut swapped = 0;
    for id in flash {
        let node = model.node(id).clone();
        let scale = node.op_as::<FlashSdpaOp>().unwrap().scale;
        let outputs = model.output_outlets()?.to_vec();
        let mut layouts = [PLAIN; 4];
        let mut sources = Vec::with_capacity(3);
        for (i, &input) in node.inputs.iter().enumerate() {
            let lone = model.outlet_successors(input).len() == 1 && !outputs.contains(&input);
            match lone_move(model, input).filter(|_| lone) {
                Some((from, to)) => {
                    layouts[i] = moved(from, to, false);
                    sources.push(model.node(input.node).inputs[0]);
                }
                None => sources.push(input),
            }
        }
        let mut replaced = OutletId::new(id, 0);
        let next = model.outlet_successors(replaced);
        if next.len() == 1 && !outputs.contains(&replaced) {
            let after = OutletId::new(next[0].node, 0);
            if let Some((from, to)) = lone_move(model, after) {
                layouts[3] = moved(from, to, true);
                replaced = after;
            }
        }
        let op = HeadAttention { scale, layouts };
        let facts: TVec<TypedFact> = sources
            .iter()
            .map(|&o| model.outlet_fact(o).cloned())
            .collect::<TractResult<_>>()?;
        if op.output_facts(&facts.iter().collect::<TVec<_>>()).is_err() {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let taps = patch.taps(model, &sources)?;
        let out = patch.wire_node(&node.name, op, &taps)?;
        patch.shunt_outside(model, replaced, out[0])?;
        patch.apply(model)?;
        swapped += 1;
    }
    model.compact()?;
    Ok(swapped)
}

/// `out[b, h] = softmax(q[b, h] k[b, h]^T * scale) v[b, h]`: register tiles
/// ([`tiles`]) where the layout and the CPU allow, else two sgemms per head ([`heads`]).
fn attend(inputs: [&[f32]; 3], views: [View; 3], out: &mut [f32], ov: View, scale: f32) {
    if !tiles::attend(inputs, views, out, ov, scale) {
        heads::attend(inputs, views, out, ov, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::heads::noise;
    use super::*;

    #[test]
    fn moves_are_inverted_for_the_output() {
        // [b, t, h, d] --Move(1, 2)--> [b, h, t, d]: the logical heads sit at axis 2.
        assert_eq!(moved(1, 2, false), [0, 2, 1, 3]);
        // [b, h, t, d] --Move(1, 3)--> [b, t, d, h]: heads at axis 3, tokens 1, dim 2.
        assert_eq!(moved(1, 3, true), [0, 3, 1, 2]);
    }

    #[test]
    fn the_op_matches_tracts_flash_attention_in_f32_and_f16() {
        let shape = [2usize, 3, 50, 64];
        let len = shape.iter().product();
        let t = |seed| Tensor::from_shape(&shape, &noise(len, seed, 4.0)).unwrap();
        let (q, k, v) = (t(4), t(5), t(6));
        for dt in [f32::datum_type(), f16::datum_type()] {
            let inputs = || {
                tvec!(
                    q.cast_to_dt(dt).unwrap().into_owned().into_tvalue(),
                    k.cast_to_dt(dt).unwrap().into_owned().into_tvalue(),
                    v.cast_to_dt(dt).unwrap().into_owned().into_tvalue()
                )
            };
            let ctx = EvalContext::out_of_plan();
            let flash = FlashSdpaOp {
                causal: false,
                scale: Some(0.125),
            };
            let want = flash.eval(&ctx, inputs()).unwrap().remove(0);
            let ours = HeadAttention {
                scale: Some(0.125),
                layouts: [PLAIN; 4],
            };
            let got = ours.eval(&ctx, inputs()).unwrap().remove(0);
            assert_eq!(got.datum_type(), dt);
            let (got, want) = (
                got.cast_to::<f32>().unwrap(),
                want.cast_to::<f32>().unwrap(),
            );
            let slice = |t: &Tensor| {
                t.to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            };
            let diff = slice(&got)
                .iter()
                .zip(slice(&want))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let tol = if dt == f32::datum_type() { 1e-6 } else { 2e-3 };
            assert!(diff <= tol, "{dt:?}: {diff}");
        }
    }

    /// The graph tract makes of an ONNX `Attention` on `[b, t, h, d]` projections: three
    /// axis moves, its flash attention, one move back.
    fn flash_graph() -> TypedModel {
        let mut model = TypedModel::default();
        let fact = f32::fact([2, 50, 3, 64]);
        let mut qkv = tvec![];
        for name in ["q", "k", "v"] {
            let source = model.add_source(name, fact.clone()).unwrap();
            let moved = model.wire_node(format!("{name}.move"), AxisOp::Move(1, 2), &[source]);
            qkv.push(moved.unwrap()[0]);
        }
        let flash = FlashSdpaOp {
            causal: false,
            scale: Some(0.125),
        };
        let a = model.wire_node("attention", flash, &qkv).unwrap()[0];
        let back = model.wire_node("back", AxisOp::Move(1, 3), &[a]).unwrap()[0];
        model.select_output_outlets(&[back]).unwrap();
        model
    }

    #[test]
    fn the_swap_takes_over_the_axis_moves_and_keeps_the_result() {
        let len = 2 * 50 * 3 * 64;
        let inputs: TVec<TValue> = (7..10)
            .map(|seed| {
                let t = Tensor::from_shape(&[2, 50, 3, 64], &noise(len, seed, 4.0)).unwrap();
                t.into_tvalue()
            })
            .collect();
        let run = |m: TypedModel| m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        let want = run(flash_graph()).remove(0);
        let mut model = flash_graph();
        assert_eq!(use_head_attention(&mut model).unwrap(), 1);
        let ops: Vec<String> = model.nodes().iter().map(|n| n.op().name().into()).collect();
        assert_eq!(ops, ["Source", "Source", "Source", "MaedayHeadAttention"]);
        let got = run(model).remove(0);
        assert_eq!(got.shape(), want.shape());
        let (got, want) = (
            got.to_plain_array_view::<f32>().unwrap(),
            want.to_plain_array_view::<f32>().unwrap(),
        );
        let diff = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{diff}");
    }
}
