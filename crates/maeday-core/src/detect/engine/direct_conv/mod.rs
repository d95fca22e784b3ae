//! Our direct convolution for CPU plans: depthwise convolutions, and dense ones with few
//! taps per output (the memory bank's EfficientNet-Lite0 extractor is a 3x3 stem, then
//! depthwise convolutions between 1x1 ones).
//!
//! tract runs a depthwise convolution zone by zone: its vectorised kernel only covers
//! stride-1 interiors, and everything else (every stride-2 layer, and the borders) goes
//! through a generic loop. Measured per node on the extractor (1 thread, this 2-core Zen 4):
//! the two stride-2 layers ran at 1.8 GFLOP/s, 3.1 ms each, and the eleven depthwise
//! layers took half of the graph's 22 ms. The stem (3 input channels, 3x3, stride 2) goes
//! through im2col and a matmul with 27 values per dot product: 27 GFLOP/s, plus a padding
//! copy and a separate ReLU6. [`DirectConv`] does the same arithmetic from a padded,
//! phase-split copy of each input plane, with whole output rows in registers ([`planes`]),
//! and takes in the ReLU6 (a `Max` and a `Min` by constants) that follows.
//!
//! [`use_direct_conv`] swaps it in, on a decluttered model before tract optimises it, for
//! every f32 convolution over channels-first data that is depthwise (one group per input
//! channel) or has at most [`MAX_DENSE_TAPS`] taps per output.

mod planes;
mod pointwise;

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_core::ops::nn::DataFormat;

pub use self::planes::Window;
use self::planes::{convolve, Filters};
pub use self::pointwise::use_pointwise;
#[cfg(test)]
use self::pointwise::Pointwise;
use super::rewrite::{clamp_after, constant, swap_in};
use super::shares::in_shares;

/// Taps per output (inputs per group x kernel size) up to which a convolution that is not
/// depthwise runs as ours: the extractor's stem has 27. A matmul wins for more.
pub const MAX_DENSE_TAPS: usize = 32;

/// A convolution over the last two axes of `[..., C, H, W]` (f32): output channel `o`
/// is the input channels of its group convolved with its kernels, plus its bias, then
/// clamped to `clamp`.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectConv {
    pub window: Window,
    /// Input channels.
    pub inputs: usize,
    pub groups: usize,
    /// `[outputs, inputs / groups, kernel rows, kernel columns]`.
    pub taps: Arc<Vec<f32>>,
    /// `[outputs]`.
    pub bias: Arc<Vec<f32>>,
    /// The ReLU6 (or any clamp by constants) taken in from after the convolution.
    pub clamp: Option<(f32, f32)>,
}

impl Eq for DirectConv {}

