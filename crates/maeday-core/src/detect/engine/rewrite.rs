//! Swapping our ops into tract's models: reading a node's neighbourhood (its constant
//! inputs, the one node that reads it, the clamp by constants after a convolution) and
//! replacing a chain of nodes with one op.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::konst::Const;
use tract_core::ops::math::{Max, Min};

/// The f32 values of a constant outlet.
pub fn constant(model: &TypedModel, outlet: OutletId) -> Option<Vec<f32>> {
    let k = model.outlet_fact(outlet).ok()?.konst.clone()?;
    if k.datum_type() != f32::datum_type() {
        return None;
    }
    let plain = k.try_as_plain_ram().ok()?;
    Some(plain.as_slice::<f32>().ok()?.to_vec())
}

/// After convolution `conv`: a `Max` then a `Min` by scalar constants (or just one of
/// them) read by nothing else; returns the last node of the clamp (or `conv`) and the
/// clamp.
pub fn clamp_after(model: &TypedModel, conv: usize) -> TractResult<(usize, Option<(f32, f32)>)> {
    let mut last = conv;
    let (mut low, mut high) = (f32::NEG_INFINITY, f32::INFINITY);
    let mut taken = [false; 2];
    while let Some(node) = only_reader(model, last)? {
        let outlet = OutletId::new(last, 0);
        let Some(bin) = node.op_as::<TypedBinOp>() else {
            break;
        };
        let other = node.inputs.iter().find(|&&i| i != outlet);
        let value = other
            .and_then(|&o| scalar(model, o))
            .filter(|_| node.inputs.len() == 2);
        match value {
            Some(v) if bin.0.is::<Max>() && !taken[0] && !taken[1] => {
                low = v;
                taken[0] = true;
            }
            Some(v) if bin.0.is::<Min>() && !taken[1] && v >= low => {
                high = v;
                taken[1] = true;
            }
            _ => break,
        }
        last = node.id;
    }
    let clamp = (taken[0] || taken[1]).then_some((low, high));
    Ok((last, clamp))
}

/// A constant outlet holding one f32 (any rank).
fn scalar(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let from_const = model.node(outlet.node).op_as::<Const>().is_some();
    let v = constant(model, outlet)?;
    (from_const && v.len() == 1).then(|| v[0])
}

/// The one node that reads node `id`'s output, if only one does and it is not an output of
/// the model (so the two can become one op).
pub fn only_reader(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    let outlet = OutletId::new(id, 0);
    let next = model.outlet_successors(outlet);
    let alone = next.len() == 1 && !model.output_outlets()?.contains(&outlet);
    Ok(alone.then(|| model.node(next[0].node)))
}

/// Replace nodes `first` to `last` (a chain, each read only by the next; `first == last`
/// for one node) with `op`, reading `first`'s first input, under `first`'s name.
pub fn swap_in(
    model: &mut TypedModel,
    first: usize,
    last: usize,
    op: impl Into<Box<dyn TypedOp>>,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let tap = patch.tap_model(model, model.node(first).inputs[0])?;
    let out = patch.wire_node(model.node(first).name.clone(), op, &[tap])?;
    patch.shunt_outside(model, OutletId::new(last, 0), out[0])?;
    patch.apply(model)
}
