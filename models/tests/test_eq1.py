from pathlib import Path

import numpy as np
import torch

from models.workstation import eq1
from models.workstation.mae import AnomalyMapHead

REF = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference"


def test_numpy_literal_eq1_matches_the_torch_head_that_graphs_fold_in():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    recon = rng.standard_normal((5, 3, 40, 40)).astype(np.float32)
    want = eq1.anomaly_map(image, recon)
    got = AnomalyMapHead()(torch.from_numpy(image), torch.from_numpy(recon)).numpy()[0, 0]
    assert np.abs(got - want).max() <= 1e-5


def test_committed_reference_map_is_eq1_of_the_committed_reconstructions():
    image = np.load(REF / "image.npy")
    recon = np.load(REF / "reconstruction.npy")
    want = np.load(REF / "anomaly_map.npy")
    assert np.abs(eq1.anomaly_map(image, recon) - want).max() <= 1e-9
    assert want.max() > 0.1


def test_a_perfect_reconstruction_scores_zero_and_a_local_defect_peaks_there():
    image = np.zeros((1, 3, 32, 32), np.float32)
    recon = np.repeat(image, 4, axis=0)
    assert np.abs(eq1.anomaly_map(image, recon)).max() == 0
    recon[:, :, 10, 20] = 1.0
    e = eq1.anomaly_map(image, recon)
    assert np.unravel_index(e.argmax(), e.shape) == (10, 20)
