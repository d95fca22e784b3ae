"""Few-shot adaptation (MAEDAY paper, section 3): LoRA on every linear layer, then fold.

LoRA (Hu et al.) keeps a frozen weight W and learns a low-rank update B @ A, with B
zero-initialised so training starts from the pretrained model. Folding writes
W + scale * B @ A back into a plain `nn.Linear`, so the exported graph is an ordinary MAE:
the edge runtime never knows LoRA existed and pays nothing for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import data
from .mae import MAE
from .masks import SplitMix64
from .train import random_keep, seeded


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x @ A^T) @ B^T, with `base` frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.t()) @ self.lora_b.t())

    def folded(self) -> nn.Linear:
        """A plain linear layer with the update merged: W + scale * B @ A."""
        out = nn.Linear(self.base.in_features, self.base.out_features,
                        bias=self.base.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def add_lora(model: nn.Module, rank: int = 32, alpha: float = 32.0) -> list[str]:
    """Freeze `model` and wrap every `nn.Linear` in a `LoRALinear`. Returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def fold_lora(model: nn.Module) -> int:
    """Replace every `LoRALinear` by its folded `nn.Linear` (in place). Returns the count.
    The folded model's state_dict has the original key names again."""
    count = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.folded())
                count += 1
    for p in model.parameters():
        p.requires_grad_(False)
    return count


@dataclass
class FinetuneRecipe:
    """The paper's few-shot recipe (section 3 / 4.1)."""
    rank: int = 32
    alpha: float = 32.0
    iterations: int = 50
    batch: int = 32
    # "sgd" is the paper's; "adamw" (betas 0.9/0.999) is scale-free, which matters when
    # the shots' errors (and so the gradients) are small, as on dark, low-contrast tiles.
    optimizer: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    # Crops of the shot after it is squashed to `pre_size` (what the runtime's squash fit
    # does to a frame), then rotated; area fraction of the crop:
    pre_size: int = 256
    crop_scale: tuple[float, float] = (0.6, 1.0)
    max_rotation: float = 180.0
    seed: int = 0
    threads: int = 2
    # The pretrained model's contrast standardisation (mean, std), applied to every crop.
    standardise: tuple[float, float] | None = None


def finetune(mae: MAE, shots: list[Path], recipe: FinetuneRecipe, log=print) -> dict:
    """LoRA-finetune `mae` in place on the good `shots`, loss on ALL patches; then fold.
    Returns a summary (loss curve, fold error)."""
    rng, gen = seeded(recipe.seed, recipe.threads)
    images = [data.square_resize(data.load_rgb(p), recipe.pre_size) for p in shots]
    if not images:
        raise SystemExit("finetune needs at least one good image")
    cfg = mae.cfg
    keep_count = round(cfg.num_patches * (1 - recipe.mask_ratio))
    wrapped = add_lora(mae, recipe.rank, recipe.alpha)
    params = [p for p in mae.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                              weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        raise SystemExit(f"unknown optimizer {recipe.optimizer!r} (sgd or adamw)")
    augment = data.Augment(cfg.img_size, scale=recipe.crop_scale,
                           max_rotation=recipe.max_rotation, jitter=0.0, gray=0.0)
    losses = []
    start = time.time()
    mae.train()
    for it in range(recipe.iterations):
        # Copies of the shots, each with its own crop/rotation and its own random mask.
        imgs = torch.from_numpy(data.batch(images, augment, rng, recipe.batch,
                                           recipe.standardise))
        keep = random_keep(recipe.batch, cfg.num_patches, keep_count, gen)
        pred = mae.decode(mae.encode(imgs, keep), keep)
        loss = ((pred - mae.patchify(imgs)) ** 2).mean()  # all patches
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if it % 10 == 0 or it == recipe.iterations - 1:
            log(f"iter {it:3d}/{recipe.iterations}  loss {losses[-1]:.4f}")
    mae.eval()
    # Fold and prove the folded model computes what the LoRA model computes.
    probe = torch.from_numpy(data.batch(images, augment, rng, 1, recipe.standardise))
    probe_keep = torch.arange(0, cfg.num_patches, 4)[None]
    with torch.no_grad():
        before = mae(probe, probe_keep)
        folded = fold_lora(mae)
        after = mae(probe, probe_keep)
    fold_diff = float((before - after).abs().max())
    if fold_diff > 1e-4:
        raise SystemExit(f"LoRA fold changed the output by {fold_diff:.2e}")
    log(f"folded {folded} LoRA layers; max |folded - unfolded| = {fold_diff:.2e}")
    return {"recipe": asdict(recipe), "shots": [str(p) for p in shots], "losses": losses,
            "lora_layers": wrapped, "fold_max_abs_diff": fold_diff,
            "seconds": time.time() - start}


def magnetic_tile_shots(root: Path, shots: int, shot_seed: int, eval_limit: int = 392,
                        eval_seed: int = 0) -> list[Path]:
    """Good shots from `MT_Free` that are NOT in the evaluation set.

    The evaluation set is what `maeday-edge eval --limit <eval_limit> --seed <eval_seed>`
    picks: the first `eval_limit` of a SplitMix64 Fisher-Yates shuffle of the sorted
    `MT_Free/Imgs/*.jpg` (the same generator as `src/model/schedule.rs`). The shots are drawn
    from the rest with a second shuffle seeded by `shot_seed`.
    """
    normals = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))
    if len(normals) <= eval_limit:
        raise SystemExit(f"{root}: only {len(normals)} MT_Free images, none left for shots")
    perm = SplitMix64(eval_seed).permutation(len(normals))
    rest = [normals[i] for i in perm[eval_limit:]]
    pick = SplitMix64(shot_seed).permutation(len(rest))[:shots]
    return [rest[i] for i in pick]
