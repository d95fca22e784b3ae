//! 1x1 convolutions over channels-first data, on the linear layer's register tiles.
//!
//! tract declutters a 1x1 convolution into an `EinSum` (`IHW,OI->OHW`, with or without a
//! batch axis of 1 on either side) and runs it as a matmul, packing the activations into its
//! kernel's panels on every run: on the extractor 5.6-6.4 ms at ~62 GFLOP/s, plus 0.7-0.9 ms
//! of packing (1 thread, the 2-core Zen 4). [`Pointwise`] runs
//! [`linear::pointwise`](super::super::linear::pointwise) instead, with the bias and the
//! ReLU6 after it taken in.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;

use super::super::linear;
use super::super::rewrite::{clamp_after, constant, only_reader, swap_in};
use super::super::shares::in_shares;

/// `out[o, p] = clamp(sum over c of w[o, c] x[c, p] + bias[o])` for an input holding
/// `[inputs, pixels]` (f32) and an output of `shape` holding `[outputs, pixels]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pointwise {
    /// `[outputs, inputs]`.
    pub weights: Arc<Vec<f32>>,
    /// `[outputs]`.
    pub bias: Arc<Vec<f32>>,
    pub clamp: Option<(f32, f32)>,
    /// The output's shape (the einsum's: any axes of 1 around `[outputs, pixels...]`).
    pub shape: TVec<usize>,
}

impl Eq for Pointwise {}

impl Pointwise {
    fn pixels(&self) -> usize {
        self.shape.iter().product::<usize>() / self.bias.len().max(1)
    }

    fn inputs(&self) -> usize {
        self.weights.len() / self.bias.len().max(1)
    }
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "MaedayPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, {} pixels, clamp {:?}",
            self.inputs(),
            self.bias.len(),
            self.pixels(),
            self.clamp
        )])
    }

    op_as_typed_op!();
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let Some(shape) = inputs[0].shape.as_concrete() else {
            bail!("a pointwise convolution needs a concrete input shape")
        };
        let want = self.inputs() * self.pixels();
        ensure!(
            shape.iter().product::<usize>() == want,
            "a pointwise convolution of {} inputs x {} pixels got {shape:?}",
            self.inputs(),
            self.pixels()
        );
        Ok(tvec!(f32::fact(&*self.shape)))
    }

    as_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        ensure!(input.len() == self.inputs() * self.pixels());
        // SAFETY: `pointwise` writes every element of every output plane.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
        {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let (x, y) = (from.as_slice::<f32>()?, to.as_slice_mut::<f32>()?);
            let pixels = self.pixels();
            in_shares(y, pixels, |first, share| {
                let (w, b) = (&self.weights, &self.bias);
                linear::pointwise(w, x, b, self.clamp, pixels, first, share)
            });
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Replace every 1x1 convolution that tract decluttered into an `EinSum` (see the module's
/// text) with [`Pointwise`], taking in the bias `Add` and a clamp by constants after it;
/// returns how many. Where our linear layer does not run ([`linear::ours_here`]), or where
/// tract's matmuls are asked for ([`linear::tracts_asked`]), none.
pub fn use_pointwise(model: &mut TypedModel) -> TractResult<usize> {
    if !linear::ours_here() || linear::tracts_asked() {
        return Ok(0);
    }
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(w) = pointwise_weights(model, node)? {
            found.push((node.id, w));
        }
    }
    for (id, (weights, channel_axis)) in &found {
        let fact = model.outlet_fact(OutletId::new(*id, 0))?;
        let shape: TVec<usize> = fact.shape.as_concrete().unwrap_or_default().into();
        let (last, bias) = bias_after(model, *id, &shape, *channel_axis)?;
        let (last, clamp) = clamp_after(model, last)?;
        let op = Pointwise {
            weights: Arc::new(weights.clone()),
            bias: Arc::new(bias),
            clamp,
            shape,
        };
        swap_in(model, *id, last, op)?;
    }
    model.compact()?;
    Ok(found.len())
}

/// Node `node`'s weights `[outputs, inputs]` if it is an f32 `EinSum` of a channels-first
/// activation with a constant `[outputs, inputs]` matrix: the channels contracted, the
/// pixel axes passed through in order after them, the output channels before them, every
/// other axis of size 1; and the output's channel axis.
fn pointwise_weights(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let (Some(xs), Some(ys), Some(w)) = (
        x.shape.as_concrete(),
        node.outputs[0].fact.shape.as_concrete(),
        constant(model, node.inputs[1]),
    ) else {
        return Ok(None);
    };
    let wk = model.outlet_fact(node.inputs[1])?;
    if x.datum_type != f32::datum_type() || wk.rank() != 2 {
        return Ok(None);
    }
    let (mut channel_in, mut channel_out) = (None, None);
    let mut pixels: Vec<(usize, usize)> = Vec::new();
    for axis in einsum.axes.iter_all_axes() {
        let (i0, i1, o) = (
            &axis.inputs[0][..],
            &axis.inputs[1][..],
            &axis.outputs[0][..],
        );
        match (i0, i1, o) {
            (&[a], &[1], &[]) => channel_in = Some(a),
            (&[], &[0], &[b]) => channel_out = Some(b),
            (&[a], &[], &[b]) => pixels.push((a, b)),
            (&[a], &[], &[]) if xs[a] == 1 => {}
            (&[], &[], &[b]) if ys[b] == 1 => {}
            _ => return Ok(None),
        }
    }
    let (Some(ci), Some(co)) = (channel_in, channel_out) else {
        return Ok(None);
    };
    pixels.sort();
    let ordered = pixels.windows(2).all(|p| p[0].1 < p[1].1);
    let after = pixels.iter().all(|&(a, b)| a > ci && b > co);
    // Axes of more than 1 before the channels would interleave images: not ours.
    let lead = xs[..ci].iter().chain(&ys[..co]).all(|&d| d == 1);
    let between = pixels.iter().all(|&(a, b)| xs[a] == ys[b]);
    Ok((ordered && after && lead && between).then_some((w, co)))
}

/// After node `id` (output `shape`, channels on `axis`): an `Add` of a constant with one
/// value per output channel (1 on every other axis), read by nothing else; returns the last
/// node taken in and the bias (zeros if none).
fn bias_after(
    model: &TypedModel,
    id: usize,
    shape: &[usize],
    axis: usize,
) -> TractResult<(usize, Vec<f32>)> {
    let none = Ok((id, vec![0f32; shape[axis]]));
    let Some(add) = only_reader(model, id)? else {
        return none;
    };
    let is_add = add.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>());
    let Some(&other) = add.inputs.iter().find(|i| i.node != id) else {
        return none;
    };
    let per_channel = model
        .outlet_fact(other)?
        .shape
        .as_concrete()
        .is_some_and(|b| {
            b.len() == shape.len()
                && (0..b.len()).all(|a| b[a] == if a == axis { shape[a] } else { 1 })
        });
    let same = add.outputs[0].fact.shape.as_concrete() == Some(shape);
    match constant(model, other) {
        Some(b) if is_add && same && per_channel && add.inputs.len() == 2 => Ok((add.id, b)),
        _ => none,
    }
}
