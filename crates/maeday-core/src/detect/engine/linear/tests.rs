//! The op in a plan: tract's own matmuls against ours on small graphs (the shipped MAE's
//! are covered by `tests/reference.rs`: tract vs torch <= 1e-4 with this op in the plan).

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use super::super::test_values::noise;
use super::*;

const X: [usize; 3] = [2, 37, 24];

/// `x [2, 37, 24]` through `x W1 + b1 -> GELU` (W1 `[24, 40]`) and `x W2` (W2 `[24, 16]`,
/// no bias), both outputs; plus a contraction with the weights transposed (`amk,nk->amn`)
/// and one with 12 outputs, which must stay tract's.
fn graph() -> TypedModel {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(X)).unwrap();
    let konst = |m: &mut TypedModel, name: &str, shape: &[usize], seed| {
        let t = Tensor::from_shape(shape, &noise(shape.iter().product(), seed, 0.5)).unwrap();
        m.add_const(name, t).unwrap()
    };
    let einsum = |expr: &str| EinSum::new(expr.parse().unwrap(), f32::datum_type());
    let w1 = konst(&mut m, "w1", &[24, 40], 1);
    let b1 = konst(&mut m, "b1", &[1, 1, 40], 2);
    let y = m.wire_node("fc1", einsum("amk,kn->amn"), &[x, w1]).unwrap();
    let y = m
        .wire_node("fc1.bias", tract_core::ops::math::add(), &[y[0], b1])
        .unwrap();
    let y = m
        .wire_node("gelu", tract_core::ops::nn::gelu_exact::gelu_exact(), &y)
        .unwrap();
    let w2 = konst(&mut m, "w2", &[24, 16], 3);
    let z = m.wire_node("fc2", einsum("amk,kn->amn"), &[x, w2]).unwrap();
    let wt = konst(&mut m, "wt", &[16, 24], 4);
    let t = m
        .wire_node("transposed", einsum("amk,nk->amn"), &[x, wt])
        .unwrap();
    let w12 = konst(&mut m, "w12", &[24, 12], 5);
    let u = m
        .wire_node("twelve", einsum("amk,kn->amn"), &[x, w12])
        .unwrap();
    m.select_output_outlets(&[y[0], z[0], t[0], u[0]]).unwrap();
    m.into_decluttered().unwrap()
}

fn run(model: TypedModel, x: &Tensor, threads: usize) -> TVec<TValue> {
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let go = || plan.run(tvec!(x.clone().into_tvalue())).unwrap();
    if threads == 1 {
        return go();
    }
    let pool = tract_linalg::multithread::Executor::multithread(threads);
    tract_linalg::multithread::multithread_tract_scope(pool, go)
}

fn floats(t: &TValue) -> Vec<f32> {
    t.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Every value within 1e-5 of tract's.
fn assert_close(got: &TValue, want: &TValue) {
    let (g, w) = (floats(got), floats(want));
    assert_eq!(g.len(), w.len());
    let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs());
    let worst = worst.fold(0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

fn count(model: &TypedModel, name: &str) -> usize {
    model
        .nodes()
        .iter()
        .filter(|n| n.op().name() == name)
        .count()
}

#[test]
fn linear_layers_become_ours_with_tracts_results() {
    let x = Tensor::from_shape(&X, &noise(X.iter().product(), 9, 2.0)).unwrap();
    let want = run(graph(), &x, 1);
    let mut ours = graph();
    let n = use_linear(&mut ours).unwrap();
    let fast = cfg!(target_arch = "x86_64") && super::super::simd::fast_on_this_cpu();
    if !fast {
        assert_eq!(n, 0, "our linear layer only runs on x86-64 with AVX2");
        return;
    }
    // fc1 (with its bias and GELU) and fc2; not the transposed one, nor 12 outputs.
    assert_eq!(n, 2);
    assert_eq!(count(&ours, "MaedayLinear"), 2);
    assert_eq!(count(&ours, "EinSum"), 2);
    assert_eq!(count(&ours, "GeluExact"), 0);
    assert_eq!(count(&ours, "Add"), 0);
    let got = run(ours.clone(), &x, 1);
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w);
    }
    // Shared among a pool's threads: the same floats as one thread.
    let shared = run(ours, &x, 3);
    for (s, g) in shared.iter().zip(&got) {
        assert_eq!(floats(s), floats(g));
    }
}

/// A bias `Add` or a GELU that something else reads too stays outside.
#[test]
fn a_bias_read_elsewhere_stays_outside() {
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(X)).unwrap();
    let w = m
        .add_const(
            "w",
            Tensor::from_shape(&[24, 8], &noise(192, 1, 0.5)).unwrap(),
        )
        .unwrap();
    let b = m
        .add_const(
            "b",
            Tensor::from_shape(&[1, 1, 8], &noise(8, 2, 0.5)).unwrap(),
        )
        .unwrap();
    let einsum = EinSum::new("amk,kn->amn".parse().unwrap(), f32::datum_type());
    let y = m.wire_node("fc", einsum, &[x, w]).unwrap();
    let y = m
        .wire_node("bias", tract_core::ops::math::add(), &[y[0], b])
        .unwrap();
    let g = m
        .wire_node("gelu", tract_core::ops::nn::gelu_exact::gelu_exact(), &y)
        .unwrap();
    m.select_output_outlets(&[y[0], g[0]]).unwrap();
    let mut m = m.into_decluttered().unwrap();
    let x = Tensor::from_shape(&X, &noise(X.iter().product(), 9, 2.0)).unwrap();
    let want = run(m.clone(), &x, 1);
    if use_linear(&mut m).unwrap() == 0 {
        return; // not x86-64 with AVX2: see the test above
    }
    assert_eq!(count(&m, "GeluExact"), 1);
    let got = run(m, &x, 1);
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w);
    }
}

/// An attention's output projection, `[batch, heads, tokens, k]` times `[heads, k, n]`
/// (`abmk,bkn->amn`), with its bias.
#[test]
fn an_output_projection_over_heads_becomes_ours() {
    let shape = [2, 3, 13, 8];
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).unwrap();
    let w = Tensor::from_shape(&[3, 8, 16], &noise(3 * 8 * 16, 1, 0.5)).unwrap();
    let w = m.add_const("w", w).unwrap();
    let b = Tensor::from_shape(&[1, 1, 16], &noise(16, 2, 0.5)).unwrap();
    let b = m.add_const("b", b).unwrap();
    let einsum = EinSum::new("abmk,bkn->amn".parse().unwrap(), f32::datum_type());
    let y = m.wire_node("proj", einsum, &[x, w]).unwrap();
    let y = m
        .wire_node("bias", tract_core::ops::math::add(), &[y[0], b])
        .unwrap();
    m.select_output_outlets(&y).unwrap();
    let mut m = m.into_decluttered().unwrap();
    let x = Tensor::from_shape(&shape, &noise(shape.iter().product(), 9, 2.0)).unwrap();
    let want = run(m.clone(), &x, 1);
    if use_linear(&mut m).unwrap() == 0 {
        return; // not x86-64 with AVX2: see the first test
    }
    assert_eq!(count(&m, "MaedayLinear"), 1);
    assert_eq!(count(&m, "EinSum") + count(&m, "Add"), 0);
    let got = run(m, &x, 1);
    assert_close(&got[0], &want[0]);
}
