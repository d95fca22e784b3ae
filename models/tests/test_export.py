import re

import numpy as np
import pytest
import torch

from models.workstation.export import export_model, onnxruntime_parity, sha256_file
from models.workstation.mae import MAE, MAEConfig, MAEDAYGraph, PRESETS, sincos_pos_embed_2d
from models.workstation.masks import schedule


@pytest.mark.parametrize("output", ["reconstruction", "anomaly_map"])
def test_export_parity_with_onnxruntime_and_manifest(tmp_path, output):
    torch.manual_seed(0)
    mae = MAE(PRESETS["fixture"])
    out = export_model(mae, tmp_path / "m", "m", output=output, n_masks=8)
    manifest = (out / "manifest.toml").read_text()
    assert f'graph_sha256 = "{sha256_file(out / "m.onnx")}"' in manifest
    assert re.search(r"^keep = 49$", manifest, re.M)
    assert f'kind = "{output}"' in manifest
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for n in (1, 8, 5):  # the exported N is symbolic
        keep = schedule("random", n, 49, 196, n)
        assert onnxruntime_parity(out / "m.onnx", MAEDAYGraph(mae, output), image, keep) <= 1e-4


def test_masked_patches_are_reconstructed_from_context_only():
    torch.manual_seed(0)
    mae = MAE(PRESETS["fixture"]).eval()
    image = torch.randn(1, 3, 224, 224)
    keep = torch.from_numpy(schedule("random", 2, 49, 196, 0))
    with torch.no_grad():
        base = mae(image, keep)
        # Change a patch hidden by mask 0 but visible in mask 1.
        hidden0 = sorted(set(range(196)) - set(keep[0].tolist()) & set(keep[1].tolist()))[0]
        r, c = divmod(hidden0, 14)
        changed = image.clone()
        changed[:, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5.0
        after = mae(changed, keep)
    assert torch.equal(base[0], after[0]), "mask 0 saw a patch it should not"
    assert not torch.equal(base[1], after[1])


def test_sincos_positions_are_fixed_and_distinct():
    emb = sincos_pos_embed_2d(64, 14)
    assert emb.shape == (197, 64) and np.all(emb[0] == 0)
    assert len({tuple(np.round(r, 6)) for r in emb[1:]}) == 196


def official_key_shapes(cfg: MAEConfig) -> dict:
    """The facebookresearch/mae `mae_vit_*` state_dict layout, written out by hand."""
    d, dd, p, L = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_size, cfg.num_patches
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, L + 1, d),
            "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,), "mask_token": (1, 1, dd),
            "decoder_pos_embed": (1, L + 1, dd), "decoder_embed.weight": (dd, d),
            "decoder_embed.bias": (dd,), "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
            "decoder_pred.weight": (p * p * 3, dd), "decoder_pred.bias": (p * p * 3,)}
    for prefix, depth, w in (("blocks", cfg.depth, d), ("decoder_blocks", cfg.decoder_depth, dd)):
        h = int(w * cfg.mlp_ratio)
        for i in range(depth):
            b = f"{prefix}.{i}."
            keys.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,),
                         b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
                         b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                         b + "norm2.weight": (w,), b + "norm2.bias": (w,),
                         b + "mlp.fc1.weight": (h, w), b + "mlp.fc1.bias": (h,),
                         b + "mlp.fc2.weight": (w, h), b + "mlp.fc2.bias": (w,)})
    return keys


def test_official_vit_base_checkpoint_layout_loads():
    cfg = PRESETS["vit_base"]
    want = official_key_shapes(cfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) * 0.02 for k, s in want.items()}
    mae = MAE(cfg)
    assert {k: tuple(v.shape) for k, v in mae.state_dict().items()} == want
    mae.load_state_dict({"model": state}["model"], strict=True)
    assert torch.equal(mae.decoder_pred.weight, state["decoder_pred.weight"])


