"""A masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners").

The module and parameter names follow the official facebookresearch/mae code
(`patch_embed.proj`, `blocks.{i}.attn.qkv`, `decoder_pred`, ...) so that an official
checkpoint's `state_dict` loads into this class without renaming.

`MAE.forward(image, keep)` is the inference form the edge runtime runs: one image, N masks,
each mask given as the indices of its K visible patches. Everything is written with ops
that export cleanly to ONNX opset 17 and run well in tract (no einsum: see
`../shared/notes/inference-findings.md`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class MAEConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict:
        return asdict(self)


# Sizes used by the tooling. `vit_base` / `vit_large` match the official MAE checkpoints.
PRESETS = {
    "fixture": MAEConfig(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                         decoder_depth=1, decoder_num_heads=2),
    "tiny": MAEConfig(),
    "vit_base": MAEConfig(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512,
                          decoder_depth=8, decoder_num_heads=16),
    "vit_large": MAEConfig(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512,
                           decoder_depth=8, decoder_num_heads=16),
}


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings, [1 + grid*grid, dim] with a zero CLS row.

    Half the channels encode the row, half the column; each half is [sin, cos] of the
    position times geometrically spaced frequencies (as in the MAE paper)."""
    if dim % 4 != 0:
        raise ValueError(f"embedding dim {dim} must be divisible by 4")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    # The official code embeds the w-coordinate grid first, then h.
    emb = np.concatenate([one_axis(gw), one_axis(gh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb.astype(np.float32)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MAEConfig, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, L, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rewrites: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        if rewrites:
            # Export form: three projections on row slices of the fused weight. The same dot
            # products, but the graph has three plain MatMuls instead of one MatMul, a 5-D
            # transpose and three Gathers.
            # Static slice bounds (python ints), so the exporter folds the slices into three
            # constant weights.
            w, bias, e = self.qkv.weight, self.qkv.bias, self.qkv.in_features
            q, k, v = (F.linear(x, w[i * e:(i + 1) * e], bias[i * e:(i + 1) * e])
                       .reshape(b, t, h, e // h).transpose(1, 2) for i in range(3))
        else:
            qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        if self.training:
            # The fused kernel (same maths) for training; export keeps the plain ops below.
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(b, t, d))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, as in MAE)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rewrites: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rewrites)
        return x + self.mlp(self.norm2(x))


class MAE(nn.Module):
    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        d, dd = cfg.embed_dim, cfg.decoder_embed_dim
        self.patch_embed = PatchEmbed(cfg, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d), requires_grad=False)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, dd),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dd, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, cfg.patch_size ** 2 * cfg.in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The MAE initialisation: fixed sin-cos positions, xavier linears, small tokens."""
        g = self.cfg.grid
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed_2d(self.cfg.embed_dim, g))[None])
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(sincos_pos_embed_2d(self.cfg.decoder_embed_dim, g))[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- pieces shared by training and inference ------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, p*p*C], patch pixels in (row, col, channel) order."""
        p, g, c = self.cfg.patch_size, self.cfg.grid, self.cfg.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, p*p*C] -> [B, C, H, W]; reshape + permute (an einsum here exports as a
        generic EinSum that tract runs 3.8x slower)."""
        p, g, c = self.cfg.patch_size, self.cfg.grid, self.cfg.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, g * p, g * p)

    def encode(self, imgs: torch.Tensor, keep: torch.Tensor,
               rewrites: bool = False) -> torch.Tensor:
        """Encode the visible patches. imgs [B or 1, C, H, W]; keep [N, K] patch indices.
        A single image is broadcast to the N masks. Returns [N, 1 + K, D]."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        n, d = keep.shape[0], x.shape[-1]
        if rewrites and x.shape[0] == 1:
            # Export form (one image): a plain Gather of rows of [L, D], not Expand to N
            # copies + GatherElements. Picks the same rows.
            x = x[0][keep]
        else:
            x = x.expand(n, -1, -1)
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x, rewrites)
        return self.norm(x)

    def decode(self, latent: torch.Tensor, keep: torch.Tensor,
               rewrites: bool = False) -> torch.Tensor:
        """Fill the hidden positions with the mask token and predict every patch: [N, L, p*p*C]
        (with `rewrites`: [N, L, C*p*p], see `pred_channel_major`)."""
        x = self.decoder_embed(latent)
        n, dd = x.shape[0], x.shape[-1]
        full = self.mask_token.expand(n, self.cfg.num_patches, dd)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dd), x[:, 1:, :])
        x = torch.cat([x[:, :1, :], full], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x, rewrites)
        x = self.decoder_norm(x)
        if rewrites:
            w, b = self.pred_channel_major()
            return F.linear(x, w, b)[:, 1:, :]
        return self.decoder_pred(x)[:, 1:, :]

    def pred_channel_major(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`decoder_pred`'s weight and bias with the output rows reordered from (row, col,
        channel) to (channel, row, col): each output is the same dot product, and unpatchify
        then moves runs of `p` contiguous pixels instead of single values 3 apart."""
        p, c = self.cfg.patch_size, self.cfg.in_chans
        order = torch.arange(p * p * c).reshape(p, p, c).permute(2, 0, 1).reshape(-1)
        return self.decoder_pred.weight[order], self.decoder_pred.bias[order]

    def unpatchify_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C*p*p] (channel, row, col) -> [B, C, H, W]."""
        p, g, c = self.cfg.patch_size, self.cfg.grid, self.cfg.in_chans
        x = x.reshape(x.shape[0], g, g, c, p, p)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, image: torch.Tensor, keep: torch.Tensor,
                rewrites: bool = False) -> torch.Tensor:
        """Reconstruct the full image once per mask: [N, C, H, W]. `rewrites` selects the
        export form: the same maths in ops that run faster in tract and onnxruntime (three
        Q/K/V projections, a plain Gather, channel-major `decoder_pred` rows)."""
        latent = self.encode(image, keep, rewrites)
        if rewrites:
            return self.unpatchify_channel_major(self.decode(latent, keep, rewrites))
        return self.unpatchify(self.decode(latent, keep))


