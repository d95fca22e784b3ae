//! The op in a plan: tract's own convolutions against ours, on the shipped extractor and
//! on small graphs.

use tract_core::internal::*;
use tract_onnx::prelude::InferenceModelExt;

use super::super::test_values::noise;
use super::*;
use crate::model::bundled::default_extractor_dir;

/// The shipped extractor's optimised plan: tract's own, or with our direct convolutions,
/// box sums and resizes (how many of each were swapped in).
fn extractor(rewrite: bool) -> (TypedModel, [usize; 3]) {
    let dir = default_extractor_dir();
    let graph = dir.join("efficientnet-lite0-patches.onnx");
    let mut typed = tract_onnx::onnx()
        .model_for_path(graph)
        .unwrap()
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
        .unwrap()
        .into_typed()
        .unwrap()
        .into_decluttered()
        .unwrap();
    let mut n = [0; 3];
    if rewrite {
        n = super::super::use_cnn_ops(&mut typed).unwrap();
    }
    (typed.into_optimized().unwrap(), n)
}

fn ops(model: &TypedModel, name: &str) -> usize {
    model
        .nodes()
        .iter()
        .filter(|n| n.op().name() == name)
        .count()
}

fn run(model: TypedModel, input: &Tensor) -> Tensor {
    let plan = model.into_runnable().unwrap();
    let out = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
    out[0].clone().into_tensor()
}

/// EfficientNet-Lite0's stem, every depthwise layer and (on x86-64 with AVX2) every 1x1
/// layer, each with its bias and ReLU6, become one op, its two 3x3 means and its upsampling
/// ours too; the features stay those of tract's plan.
#[test]
fn the_extractor_runs_our_ops_with_the_same_features() {
    let (theirs, _) = extractor(false);
    let (ours, n) = extractor(true);
    // On aarch64 tract declutters all depthwise layers but the first to channels-last (it
    // has a kernel for that layout there); those stay tract's.
    let depthwise = if cfg!(target_arch = "x86_64") { 11 } else { 1 };
    // Its 21 1x1 convolutions run on our linear layer's tiles where those run.
    let pointwise = if super::super::linear::ours_here() {
        21
    } else {
        0
    };
    assert_eq!(n, [1 + depthwise + pointwise, 2, 1]);
    assert_eq!(ops(&ours, "MaedayPointwise"), pointwise);
    if pointwise > 0 {
        assert_eq!(ops(&ours, "OptMatMul") + ops(&ours, "OptMatMulPack"), 0);
    }
    assert_eq!(ops(&ours, "OptSumPool") + ops(&ours, "Resize"), 0);
    assert_eq!(ops(&theirs, "DepthWiseConv"), 11);
    assert_eq!(ops(&ours, "DepthWiseConv"), 11 - depthwise);
    assert_eq!(ops(&ours, "MaedayDirectConv"), 1 + depthwise);
    // The stem's im2col and its padding copy are gone with it.
    assert_eq!(ops(&ours, "LazyIm2col") + ops(&ours, "Pad"), 0);
    // The ReLU6 after each is taken in: no max or min reads a convolution's output (tract's
    // form of them differs by architecture: a chain of both, or one op each).
    let convolutions = |n: &&TypedNode| n.op_is::<DirectConv>() || n.op_is::<Pointwise>();
    for node in ours.nodes().iter().filter(convolutions) {
        for next in ours.outlet_successors(OutletId::new(node.id, 0)) {
            let name = ours.node(next.node).op().name();
            assert!(
                !name.contains("Max") && !name.contains("Min"),
                "{name} after {}",
                node.name
            );
        }
    }
    let pixels: Vec<f32> = noise(3 * 224 * 224, 7, 0.5)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let input = Tensor::from_shape(&[1, 3, 224, 224], &pixels).unwrap();
    // Our ops in a 2-thread tract scope (each takes a share of the output planes).
    let pool = tract_linalg::multithread::Executor::multithread(2);
    let plan = ours.clone().into_runnable().unwrap();
    let threaded = tract_linalg::multithread::multithread_tract_scope(pool, || {
        plan.run(tvec!(input.clone().into_tvalue())).unwrap()[0]
            .clone()
            .into_tensor()
    });
    let (want, got) = (run(theirs, &input), run(ours, &input));
    assert_eq!(
        threaded.to_plain_array_view::<f32>().unwrap(),
        got.to_plain_array_view::<f32>().unwrap(),
        "2 threads"
    );
    let (want, got) = (
        want.to_plain_array_view::<f32>().unwrap(),
        got.to_plain_array_view::<f32>().unwrap(),
    );
    assert_eq!(want.shape(), got.shape());
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = want
        .iter()
        .zip(got.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        peak > 0.1 && worst <= 1e-5 * peak.max(1.0),
        "{worst} (peak {peak})"
    );
}

/// A clamp that is also read elsewhere stays tract's; so does a dense convolution with
/// more taps per output than [`MAX_DENSE_TAPS`] (4 inputs x 3 x 3). Groups of two channels
/// (18 taps) are taken, with tract's output.
#[test]
fn only_private_clamps_and_small_convolutions_are_taken() {
    use tract_core::ops::cnn::PoolSpec;
    use tract_core::ops::math::max;
    let build = |group: usize, shared: bool| {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 9, 9])).unwrap();
        let k = m
            .add_const(
                "k",
                Tensor::from_shape(&[4, 4 / group, 3, 3], &noise(36 * 4 / group, 1, 1.0)).unwrap(),
            )
            .unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[4], &noise(4, 2, 1.0)).unwrap())
            .unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
                dilations: None,
                strides: None,
                input_channels: 4,
                output_channels: 4,
            },
            kernel_fmt: KernelFormat::OIHW,
            group,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
        let zero = m.add_const("zero", tensor4(&[[[[0f32]]]])).unwrap();
        let relu = m.wire_node("relu", max(), &[y, zero]).unwrap()[0];
        let mut outs = vec![relu];
        if shared {
            outs.push(y);
        }
        m.select_output_outlets(&outs).unwrap();
        m
    };
    let the_op = |m: &TypedModel| {
        m.nodes()
            .iter()
            .find_map(|n| n.op_as::<DirectConv>())
            .cloned()
    };
    let mut depthwise = build(4, false);
    assert_eq!(use_direct_conv(&mut depthwise).unwrap(), 1);
    assert_eq!(
        the_op(&depthwise).unwrap().clamp,
        Some((0.0, f32::INFINITY))
    );
    assert_eq!(ops(&depthwise, "Max"), 0);
    // The convolution's own output is read by the graph too: the clamp stays outside.
    let mut shared = build(4, true);
    assert_eq!(use_direct_conv(&mut shared).unwrap(), 1);
    assert_eq!(the_op(&shared).unwrap().clamp, None);
    let mut dense = build(1, false);
    assert_eq!(use_direct_conv(&mut dense).unwrap(), 0);
    let theirs = build(2, false);
    let mut ours = theirs.clone();
    assert_eq!(use_direct_conv(&mut ours).unwrap(), 1);
    let input = Tensor::from_shape(&[1, 4, 9, 9], &noise(4 * 81, 3, 2.0)).unwrap();
    let (theirs, ours) = (
        run(theirs.into_optimized().unwrap(), &input),
        run(ours.into_optimized().unwrap(), &input),
    );
    let (want, got) = (
        theirs.to_plain_array_view::<f32>().unwrap(),
        ours.to_plain_array_view::<f32>().unwrap(),
    );
    let worst = want
        .iter()
        .zip(got.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 1e-5, "{worst}");
}
