//! One MAEDAY graph as the tract-based backends see it: parsed, checked against its
//! manifest (the graph contract: input names, ranks, sizes, metadata), pinned to a batch of
//! masks and typed. The CPU backend ([`super::tract`]) and the CUDA one share it, so both run
//! exactly the same graph.

use anyhow::{anyhow, bail, ensure, Context, Result};
use tract_core::transform::{build_float_translator, NodeFilter};
use tract_onnx::pb::{type_proto, ModelProto};
use tract_onnx::prelude::*;

use super::api::{EngineOptions, Precision};
use crate::model::manifest::{Model, OutputKind};
use crate::model::schedule::MaskSchedule;

/// ONNX opsets 9-18 are what tract is tested on, 23 is what `export` writes (one
/// `Attention` node per attention, checked by `tests/reference.rs`): say so for any other,
/// in place of tract's own warning, which also fires for 23 and is filtered out of the
/// default log (`cli::logging`).
fn warn_on_untested_opset(proto: &ModelProto, path: &std::path::Path) {
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    if let Some(v) = opset.filter(|v| !(9..=18).contains(v) && *v != 23) {
        log::warn!(
            "graph {} uses ONNX opset {v}: tract is tested on opsets 9-18 and maeday-edge's \
             exported graphs on 23; it may not load or run as exported",
            path.display()
        );
    }
}

/// One parsed ONNX graph and where its inputs are: plans for several batch sizes are
/// made from it.
pub struct Graph<'a> {
    pub onnx: tract_onnx::Onnx,
    pub proto: ModelProto,
    pub image_ix: usize,
    pub keep_ix: usize,
    pub model: &'a Model,
    /// Patches each mask keeps.
    pub keep: usize,
    pub opts: &'a EngineOptions,
}

impl<'a> Graph<'a> {
    /// Parse the model's graph and check it against its manifest and the schedule.
    pub fn load(
        model: &'a Model,
        schedule: &MaskSchedule,
        opts: &'a EngineOptions,
    ) -> Result<Self> {
        let m = &model.manifest;
        let path = model.graph_path();
        ensure!(
            schedule.patches == m.input.patches(),
            "the schedule covers {} patches but the model has {}",
            schedule.patches,
            m.input.patches()
        );
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_path(&path)
            .with_context(|| format!("cannot parse ONNX graph {}", path.display()))?;
        warn_on_untested_opset(&proto, &path);
        let (image_ix, keep_ix) = check_contract(&proto, model, schedule.keep)
            .with_context(|| format!("graph {} does not match its manifest", path.display()))?;
        Ok(Graph {
            onnx,
            proto,
            image_ix,
            keep_ix,
            model,
            keep: schedule.keep,
            opts,
        })
    }

    /// The graph with its input shapes pinned for a batch of `masks` masks, typed and (for
    /// f16) translated, not yet optimised: each backend optimises it its own way.
    pub fn typed(&self, masks: usize) -> Result<TypedModel> {
        let Graph {
            onnx,
            proto,
            image_ix,
            keep_ix,
            model,
            keep,
            opts,
        } = self;
        let (image_ix, keep_ix, keep) = (*image_ix, *keep_ix, *keep);
        let s = model.manifest.input.size;
        let mut inference = onnx.model_for_proto_model(proto)?;
        inference.set_input_fact(image_ix, f32::fact([1, 3, s, s]).into())?;
        inference.set_input_fact(keep_ix, i64::fact([masks, keep]).into())?;
        let mut typed = inference.into_typed().context("shape analysis failed")?;
        if opts.precision == Precision::F16 {
            // The scoring tail (named /head/ by the exporter) always stays f32: in f16 its
            // depthwise Gaussian conv dominated the frame on x86 and loses precision.
            let mut exclude = vec!["/head/".to_string()];
            if opts.f32_norms {
                exclude.extend(["norm".to_string(), "Softmax".to_string()]);
            }
            let filter = NodeFilter {
                exclude: Some(exclude),
                ..Default::default()
            };
            build_float_translator(DatumType::F32, DatumType::F16, filter).transform(&mut typed)?;
        }
        Ok(typed)
    }

    /// Check that an optimised model for `masks` masks outputs what the contract says.
    pub fn check_output(&self, typed: &TypedModel, masks: usize) -> Result<()> {
        let s = self.model.manifest.input.size;
        let out = typed
            .output_fact(0)?
            .shape
            .as_concrete()
            .map(|d| d.to_vec());
        let want = match self.model.manifest.output.kind {
            OutputKind::Reconstruction => vec![masks, 3, s, s],
            OutputKind::AnomalyMap => vec![1, 1, s, s],
        };
        ensure!(
            out.as_deref() == Some(&want[..]),
            "the graph outputs shape {out:?}, the contract needs {want:?}"
        );
        Ok(())
    }
}

