"""Pretraining, LoRA few-shot finetuning, folding and checkpoint loading."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from models.workstation import data
from models.workstation.__main__ import load_checkpoint, mae_from_checkpoint
from models.workstation.lora import (FinetuneRecipe, LoRALinear, add_lora, finetune, fold_lora,
                                     magnetic_tile_shots)
from models.workstation.mae import MAE, PRESETS
from models.workstation.masks import schedule
from models.workstation.train import PretrainRecipe, patch_loss, pretrain, random_keep

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "models" / "samples"
SHARED = REPO.parent / "shared" / "data"


def fixture_mae(seed=0):
    torch.manual_seed(seed)
    mae = MAE(PRESETS["fixture"])
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return mae.eval()


def test_lora_wraps_every_linear_and_folds_exactly():
    mae = fixture_mae()
    keys = set(mae.state_dict())
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in mae.modules())
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    keep = torch.from_numpy(schedule("random", 3, 49, 196, 0))
    with torch.no_grad():
        plain = mae(image, keep)
    wrapped = add_lora(mae, rank=8, alpha=16.0)
    assert len(wrapped) == n_linear
    assert any(w.startswith("blocks.") for w in wrapped)          # encoder
    assert any(w.startswith("decoder_blocks.") for w in wrapped)  # decoder
    assert "decoder_pred" in wrapped and "decoder_embed" in wrapped
    # Only LoRA factors train; B starts at zero so the wrapped model is the pretrained one.
    trainable = {n for n, p in mae.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    with torch.no_grad():
        assert torch.allclose(mae(image, keep), plain, atol=1e-6)
        for m in mae.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0.0, 0.05)
        adapted = mae(image, keep)
    assert (adapted - plain).abs().max() > 1e-2  # the update matters...
    assert fold_lora(mae) == n_linear
    assert set(mae.state_dict()) == keys  # ...and folds back into the official key names
    with torch.no_grad():
        folded = mae(image, keep)
    assert (folded - adapted).abs().max() <= 1e-5


@pytest.mark.parametrize("optimizer,lr", [("sgd", 1e-2), ("adamw", 1e-3)])
def test_finetune_changes_the_model_and_the_fold_matches(tmp_path, optimizer, lr):
    mae = fixture_mae()
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    recipe = FinetuneRecipe(iterations=4, batch=4, threads=1, optimizer=optimizer, lr=lr)
    summary = finetune(mae, [SAMPLES / "coins.png"], recipe, log=lambda *_: None)
    assert len(summary["losses"]) == 4 and all(np.isfinite(summary["losses"]))
    assert summary["fold_max_abs_diff"] <= 1e-4
    after = mae.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    # LoRA touches only linear weights (biases, norms, patch embedding stay frozen).
    assert changed and all(k.endswith(".weight") for k in changed)
    assert "patch_embed.proj.weight" not in changed


def test_pretrain_smoke_run_learns_and_checkpoints(tmp_path):
    images = [SAMPLES / "coffee.png", SAMPLES / "camera.png"]
    # A fixed held-out batch (its own crops and masks) to measure learning on.
    crops = data.batch([data.load_rgb(p) for p in images], data.Augment(),
                       np.random.default_rng(99), 8)
    held = torch.from_numpy(crops)
    keep = random_keep(8, 196, 49, torch.Generator().manual_seed(99))
    recipe = PretrainRecipe(preset="fixture", steps=40, batch=8, lr=1e-2, warmup=5, seed=3,
                            threads=1)
    torch.manual_seed(recipe.seed)
    untrained = MAE(PRESETS["fixture"]).eval()  # what pretrain starts from (same seed)
    mae = pretrain(recipe, images, tmp_path, checkpoint_every=20, log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "loss.csv")))
    assert len(rows) == 40 and all(np.isfinite(float(r["loss"])) for r in rows)
    with torch.no_grad():
        before = patch_loss(untrained, held, keep, 0.0)[1]
        after = patch_loss(mae, held, keep, 0.0)[1]
    assert after < 0.85 * before, (before, after)
    # The checkpoint is the official layout and restores the trained weights.
    again = mae_from_checkpoint(tmp_path / "checkpoint.pth", None)
    for k, v in mae.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_augment_is_seeded_and_in_range():
    img = data.load_rgb(SAMPLES / "chelsea.png")
    aug = data.Augment(224)
    a = aug(img, np.random.default_rng(5))
    b = aug(img, np.random.default_rng(5))
    c = aug(img, np.random.default_rng(6))
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_official_checkpoint_file_loads_and_missing_keys_fail(tmp_path):
    cfg = PRESETS["vit_base"]
    donor = MAE(cfg)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in donor.state_dict().items()}
    del donor
    # The official release wraps the weights as {"model": state_dict}.
    path = tmp_path / "mae_visualize_vit_base.pth"
    torch.save({"model": state}, path)
    mae = mae_from_checkpoint(path, "vit_base")
    assert torch.equal(mae.blocks[11].attn.qkv.weight, state["blocks.11.attn.qkv.weight"])
    assert torch.equal(mae.decoder_pred.bias, state["decoder_pred.bias"])
    del state["decoder_blocks.7.mlp.fc2.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(SystemExit, match="lacks 1 weights"):
        load_checkpoint(MAE(cfg), path)


def test_vit_large_has_the_official_key_layout():
    from test_export import official_key_shapes

    cfg = PRESETS["vit_large"]
    with torch.device("meta"):
        mae = MAE(cfg)
    assert {k: tuple(v.shape) for k, v in mae.state_dict().items()} == official_key_shapes(cfg)


@pytest.mark.skipif(not (SHARED / "magnetic-tile").is_dir(), reason="../shared/data absent")
def test_few_shot_images_never_come_from_the_evaluation_set():
    root = SHARED / "magnetic-tile"
    normals = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))
    shots = magnetic_tile_shots(root, 4, shot_seed=1)
    assert shots == magnetic_tile_shots(root, 4, shot_seed=1)
    assert shots != magnetic_tile_shots(root, 4, shot_seed=2)
    everything_else = set(normals) - set(magnetic_tile_shots(root, len(normals) - 392, 0))
    assert len(everything_else) == 392 and not set(shots) & everything_else


def test_standardise_fixes_the_gray_level_and_ignores_exposure():
    rgb = data.to_array(data.load_rgb(SAMPLES / "coffee-224.png"))
    a = data.standardise(rgb, 0.45, 0.225)
    gray = a.astype(np.float64).mean(axis=0)
    assert abs(gray.mean() - 0.45) < 1e-5 and abs(gray.std() - 0.225) < 1e-3
    # The same scene at half the exposure plus an offset standardises to the same tensor
    # (up to the eps that keeps flat frames finite).
    b = data.standardise(0.5 * rgb + 0.1, 0.45, 0.225)
    assert np.abs(a - b).max() < 5e-3
    # Batched input is standardised per image.
    both = data.standardise(np.stack([rgb, 0.5 * rgb]), 0.45, 0.225)
    assert np.abs(both[0] - a).max() < 1e-6
    assert np.abs(both[1] - a).max() < 5e-3
    # A flat frame becomes the target mean, not noise.
    flat = data.standardise(np.full((3, 8, 8), 0.3, np.float32), 0.45, 0.225)
    assert np.allclose(flat, 0.45)


def test_standardised_pretraining_is_recorded_and_exported(tmp_path):
    import tomllib

    from models.workstation.__main__ import checkpoint_standardise, export_checked

    images = [SAMPLES / "coffee.png", SAMPLES / "camera.png"]
    base = PretrainRecipe(preset="fixture", steps=4, batch=4, lr=1e-3, warmup=1, seed=3,
                          threads=1)
    pretrain(base, images, tmp_path / "base", checkpoint_every=4, log=lambda *_: None)
    assert checkpoint_standardise(tmp_path / "base" / "checkpoint.pth") is None
    # Continued pretraining from that checkpoint, on standardised crops.
    recipe = PretrainRecipe(preset="fixture", steps=2, batch=4, lr=1e-3, warmup=1, seed=4,
                            threads=1, standardise=(0.45, 0.225),
                            init=str(tmp_path / "base" / "checkpoint.pth"))
    mae = pretrain(recipe, images, tmp_path / "std", checkpoint_every=2, log=lambda *_: None)
    ckpt = tmp_path / "std" / "checkpoint.pth"
    assert checkpoint_standardise(ckpt) == (0.45, 0.225)
    export_checked(mae, tmp_path / "model", "m", "reconstruction", 4, "random", "t", "d",
                   checkpoint_standardise(ckpt))
    manifest = tomllib.loads((tmp_path / "model" / "manifest.toml").read_text())
    assert manifest["input"]["standardise"] == {"mean": 0.45, "std": 0.225}
