import json
from pathlib import Path

import numpy as np
import pytest

from models.workstation.masks import schedule

REF = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "reference"


def test_python_schedules_match_the_golden_file_rust_also_checks():
    golden = json.loads((REF / "schedules.json").read_text())
    assert len(golden) == 4
    for key, masks in golden.items():
        kind, n, k, l, s = key.split("-")
        got = schedule(kind, int(n[1:]), int(k[1:]), int(l[1:]), int(s[1:]))
        assert got.tolist() == masks, key


def test_random_schedule_is_deterministic_sorted_and_seed_dependent():
    a = schedule("random", 32, 49, 196, 0)
    assert a.shape == (32, 49) and a.dtype == np.int64
    assert (np.diff(a, axis=1) > 0).all()
    assert np.array_equal(a, schedule("random", 32, 49, 196, 0))
    assert not np.array_equal(a, schedule("random", 32, 49, 196, 1))


@pytest.mark.parametrize("n,k,l", [(8, 49, 196), (16, 49, 196), (12, 64, 256)])
def test_balanced_schedule_shows_every_patch_equally_often(n, k, l):
    counts = np.bincount(schedule("balanced", n, k, l, 5).ravel(), minlength=l)
    assert (counts == n * k // l).all()


def test_bad_schedules_raise():
    with pytest.raises(ValueError):
        schedule("balanced", 4, 50, 196, 0)
    with pytest.raises(ValueError):
        schedule("spiral", 4, 49, 196, 0)
