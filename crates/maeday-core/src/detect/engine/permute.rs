//! One copy for consecutive axis moves: the unpatchify at the end of the decoder.
//!
//! The graph turns the decoder's patches back into an image with one transpose,
//! `[N, 14, 14, 3, 16, 16] -> [N, 3, 14, 16, 14, 16]`. tract splits it into two axis moves,
//! and each copies the whole reconstruction (32 x 3 x 224 x 224 floats, 19 MB at N = 32).
//! [`Permute`] does the composed permutation in one pass, copying runs of the innermost axis
//! (which stays innermost: 16 floats, one cache line) from source to destination.
//! [`fuse_moves`] swaps it in for each pair of moves where nothing else reads the first.

use tract_core::internal::*;
use tract_core::ops::change_axes::AxisOp;

/// Output axis `i` is input axis `perm[i]`; the last axis stays last.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Permute {
    pub perm: TVec<usize>,
}

impl Op for Permute {
    fn name(&self) -> StaticName {
        "MaedayPermute".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axes {:?}", self.perm)])
    }

    op_as_typed_op!();
}

impl TypedOp for Permute {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let fact = inputs[0];
        ensure!(fact.rank() == self.perm.len() && valid(&self.perm));
        ensure!(
            fact.datum_type.is_copy(),
            "{:?} cannot be copied bytewise",
            fact.datum_type
        );
        let shape: TVec<TDim> = self.perm.iter().map(|&a| fact.shape[a].clone()).collect();
        Ok(tvec!(fact.datum_type.fact(shape)))
    }

    as_op!();
}

impl EvalOp for Permute {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let dt = input.datum_type();
        let shape: TVec<usize> = self.perm.iter().map(|&a| input.shape()[a]).collect();
        // SAFETY: `permute` writes every byte (the output is a permutation of the input).
        let mut out = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
        {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let (shape, size) = (input.shape(), dt.size_of());
            permute(from.as_bytes(), shape, &self.perm, size, to.as_bytes_mut());
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// A permutation of `0..rank` that keeps the last axis last.
fn valid(perm: &[usize]) -> bool {
    let mut seen = vec![false; perm.len()];
    for &a in perm {
        if a >= perm.len() || std::mem::replace(&mut seen[a], true) {
            return false;
        }
    }
    perm.last() == Some(&(perm.len() - 1))
}

/// `to` = `from` (row-major, `shape`, elements of `size` bytes) with its axes permuted by
/// `perm`, copied in runs of the last axis.
pub fn permute(from: &[u8], shape: &[usize], perm: &[usize], size: usize, to: &mut [u8]) {
    let rank = shape.len();
    assert!(valid(perm) && shape.len() == rank && from.len() == to.len());
    assert_eq!(from.len(), shape.iter().product::<usize>() * size);
    let run = shape[rank - 1] * size;
    if run == 0 || from.is_empty() {
        return;
    }
    // Byte strides of the input, read in the output's axis order.
    let mut strides = vec![0usize; rank];
    let mut s = size;
    for axis in (0..rank).rev() {
        strides[axis] = s;
        s *= shape[axis];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let src_stride: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
    // Odometer over the output's outer axes; `src` follows it.
    let mut index = vec![0usize; rank - 1];
    let mut src = 0usize;
    for chunk in to.chunks_exact_mut(run) {
        chunk.copy_from_slice(&from[src..src + run]);
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            src += src_stride[axis];
            if index[axis] < out_shape[axis] {
                break;
            }
            src -= src_stride[axis] * out_shape[axis];
            index[axis] = 0;
        }
    }
}

/// `AxisOp::Move(from, to)` as a permutation of `rank` axes.
fn move_perm(from: usize, to: usize, rank: usize) -> TVec<usize> {
    let mut perm: TVec<usize> = (0..rank).collect();
    let axis = perm.remove(from);
    perm.insert(to, axis);
    perm
}

/// The axis move at `node`, as a permutation, if it is one.
fn as_move(model: &TypedModel, node: usize) -> TractResult<Option<TVec<usize>>> {
    let n = model.node(node);
    let Some(AxisOp::Move(from, to)) = n.op_as::<AxisOp>() else {
        return Ok(None);
    };
    let rank = model.outlet_fact(n.inputs[0])?.rank();
    Ok(Some(move_perm(*from, *to, rank)))
}

/// Replace each move whose input is another move read by nothing else with one
/// [`Permute`] of the composed permutation (when it keeps the last axis last); returns how
/// many pairs were fused.
pub fn fuse_moves(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut fused = 0;
    for id in model.eval_order()? {
        let Some(second) = as_move(model, id)? else {
            continue;
        };
        let first_out = model.node(id).inputs[0];
        let lone = model.outlet_successors(first_out).len() == 1 && !outputs.contains(&first_out);
        let Some(first) = as_move(model, first_out.node)?.filter(|_| lone) else {
            continue;
        };
        // Output axis i of the pair is the first move's input axis first[second[i]].
        let perm: TVec<usize> = second.iter().map(|&a| first[a]).collect();
        let source = model.node(first_out.node).inputs[0];
        if !valid(&perm) || !model.outlet_fact(source)?.datum_type.is_copy() {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let tap = patch.tap_model(model, source)?;
        let out = patch.wire_node(&model.node(id).name, Permute { perm }, &[tap])?;
        patch.shunt_outside(model, OutletId::new(id, 0), out[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    model.compact()?;
    Ok(fused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unpatchify's two moves (as tract plans them) become one permute with the same
    /// output, bit for bit, in f32 and f16.
    #[test]
    fn two_moves_become_one_permute_with_the_same_output() {
        for dt in [f32::datum_type(), f16::datum_type()] {
            let shape = [2usize, 3, 3, 3, 4, 5];
            let mut model = TypedModel::default();
            let x = model.add_source("x", dt.fact(shape)).unwrap();
            let a = model.wire_node("a", AxisOp::Move(3, 1), &[x]).unwrap();
            let b = model.wire_node("b", AxisOp::Move(3, 4), &a).unwrap();
            model.select_output_outlets(&b).unwrap();
            let len = shape.iter().product::<usize>();
            let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let plain = Tensor::from_shape(&shape, &data).unwrap();
            let input = plain.cast_to_dt(dt).unwrap().into_owned();
            let run = |m: &TypedModel| {
                let plan = m.clone().into_runnable().unwrap();
                plan.run(tvec!(input.clone().into_tvalue()))
                    .unwrap()
                    .remove(0)
            };
            let want = run(&model);
            assert_eq!(fuse_moves(&mut model).unwrap(), 1);
            let names: Vec<String> = model.nodes().iter().map(|n| n.op().name().into()).collect();
            assert_eq!(names, ["Source", "MaedayPermute"]);
            let got = run(&model);
            assert_eq!(got.shape(), &[2, 3, 3, 4, 3, 5]);
            assert_eq!(got.into_tensor(), want.into_tensor(), "{dt:?}");
        }
    }

    /// A pair whose composition moves the last axis, or whose first move has another
    /// reader, is left alone.
    #[test]
    fn other_pairs_are_left_alone() {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let a = model.wire_node("a", AxisOp::Move(2, 0), &[x]).unwrap();
        let b = model.wire_node("b", AxisOp::Move(1, 2), &a).unwrap();
        let c = model.wire_node("c", AxisOp::Move(0, 1), &[x]).unwrap();
        let d = model.wire_node("d", AxisOp::Move(0, 1), &c).unwrap();
        model.select_output_outlets(&[b[0], c[0], d[0]]).unwrap();
        assert_eq!(fuse_moves(&mut model).unwrap(), 0);
    }
}