def gaussian_kernel_1d(size: int = 7, sigma: float = 1.4) -> np.ndarray:
    """Normalised 1-D Gaussian taps (sum 1); the 2-D kernel of Eq. 1 is their outer product."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(r ** 2) / (2 * sigma ** 2))
    return (k / k.sum()).astype(np.float32)


class AnomalyMapHead(nn.Module):
    """Eq. 1 folded into the graph: mean over masks of the RGB-summed squared error, then
    the 7x7 Gaussian with reflect padding. Filtering after the mean equals filtering each
    map (the filter is linear), so the graph filters once."""

    def __init__(self, size: int = 7, sigma: float = 1.4):
        super().__init__()
        k1 = torch.from_numpy(gaussian_kernel_1d(size, sigma))
        self.register_buffer("kernel", torch.outer(k1, k1)[None, None], persistent=False)
        self.pad = size // 2

    def forward(self, image: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        err = ((recon - image) ** 2).sum(dim=1, keepdim=True).mean(dim=0, keepdim=True)
        err = F.pad(err, (self.pad,) * 4, mode="reflect")
        return F.conv2d(err, self.kernel)


class MAEDAYGraph(nn.Module):
    """What gets exported: image [1,3,H,W] + keep [N,K] -> reconstruction or anomaly map."""

    def __init__(self, mae: MAE, output: str = "reconstruction", gaussian_size: int = 7,
                 gaussian_sigma: float = 1.4, rewrites: bool = True):
        super().__init__()
        if output not in ("reconstruction", "anomaly_map"):
            raise ValueError(f"unknown output kind {output!r}")
        self.mae = mae
        self.output = output
        self.rewrites = rewrites
        self.head = AnomalyMapHead(gaussian_size, gaussian_sigma)

    def forward(self, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        recon = self.mae(image, keep, self.rewrites)
        if self.output == "reconstruction":
            return recon
        return self.head(image, recon)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_frame(cfg: MAEConfig, n_masks: int, keep: int) -> float:
    """Rough multiply-add count x2 of the linear layers for one frame of N masks."""
    def blocks(tokens: int, dim: int, depth: int) -> float:
        per = tokens * (12 * dim * dim) + 2 * tokens * tokens * dim
        return depth * per
    enc = blocks(keep + 1, cfg.embed_dim, cfg.depth)
    dec = blocks(cfg.num_patches + 1, cfg.decoder_embed_dim, cfg.decoder_depth)
    return 2.0 * n_masks * (enc + dec)