/// Check the graph's declared inputs/outputs against the contract and the manifest;
/// returns the positions of `image` and `keep` among the graph inputs.
fn check_contract(proto: &ModelProto, model: &Model, keep: usize) -> Result<(usize, usize)> {
    let m = &model.manifest;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the ONNX file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let find = |n: &str| {
        names.iter().position(|x| *x == n).ok_or_else(|| {
            anyhow!("the graph has no input named {n:?} (its inputs are {names:?}); see models/README.md")
        })
    };
    let (image_ix, keep_ix) = (find("image")?, find("keep")?);
    ensure!(
        inputs.len() == 2,
        "the graph must have exactly the inputs image and keep, not {names:?}"
    );
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let want = m.output.kind.tensor_name();
    ensure!(
        outputs == [want],
        "the manifest says output.kind = {want:?} but the graph outputs {outputs:?}"
    );
    check_metadata(proto, model, keep)?;
    let s = m.input.size as i64;
    check_dims(
        inputs[image_ix],
        "image",
        &[Some(1), Some(3), Some(s), Some(s)],
    )?;
    check_dims(inputs[keep_ix], "keep", &[None, Some(keep as i64)])?;
    Ok((image_ix, keep_ix))
}

/// Graphs from our exporter carry the contract in their metadata (`maeday.*`); a patch
/// grid that differs from the manifest's is only visible there.
fn check_metadata(proto: &ModelProto, model: &Model, keep: usize) -> Result<()> {
    let m = &model.manifest;
    let expected = [
        ("maeday.input_size", m.input.size.to_string(), "input.size"),
        (
            "maeday.patch_size",
            m.input.patch_size.to_string(),
            "input.patch_size",
        ),
        ("maeday.keep", keep.to_string(), "masks.keep"),
        (
            "maeday.output",
            m.output.kind.tensor_name().to_string(),
            "output.kind",
        ),
    ];
    for prop in &proto.metadata_props {
        if let Some((_, want, field)) = expected.iter().find(|(k, _, _)| *k == prop.key) {
            ensure!(
                prop.value == *want,
                "the graph was exported with {} = {} but the manifest says {field} = {want}",
                prop.key.trim_start_matches("maeday."),
                prop.value
            );
        }
    }
    if !proto
        .metadata_props
        .iter()
        .any(|p| p.key == "maeday.patch_size")
    {
        log::warn!("the graph carries no maeday.* metadata: its patch grid cannot be checked");
    }
    Ok(())
}

/// Compare the declared dims (symbolic ones match anything) with what the manifest implies.
fn check_dims(
    input: &tract_onnx::pb::ValueInfoProto,
    name: &str,
    want: &[Option<i64>],
) -> Result<()> {
    let Some(type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        bail!("input {name:?} is not a tensor");
    };
    let Some(shape) = t.shape.as_ref() else {
        return Ok(());
    };
    let dims: Vec<Option<i64>> = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
            _ => None,
        })
        .collect();
    ensure!(
        dims.len() == want.len(),
        "input {name:?} has rank {} but the contract needs rank {}",
        dims.len(),
        want.len()
    );
    for (i, (have, want)) in dims.iter().zip(want).enumerate() {
        if let (Some(h), Some(w)) = (have, want) {
            ensure!(
                h == w,
                "input {name:?} dim {i} is {h} in the graph but {w} by the manifest"
            );
        }
    }
    Ok(())
}

pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run one frame through an engine that may panic, refusing every frame after one did.
/// tract reports most problems as errors but can panic on a graph that disagrees with its
/// inputs (e.g. patch indices out of range): that must never take the daemon down, and the
/// engine's state after a panic is unknown, so it is poisoned until the model is reloaded.
pub fn guarded(
    poisoned: &mut bool,
    engine: &str,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !*poisoned,
        "the engine failed on an earlier frame; reload the model"
    );
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(payload) => {
            *poisoned = true;
            anyhow::bail!("{engine} panicked: {}", panic_message(&payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panicking_engine_is_an_error_and_refuses_later_frames() {
        let mut poisoned = false;
        assert!(guarded(&mut poisoned, "e", || Ok(())).is_ok());
        assert!(!poisoned, "a good frame does not poison");
        let err = guarded(&mut poisoned, "e", || anyhow::bail!("bad input")).unwrap_err();
        assert_eq!(err.to_string(), "bad input");
        assert!(!poisoned, "an error is not a panic");
        // (the default hook prints this panic's message to the test's output)
        let err = guarded(&mut poisoned, "e", || panic!("index out of range")).unwrap_err();
        assert_eq!(err.to_string(), "e panicked: index out of range");
        assert!(poisoned);
        let mut ran = false;
        let err = guarded(&mut poisoned, "e", || {
            ran = true;
            Ok(())
        })
        .unwrap_err();
        assert!(!ran, "a poisoned engine runs nothing");
        assert!(err.to_string().contains("reload the model"), "{err}");
    }
}
