//! Our linear layer for CPU plans: `x W + b` over the last axis, with the exact GELU that
//! follows an MLP's first layer taken in.
//!
//! Per node (1 thread, N = 32, the shipped MAE on the 2-core Zen 4), tract spent 322 ms of
//! a 476 ms frame in its matmuls, 32 ms packing their activations into its kernel's panels
//! first (70 packs a frame) and 17 ms in separate GELU passes. [`Linear`] reads the
//! activations where they lie and keeps its weights packed from the plan on ([`gemm`]).
//!
//! [`use_linear`] swaps it in, on a decluttered model before tract optimises it, for every
//! f32 `EinSum` that multiplies the last axis of an activation by a constant `[k, n]`
//! matrix, with the bias `Add` after it and a `GeluExact` after that when they are there.
//! On x86-64 with AVX2 and FMA only: elsewhere tract's own kernels stay (aarch64's were
//! not measured against ours on hardware).

mod gemm;
mod pointwise;

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::Add;
use tract_core::ops::nn::GeluExact;

pub use self::gemm::{Packed, Rows, Then};
pub use self::pointwise::pointwise;

use super::rewrite::{only_reader, swap_in};
use super::shares::in_shares;

/// `y = x W + b` over the last axis of `x` (f32), then `then`. With `heads > 1`, `x` is an
/// attention's output `[batch, heads, tokens, k]` and `W` is `[heads * k, n]`: `y[b, t] =
/// sum over h of x[b, h, t] W[h]` (`abmk,bkn->amn`, the output projection).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub heads: usize,
    pub weights: Arc<Packed>,
    /// `[n]`.
    pub bias: Arc<Vec<f32>>,
    pub then: Then,
}

impl Eq for Linear {}

impl Linear {
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let k = self.weights.k / self.heads.max(1);
        if self.heads > 1 {
            let [b, h, t, kk] = input else {
                bail!("a projection of {} heads got {input:?}", self.heads)
            };
            ensure!(
                *h == self.heads && *kk == k,
                "a projection of {} heads of {k} got {input:?}",
                self.heads
            );
            return Ok(tvec![*b, *t, self.weights.n]);
        }
        ensure!(
            input.last() == Some(&k),
            "a linear layer over {k} values got {input:?}"
        );
        let mut out: TVec<usize> = input.into();
        *out.last_mut().unwrap() = self.weights.n;
        Ok(out)
    }

    /// How `gemm` reads the rows of an input of `shape` (checked by `output_shape`).
    fn rows(&self, shape: &[usize]) -> Rows {
        match shape {
            [_, heads, tokens, k] if self.heads > 1 => Rows {
                heads: *heads,
                per_group: *tokens,
                k: *k,
            },
            _ => Rows::plain(self.weights.k),
        }
    }
}

impl Op for Linear {
    fn name(&self) -> StaticName {
        "MaedayLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} ({} heads), then {:?}",
            self.weights.k, self.weights.n, self.heads, self.then
        )])
    }

    op_as_typed_op!();
}

impl TypedOp for Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let Some(shape) = inputs[0].shape.as_concrete() else {
            bail!("a linear layer needs a concrete input shape")
        };
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

impl EvalOp for Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        // SAFETY: `gemm` writes every element of every row.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let (x, y) = (from.as_slice::<f32>()?, to.as_slice_mut::<f32>()?);
            let rows = self.rows(input.shape());
            in_shares(y, self.weights.n, |first, share| {
                gemm::gemm(x, rows, first, &self.weights, &self.bias, self.then, share)
            });
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Whether our tiles replace tract's matmuls on this CPU: x86-64 with AVX2 and FMA. (On
/// aarch64 tract's own kernels stay: ours were not measured against them on hardware.)
pub fn ours_here() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::fast_on_this_cpu()
}

/// `MAEDAY_TRACT_LINEAR=tract`: keep tract's matmuls for linear layers and 1x1 convolutions
/// (a switch for side-by-side benchmarks, `benches/frame.rs` and `benches/bank.rs`, not a
/// setting).
pub fn tracts_asked() -> bool {
    std::env::var_os("MAEDAY_TRACT_LINEAR").is_some_and(|v| v == "tract")
}

/// Replace every linear layer [`Linear`] can run (see the module's text) with it, taking in
/// the bias and the GELU after it; returns how many. Call it on a decluttered model, before
/// `into_optimized`. Does nothing where this build would not run our tiles fast, or where
/// tract's matmuls are asked for ([`tracts_asked`]).
pub fn use_linear(model: &mut TypedModel) -> TractResult<usize> {
    if !ours_here() || tracts_asked() {
        return Ok(0);
    }
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(w) = weights_of(model, node)? {
            found.push((node.id, w));
        }
    }
    for (id, (w, heads, k, n)) in &found {
        let (last, bias, then) = taken_in_after(model, *id, *n)?;
        let op = Linear {
            heads: *heads,
            weights: Arc::new(Packed::new(w, heads * k, *n)),
            bias: Arc::new(bias),
            then,
        };
        swap_in(model, *id, last, op)?;
    }
    model.compact()?;
    Ok(found.len())
}

