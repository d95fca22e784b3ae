"""The dev sets of issue 20 and the per-pixel normalisation reference."""

import numpy as np
import pytest
from PIL import Image

from models.workstation import devsets, pixelnorm


def test_one_good_map_leaves_its_pattern_out_in_units_of_its_spread():
    rng = np.random.default_rng(0)
    good = rng.gamma(2.0, 1.0, (30, 40))
    mu, sigma = pixelnorm.fit([good])
    assert np.array_equal(mu, good)
    assert np.allclose(sigma, 0.5 * good.std())
    z = (good + 3 * good.std() - mu) / sigma
    assert np.allclose(z, 6.0)
    assert pixelnorm.top_k_mean(np.arange(200.0)) == 198.5  # top 2 of 200


def test_the_scene_check_keeps_a_fixed_scene_per_pixel_and_pools_a_moving_one():
    rng = np.random.default_rng(1)
    tex = rng.gamma(2.0, 1.0, (30, 80))
    fixed = [tex[:, :40] + rng.normal(0, 0.01, (30, 40)) for _ in range(4)]
    moving = [tex[:, d:d + 40] for d in (0, 10, 20, 30)]
    mu, sigma = pixelnorm.fit_pooled(moving)
    assert np.allclose(mu, np.stack(moving).mean()) and np.allclose(sigma, np.stack(moving).std())
    assert pixelnorm.scene_check(fixed)["model"] == "per-pixel"
    check = pixelnorm.scene_check(moving)
    assert check["model"] == "pooled"
    assert check["pooled_held_out_max"] < check["per_pixel_held_out_max"]


@pytest.mark.skipif(not devsets.CLIP.exists(), reason="needs ../shared/data")
def test_synth_fod_is_seeded_and_masks_mark_the_pasted_objects(tmp_path):
    for run in ("a", "b"):
        devsets.synth_fod(tmp_path / run, seed=3, scenes=["woodenFloor.jpg"], good=2, per_kind=2)
    a, b = tmp_path / "a" / "woodenFloor", tmp_path / "b" / "woodenFloor"
    for kind in devsets.KINDS:
        for i in range(2):
            img_a = np.asarray(Image.open(a / "test" / kind / f"{i:03d}.png"))
            assert np.array_equal(img_a, np.asarray(Image.open(b / "test" / kind / f"{i:03d}.png")))
            mask = np.asarray(Image.open(a / "ground_truth" / kind / f"{i:03d}_mask.png")) > 127
            good = np.asarray(Image.open(a / "test" / "good" / "000.png")).astype(float)
            assert 20 < mask.sum() < 0.2 * mask.size, (kind, mask.sum())
            # The object changes the pixels under its mask far more than camera jitter does.
            diff = np.abs(img_a.astype(float) - good).mean(axis=2)
            assert diff[mask].mean() > 2 * diff[~mask].mean(), kind


@pytest.mark.skipif(not devsets.CLIP.exists(), reason="needs ../shared/data")
def test_conveyor_set_labels_the_clip(tmp_path):
    devsets.conveyor_set(tmp_path)
    assert len(list((tmp_path / "good").iterdir())) == 14
    assert sorted(p.name for p in (tmp_path / "bolt").iterdir())[0] == "frame02.png"
    assert not (tmp_path / "bolt" / "frame23.png").exists()