@pytest.mark.parametrize("output", ["reconstruction", "anomaly_map"])
def test_speed_rewrites_are_exact(tmp_path, output):
    """The export form (three Q/K/V MatMuls, a plain Gather, channel-major `decoder_pred`,
    one `Attention` node per block) computes what the plain graph computes: onnxruntime
    outputs within 1e-6 of their scale (onnxruntime's fused attention sums in another
    order: anomaly maps of ~5 move by 2e-6; reconstructions measured bit-identical),
    torch within 1e-6, and the rewritten graph really lost the ops it replaces."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(3)
    mae = MAE(PRESETS["fixture"])
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plain = export_model(mae, tmp_path / "plain", "m", output=output, rewrites=False)
    fast = export_model(mae, tmp_path / "fast", "m", output=output)
    ops = {name: [n.op_type for n in onnx.load(str(d / "m.onnx")).graph.node]
           for name, d in (("plain", plain), ("fast", fast))}
    assert "GatherElements" in ops["plain"] and "GatherElements" not in ops["fast"]
    # Two encoder + one decoder block: one QKV MatMul each becomes three, and the two
    # attention MatMuls, the scale and the Softmax of each become one Attention.
    assert ops["fast"].count("Attention") == 3 and "Softmax" not in ops["fast"]
    assert ops["fast"].count("MatMul") == ops["plain"].count("MatMul") + 2 * 3 - 2 * 3
    image = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sessions = [ort.InferenceSession(str(d / "m.onnx"), providers=["CPUExecutionProvider"])
                for d in (plain, fast)]
    mae.eval()
    for n in (1, 5, 8):
        keep = schedule("random", n, 49, 196, n)
        feeds = {"image": image, "keep": keep.astype(np.int64)}
        a, b = (s.run(None, feeds)[0] for s in sessions)
        assert np.abs(a - b).max() <= 1e-6 * max(1.0, float(np.abs(a).max()))
        with torch.no_grad():
            t_plain = MAEDAYGraph(mae, output, rewrites=False)(torch.from_numpy(image),
                                                               torch.from_numpy(keep))
            t_fast = MAEDAYGraph(mae, output)(torch.from_numpy(image), torch.from_numpy(keep))
        assert float((t_plain - t_fast).abs().max()) <= 1e-6


def test_shipped_default_is_its_checkpoint_exported(tmp_path):
    """`models/default` is what `export` (with the speed rewrites) makes of the committed
    checkpoint, byte for byte: graph and manifest (torch is pinned in requirements.txt)."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "default"
    meta = tomllib.loads((shipped / "manifest.toml").read_text())
    subprocess.run([sys.executable, "-m", "models.workstation", "export",
                    "--checkpoint", str(shipped / "maeday-tiny-textures.pth"),
                    "--out", str(tmp_path / "m"), "--name", meta["name"],
                    "--description", meta["description"], "--training", meta["training"]],
                   check=True, cwd=shipped.parents[1], capture_output=True)
    assert sha256_file(tmp_path / "m" / meta["graph"]) == meta["graph_sha256"]
    assert (tmp_path / "m" / "manifest.toml").read_text() == (shipped / "manifest.toml").read_text()


def test_attention_fusion_refuses_what_it_does_not_know(tmp_path):
    """`fuse_attention` only rewrites the exact exported pattern: a Softmax over another axis
    (not an attention, or one this code does not know) stops the export with the reason."""
    import onnx

    from models.workstation.attention import fuse_attention

    torch.manual_seed(3)
    fast = export_model(MAE(PRESETS["fixture"]), tmp_path / "fast", "m", fused_attention=False)
    model = onnx.load(str(fast / "m.onnx"))
    fused, n = fuse_attention(model)
    assert n == 3 and sum(x.op_type == "Attention" for x in fused.graph.node) == 3
    softmax = next(x for x in model.graph.node if x.op_type == "Softmax")
    next(a for a in softmax.attribute if a.name == "axis").i = 2
    with pytest.raises(ValueError, match="is over axis"):
        fuse_attention(model)