impl DirectConv {
    /// The output shape for an input shape, checked.
    fn output_shape(&self, input: &[usize]) -> TractResult<TVec<usize>> {
        let r = input.len();
        ensure!(r >= 3, "a convolution needs [.., C, H, W], got {input:?}");
        ensure!(
            input[r - 3] == self.inputs,
            "{} input channels, planned for {}",
            input[r - 3],
            self.inputs
        );
        let Some([h, w]) = self.window.output([input[r - 2], input[r - 1]]) else {
            bail!("{:?} does not fit an input of {input:?}", self.window)
        };
        let mut out: TVec<usize> = input.into();
        out[r - 3] = self.bias.len();
        out[r - 2] = h;
        out[r - 1] = w;
        Ok(out)
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "MaedayDirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels in {} groups, {:?}, clamp {:?}",
            self.inputs,
            self.bias.len(),
            self.groups,
            self.window,
            self.clamp
        )])
    }

    op_as_typed_op!();
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let Some(shape) = inputs[0].shape.as_concrete() else {
            bail!("a direct convolution needs a concrete input shape")
        };
        Ok(tvec!(f32::fact(self.output_shape(shape)?)))
    }

    as_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let r = shape.len();
        let hw = [input.shape()[r - 2], input.shape()[r - 1]];
        // SAFETY: `convolve` writes every element of every output plane.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let from = input.try_as_plain_ram()?;
            let mut to = out.try_as_plain_ram_mut()?;
            let filters = Filters {
                taps: &self.taps,
                bias: &self.bias,
                groups: self.groups,
                clamp: self.clamp,
            };
            let (from, to) = (from.as_slice::<f32>()?, to.as_slice_mut::<f32>()?);
            let plane = shape[r - 2] * shape[r - 1];
            in_shares(to, plane, |first, share| {
                convolve(from, self.inputs, hw, self.window, &filters, first, share)
            });
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Replace every convolution [`DirectConv`] can run (f32, channels first, 2-D, no
/// dilation, explicit or no padding, constant kernel and bias; depthwise, or at most
/// [`MAX_DENSE_TAPS`] taps per output) with it, taking in a clamp by constants after it;
/// returns how many. Call it on a decluttered model, before `into_optimized`.
pub fn use_direct_conv(model: &mut TypedModel) -> TractResult<usize> {
    let mut found = Vec::new();
    for node in model.nodes() {
        if let Some(op) = direct_conv_of(model, node)? {
            found.push((node.id, op));
        }
    }
    for (id, op) in &found {
        let (last, clamp) = clamp_after(model, *id)?;
        let op = DirectConv {
            clamp,
            ..op.clone()
        };
        swap_in(model, *id, last, op)?;
    }
    model.compact()?;
    Ok(found.len())
}

/// Node `node` as a [`DirectConv`] (no clamp yet), if it is a convolution it can run.
fn direct_conv_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DirectConv>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let fact = model.outlet_fact(node.inputs[0])?;
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && fact.datum_type == f32::datum_type()
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|&d| d == 1)
        && node.inputs.len() == 3;
    let rank = match spec.data_format {
        DataFormat::NCHW => 4,
        DataFormat::CHW => 3,
        _ => return Ok(None),
    };
    let Some(shape) = fact
        .shape
        .as_concrete()
        .filter(|s| plain && s.len() == rank)
    else {
        return Ok(None);
    };
    let (inputs, outputs, groups) = (shape[rank - 3], spec.output_channels, conv.group);
    let [kh, kw] = [spec.kernel_shape[0], spec.kernel_shape[1]];
    let fits = groups > 0
        && spec.input_channels == inputs
        && inputs % groups == 0
        && outputs % groups == 0;
    let taps = if fits { inputs / groups * kh * kw } else { 0 };
    let wanted = groups == inputs || (taps <= MAX_DENSE_TAPS && kh * kw > 1);
    if !fits || !wanted {
        return Ok(None);
    }
    let (before, after): (TVec<usize>, TVec<usize>) = match &spec.padding {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => {
            (b.clone(), a.clone())
        }
        PaddingSpec::Valid => (tvec![0, 0], tvec![0, 0]),
        _ => return Ok(None),
    };
    let strides = spec.strides();
    let (Some(kernel), Some(bias)) = (
        constant(model, node.inputs[1]),
        constant(model, node.inputs[2]),
    ) else {
        return Ok(None);
    };
    if kernel.len() != outputs * taps || !(bias.len() == outputs || bias.len() == 1) {
        return Ok(None);
    }
    let bias = if bias.len() == outputs {
        bias
    } else {
        vec![bias[0]; outputs]
    };
    let op = DirectConv {
        window: Window {
            kernel: [kh, kw],
            stride: [strides[0], strides[1]],
            pad_before: [before[0], before[1]],
            pad_after: [after[0], after[1]],
        },
        inputs,
        groups,
        taps: Arc::new(kernel),
        bias: Arc::new(bias),
        clamp: None,
    };
    // Only where our geometry gives tract's own output shape.
    let want = node.outputs[0].fact.shape.as_concrete();
    let same = op.output_shape(shape).ok().as_deref() == want;
    Ok(same.then_some(op))
}

#[cfg(test)]
mod tests;
