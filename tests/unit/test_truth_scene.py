"""The independent same-scene criterion that scores planted-truth runs (enrich_ray.truth.scene): a frame
and its planted near-duplicates are one scene, two frames are two, and the false-pair interval."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from enrich_ray.truth.planted import NEAR_TRANSFORMS, _near_dup, synthetic_ultrasound
from enrich_ray.truth.scene import SAME_SCENE, same_scene_score
from enrich_ray.truth.scoring import wilson_interval


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(5)
    a, b = synthetic_ultrasound(rng, 256), synthetic_ultrasound(rng, 256)
    cv2.imwrite(str(root / "a.png"), a)
    cv2.imwrite(str(root / "b.png"), b)
    for how in NEAR_TRANSFORMS:
        data, ext = _near_dup(a, how, rng)
        (root / f"a_{how}{ext}").write_bytes(data)
    m = cv2.getRotationMatrix2D((128, 128), 40, 1.0)
    cv2.imwrite(str(root / "a_rotate_40.png"), cv2.warpAffine(a, m, (256, 256)))
    return root


@pytest.mark.parametrize("how", NEAR_TRANSFORMS)
def test_planted_near_duplicates_are_one_scene(frames, how):
    path = next(frames.glob(f"a_{how}.*"))
    assert same_scene_score(frames / "a.png", path)["ssim"] >= SAME_SCENE


def test_two_frames_are_two_scenes_and_a_large_turn_is_no_alignment(frames):
    assert same_scene_score(frames / "a.png", frames / "b.png")["ssim"] < SAME_SCENE
    assert same_scene_score(frames / "a.png", frames / "a_rotate_40.png")["ssim"] < SAME_SCENE


def test_wilson_interval_holds_the_share():
    lo, hi = wilson_interval(4, 322)
    assert lo < 4 / 322 < hi and 0 < lo and hi < 0.04
    assert wilson_interval(0, 50)[0] == 0.0
