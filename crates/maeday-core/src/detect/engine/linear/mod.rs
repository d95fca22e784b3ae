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

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::Add;
use tract_core::ops::nn::GeluExact;

pub use self::gemm::{Packed, Then};

use super::shares::in_shares;

/// `y = x W + b` over the last axis of `x` (f32), then `then`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    pub weights: Arc<Packed>,
    /// `[n]`.
    pub bias: Arc<Vec<f32>>,
    pub then: Then,
}

impl Eq for Linear {}

impl Linear {
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let k = self.weights.k;
        ensure!(
            input.last() == Some(&k),
            "a linear layer over {k} values got {input:?}"
        );
        let mut out: TVec<usize> = input.into();
        *out.last_mut().unwrap() = self.weights.n;
        Ok(out)
    }
}

impl Op for Linear {
    fn name(&self) -> StaticName {
        "MaedayLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {}, then {:?}",
            self.weights.k, self.weights.n, self.then
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
            let (k, n) = (self.weights.k, self.weights.n);
            in_shares(y, n, |first, rows| {
                let x = &x[first * k..first * k + rows.len() / n * k];
                gemm::gemm(x, &self.weights, &self.bias, self.then, rows)
            });
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Replace every linear layer [`Linear`] can run (see the module's text) with it, taking in
/// the bias and the GELU after it; returns how many. Call it on a decluttered model, before
/// `into_optimized`. Does nothing where this build would not run our tiles fast.
pub fn use_linear(model: &mut TypedModel) -> TractResult<usize> {
    if !cfg!(target_arch = "x86_64") || !super::simd::fast_on_this_cpu() {
        return Ok(0);
    }
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(w) = weights_of(model, node)? {
            found.push((node.id, w));
        }
    }
    for (id, (w, k, n)) in &found {
        let (last, bias, then) = taken_in_after(model, *id, *n)?;
        let op = Linear {
            weights: Arc::new(Packed::new(w, *k, *n)),
            bias: Arc::new(bias),
            then,
        };
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, model.node(*id).inputs[0])?;
        let out = patch.wire_node(model.node(*id).name.clone(), op, &[tap])?;
        patch.shunt_outside(model, OutletId::new(last, 0), out[0])?;
        patch.apply(model)?;
    }
    model.compact()?;
    Ok(found.len())
}

/// Node `node`'s `[k, n]` weights (row-major), `k` and `n`, if it is an f32 `EinSum` of an
/// activation's last axis with a constant matrix, every other axis passed through in order
/// (`amk,kn->amn`), and `n` a multiple of 8.
fn weights_of(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Vec<f32>, usize, usize)>> {
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
    let Some(konst) = w
        .konst
        .as_ref()
        .filter(|k| k.datum_type() == f32_ && k.rank() == 2)
    else {
        return Ok(None);
    };
    let r = x.rank();
    if x.datum_type != f32_
        || einsum.operating_dt != f32_
        || r == 0
        || x.shape.as_concrete().is_none()
    {
        return Ok(None);
    }
    let mut kinds = [0; 3];
    for axis in einsum.axes.iter_all_axes() {
        let (i0, i1, o) = (
            &axis.inputs[0][..],
            &axis.inputs[1][..],
            &axis.outputs[0][..],
        );
        let kind = match (i0, i1, o) {
            (&[a], &[0], &[]) if a == r - 1 => 0,
            (&[], &[1], &[b]) if b == r - 1 => 1,
            (&[a], &[], &[b]) if a == b && a < r - 1 => 2,
            _ => return Ok(None),
        };
        kinds[kind] += 1;
    }
    let (k, n) = (konst.shape()[0], konst.shape()[1]);
    if kinds != [1, 1, r - 1] || n % 8 != 0 || k == 0 {
        return Ok(None);
    }
    let plain = konst.try_as_plain_ram()?;
    Ok(Some((plain.as_slice::<f32>()?.to_vec(), k, n)))
}

/// After linear node `id` (`n` outputs): an `Add` of a constant broadcast along the last
/// axis (the bias), then a `GeluExact`, each read by nothing else; returns the last node
/// taken in, the bias (zeros if none) and what follows the product.
fn taken_in_after(model: &TypedModel, id: usize, n: usize) -> TractResult<(usize, Vec<f32>, Then)> {
    let outputs = model.output_outlets()?;
    let only_successor = |node: usize| {
        let outlet = OutletId::new(node, 0);
        let next = model.outlet_successors(outlet);
        (next.len() == 1 && !outputs.contains(&outlet)).then(|| model.node(next[0].node))
    };
    let (mut last, mut bias) = (id, vec![0f32; n]);
    let own = model.outlet_fact(OutletId::new(id, 0))?.shape.clone();
    if let Some(add) = only_successor(id) {
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
    if let Some(gelu) = only_successor(last) {
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
