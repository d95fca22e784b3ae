"""MAE pretraining (He et al.): hide 75% of the patches, regress the hidden pixels.

Every random choice (init, image picks, crops, masks) derives from one seed. The loss
curve goes to `<out>/loss.csv`, checkpoints to `<out>/checkpoint.pth` in the official
facebookresearch/mae layout (`{"model": state_dict, ...}`), so `export --checkpoint` reads
ours and theirs the same way.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import data
from .mae import MAE, PRESETS


@dataclass
class PretrainRecipe:
    preset: str = "tiny"
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3  # peak AdamW learning rate
    warmup: int = 100
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    # Weight of the visible patches in the loss (0 = the MAE paper's masked-only loss).
    visible_weight: float = 0.0
    crop_scale: tuple[float, float] = (0.05, 1.0)
    gray: float = 0.3
    seed: int = 0
    threads: int = 2
    # Per-crop contrast standardisation (mean, std) of the gray level, or None; exported
    # models carry it as the manifest's `[input.standardise]`.
    standardise: tuple[float, float] | None = None
    # Start from this checkpoint's weights instead of a random init (continued pretraining).
    init: str | None = None


def random_keep(batch: int, num_patches: int, keep: int, gen: torch.Generator) -> torch.Tensor:
    """One independent random keep-set per image: [B, K] sorted patch indices."""
    noise = torch.rand(batch, num_patches, generator=gen)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


def patch_loss(mae: MAE, imgs: torch.Tensor, keep: torch.Tensor,
               visible_weight: float) -> tuple[torch.Tensor, float, float]:
    """Mean squared error per patch, averaged over hidden patches (+ weighted visible ones).
    Returns (loss, hidden-patch MSE, visible-patch MSE)."""
    pred = mae.decode(mae.encode(imgs, keep), keep)
    target = mae.patchify(imgs)
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # [B, L]
    visible = torch.zeros_like(per_patch).scatter_(1, keep, 1.0)
    hidden = 1.0 - visible
    hidden_mse = (per_patch * hidden).sum() / hidden.sum()
    visible_mse = (per_patch * visible).sum() / visible.sum()
    loss = hidden_mse + visible_weight * visible_mse if visible_weight else hidden_mse
    return loss, hidden_mse.item(), visible_mse.item()


def lr_at(step: int, recipe: PretrainRecipe) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))


def save_checkpoint(path: Path, mae: MAE, **extra) -> None:
    """Atomically write `{"model": state_dict, "config": ..., **extra}`: the official MAE
    layout plus our architecture, so `export`/`finetune` need no --preset for it."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": mae.state_dict(), "config": mae.cfg.to_dict(), **extra}, tmp)
    tmp.replace(path)


def seeded(seed: int, threads: int) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch (init, dropout-free ops) and set its thread count; return the numpy
    generator for data and the torch generator for masks, both from the same seed."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def pretrain(recipe: PretrainRecipe, image_paths: list[Path], out: Path,
             checkpoint_every: int = 200, log=print) -> MAE:
    rng, gen = seeded(recipe.seed, recipe.threads)
    out.mkdir(parents=True, exist_ok=True)
    images = [data.load_rgb(p) for p in image_paths]
    if not images:
        raise SystemExit("no training images")
    mae = MAE(PRESETS[recipe.preset])
    if recipe.init:
        state = torch.load(recipe.init, map_location="cpu", weights_only=True)
        mae.load_state_dict(state.get("model", state))
    cfg = mae.cfg
    keep_count = round(cfg.num_patches * (1 - recipe.mask_ratio))
    decay = [p for n, p in mae.named_parameters() if p.requires_grad and p.ndim > 1
             and "token" not in n]
    no_decay = [p for n, p in mae.named_parameters() if p.requires_grad and
                (p.ndim <= 1 or "token" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=(0.9, 0.95))
    augment = data.Augment(cfg.img_size, scale=recipe.crop_scale, gray=recipe.gray)
    (out / "recipe.json").write_text(json.dumps(
        {"recipe": asdict(recipe), "config": cfg.to_dict(),
         "images": [str(p) for p in image_paths]}, indent=1) + "\n")
    log_file = open(out / "loss.csv", "w", newline="")
    writer = csv.writer(log_file)
    writer.writerow(["step", "seconds", "lr", "loss", "hidden_mse", "visible_mse"])
    mae.train()
    start = time.time()
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        imgs = torch.from_numpy(data.batch(images, augment, rng, recipe.batch,
                                           recipe.standardise))
        keep = random_keep(recipe.batch, cfg.num_patches, keep_count, gen)
        loss, hid, vis = patch_loss(mae, imgs, keep, recipe.visible_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
        opt.step()
        elapsed = time.time() - start
        writer.writerow([step, f"{elapsed:.1f}", f"{lr_at(step, recipe):.3e}",
                         f"{loss.item():.5f}", f"{hid:.5f}", f"{vis:.5f}"])
        if step % 20 == 0 or step == recipe.steps - 1:
            log_file.flush()
            log(f"step {step:5d}/{recipe.steps}  loss {loss.item():.4f}  hidden {hid:.4f}  "
                f"visible {vis:.4f}  {elapsed / (step + 1):.2f} s/step")
        if (step + 1) % checkpoint_every == 0 or step == recipe.steps - 1:
            save_checkpoint(out / "checkpoint.pth", mae, recipe=asdict(recipe), step=step + 1,
                            seconds=elapsed, standardise=recipe.standardise)
    log_file.close()
    mae.eval()
    return mae
