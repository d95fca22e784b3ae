"""Export an MAE as a MAEDAY graph + manifest (the contract of `models/README.md`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import torch

from .attention import fuse_attention
from .mae import MAE, MAEConfig, MAEDAYGraph
from .masks import schedule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17
MANIFEST_FORMAT = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def contract_metadata(cfg: MAEConfig, keep_count: int, output: str) -> dict:
    return {"maeday.contract": str(MANIFEST_FORMAT), "maeday.input_size": str(cfg.img_size),
            "maeday.patch_size": str(cfg.patch_size), "maeday.keep": str(keep_count),
            "maeday.output": output}


def export_onnx(graph: MAEDAYGraph, path: Path, keep_count: int,
                fused_attention: bool = True) -> None:
    """Write the graph with a symbolic mask count N (the runtime pins it at load time).
    With the speed rewrites and `fused_attention`, each attention is fused into one
    `Attention` node (opset 23)."""
    cfg = graph.mae.cfg
    image = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    keep = torch.from_numpy(schedule("random", 2, keep_count, cfg.num_patches, 0))
    out_name = graph.output
    dynamic = {"keep": {0: "N"}}
    if out_name == "reconstruction":
        dynamic[out_name] = {0: "N"}
    graph.eval()
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one writes symbolic shapes such as `49*N`
        # into value_info, which tract then fails to unify with concrete input facts.
        torch.onnx.export(graph, (image, keep), str(path), input_names=["image", "keep"],
                          output_names=[out_name], dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    if graph.rewrites and fused_attention:
        model, fused = fuse_attention(model)
        blocks = graph.mae.cfg.depth + graph.mae.cfg.decoder_depth
        if fused != blocks:
            raise ValueError(f"fused {fused} attentions, the model has {blocks} blocks")
    del model.graph.value_info[:]  # intermediate shapes: let the runtime infer its own
    model.producer_name = "maeday-edge workstation"
    # The contract, inside the graph: the runtime compares it with the manifest, since a
    # wrong patch grid cannot be seen from the input shapes alone.
    onnx.helper.set_model_props(model, contract_metadata(cfg, keep_count, out_name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v)} to TOML")


def write_manifest(path: Path, manifest: dict) -> None:
    """A tiny TOML writer for our flat two-level manifest (tomllib only reads)."""
    lines = []
    tables = {k: v for k, v in manifest.items() if isinstance(v, dict)}
    for k, v in manifest.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {toml_value(v)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in table.items():
            lines.append(f"{k} = {toml_value(v)}")
    path.write_text("\n".join(lines) + "\n")


def export_model(mae: MAE, out_dir: Path, name: str, *, output: str = "reconstruction",
                 n_masks: int = 32, keep_ratio: float = 0.25, schedule_kind: str = "random",
                 seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, training: str = "",
                 description: str = "",
                 standardise: tuple[float, float] | None = None,
                 rewrites: bool = True, fused_attention: bool = True) -> Path:
    """Export `mae` into `out_dir/<name>.onnx` + `out_dir/manifest.toml`; returns the dir.
    `standardise` = (mean, std) when the model was trained on contrast-standardised crops.
    `rewrites=False` writes the plain form of the graph (same maths, slower ops: see
    `MAE.forward`), kept to measure and check the rewrites against; `fused_attention=False`
    keeps the other rewrites but not the `Attention` nodes."""
    cfg: MAEConfig = mae.cfg
    keep_count = round(cfg.num_patches * keep_ratio)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = MAEDAYGraph(mae, output=output, rewrites=rewrites)
    onnx_path = out_dir / f"{name}.onnx"
    export_onnx(graph, onnx_path, keep_count, fused_attention)
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "name": name,
        "description": description,
        "training": training,
        "graph": onnx_path.name,
        "graph_sha256": sha256_file(onnx_path),
        "input": {"size": cfg.img_size, "patch_size": cfg.patch_size, "channels": cfg.in_chans,
                  "mean": list(mean), "std": list(std)},
        "masks": {"kind": schedule_kind, "n": n_masks, "keep": keep_count, "seed": seed},
        "output": {"kind": output},
        "scoring": {"gaussian_size": graph.head.kernel.shape[-1], "gaussian_sigma": 1.4},
        "architecture": {k: v for k, v in cfg.to_dict().items()},
    }
    if standardise is not None:
        manifest["input"]["standardise"] = {"mean": float(standardise[0]),
                                            "std": float(standardise[1])}
    write_manifest(out_dir / "manifest.toml", manifest)
    return out_dir


def onnxruntime_parity(onnx_path: Path, graph: MAEDAYGraph, image: np.ndarray,
                       keep: np.ndarray) -> float:
    """Max |onnxruntime - torch| on one input; raises if onnxruntime cannot run the graph."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, (os.cpu_count() or 1))
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": image.astype(np.float32), "keep": keep.astype(np.int64)})
    graph.eval()
    with torch.no_grad():
        want = graph(torch.from_numpy(image), torch.from_numpy(keep)).numpy()
    return float(np.abs(got - want).max())