/// Node `node`'s weights as `[heads * k, n]` (row-major), `heads`, `k` and `n`, if it is an
/// f32 `EinSum` with a constant that [`Linear`] runs, `n` a multiple of 8: an activation's
/// last axis times a `[k, n]` matrix, every other axis passed through in order
/// (`amk,kn->amn`, `heads` 1), or an attention's heads `[a, heads, m, k]` times `[heads, k,
/// n]` (`abmk,bkn->amn`).
fn weights_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Weights>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let (x, w) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    let f32_ = f32::datum_type();
    let Some(konst) = w.konst.as_ref().filter(|k| k.datum_type() == f32_) else {
        return Ok(None);
    };
    let r = x.rank();
    let fits = x.datum_type == f32_ && einsum.operating_dt == f32_ && r > 0;
    if !fits || x.shape.as_concrete().is_none() {
        return Ok(None);
    }
    // Each axis by where it appears: (input 0, input 1, output).
    let axes: Vec<(&[usize], &[usize], &[usize])> = einsum
        .axes
        .iter_all_axes()
        .map(|a| (&a.inputs[0][..], &a.inputs[1][..], &a.outputs[0][..]))
        .collect();
    let heads = match konst.rank() {
        2 if axes.len() == r + 1 && axes.iter().all(|&a| plain_axis(a, r)) => 1,
        3 if r == 4 && axes.len() == 5 && axes.iter().all(|&a| head_axis(a)) => konst.shape()[0],
        _ => return Ok(None),
    };
    let [k, n] = [
        konst.shape()[konst.rank() - 2],
        konst.shape()[konst.rank() - 1],
    ];
    if n % 8 != 0 || k == 0 {
        return Ok(None);
    }
    let plain = konst.try_as_plain_ram()?;
    Ok(Some((plain.as_slice::<f32>()?.to_vec(), heads, k, n)))
}

/// Weights, heads, k, n.
type Weights = (Vec<f32>, usize, usize, usize);

/// An axis of `amk,kn->amn` (rank `r` activation): the contracted one, the output's, or a
/// passed-through one.
fn plain_axis((x, w, y): (&[usize], &[usize], &[usize]), r: usize) -> bool {
    match (x, w, y) {
        (&[a], &[0], &[]) => a == r - 1,
        (&[], &[1], &[b]) => b == r - 1,
        (&[a], &[], &[b]) => a == b && a < r - 1,
        _ => false,
    }
}

/// An axis of `abmk,bkn->amn`.
fn head_axis(axis: (&[usize], &[usize], &[usize])) -> bool {
    matches!(
        axis,
        (&[0], &[], &[0])
            | (&[1], &[0], &[])
            | (&[2], &[], &[1])
            | (&[3], &[1], &[])
            | (&[], &[2], &[2])
    )
}

/// After linear node `id` (`n` outputs): an `Add` of a constant broadcast along the last
/// axis (the bias), then a `GeluExact`, each read by nothing else; returns the last node
/// taken in, the bias (zeros if none) and what follows the product.
fn taken_in_after(model: &TypedModel, id: usize, n: usize) -> TractResult<(usize, Vec<f32>, Then)> {
    let (mut last, mut bias) = (id, vec![0f32; n]);
    let own = model.outlet_fact(OutletId::new(id, 0))?.shape.clone();
    if let Some(add) = only_reader(model, id)? {
        let is_add = add.op_as::<TypedBinOp>().is_some_and(|b| b.0.is::<Add>());
        let other = add.inputs.iter().find(|i| i.node != id);
        let values = other.and_then(|&o| model.outlet_fact(o).ok()?.konst.clone());
        let same_shape = add.outputs[0].fact.shape == own;
        if let Some(v) = values.filter(|_| is_add && same_shape && add.inputs.len() == 2) {
            let along_last =
                v.datum_type() == f32::datum_type() && v.len() == n && v.shape().last() == Some(&n);
            if along_last {
                bias = v.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                last = add.id;
            }
        }
    }
    let mut then = Then::Nothing;
    if let Some(gelu) = only_reader(model, last)? {
        let is_gelu = gelu
            .op_as::<ElementWiseOp>()
            .is_some_and(|e| e.0.is::<GeluExact>() && e.1.is_none());
        if is_gelu {
            then = Then::Gelu;
            last = gelu.id;
        }
    }
    Ok((last, bias, then))
}

#[cfg(test)]
mod tests;
