"""The independent same-scene criterion that scores planted-truth runs (enrich_ray.truth.scene): a frame
and its planted near-duplicates are one scene, two frames are two, and the false-pair interval."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
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


def test_score_near_counts_an_unplanted_pair_of_two_scenes_as_false(tmp_path):
    """Two distinct synthetic bases grouped together are unplanted and two scenes; a base with its planted
    near-duplicate is planted and not judged."""
    from enrich_ray.truth import plant_archive, score_near

    truth = plant_archive(tmp_path, "synthetic", n_base=20, seed=1, foreign_share=0.0, byte_copy_share=0.0,
                          pixel_copy_share=0.0, near_dup_share=0.1, cine_clips=0)
    png = truth[(truth["role"] == "base") & truth["path"].str.endswith(".png")]
    near = truth[truth["role"] == "near_dup"].iloc[0]
    original = truth[truth["path"] == near["original"]].iloc[0]
    a, b = (r for _, r in png[png["path"] != near["original"]].head(2).iterrows())
    rows = [(0, a, True), (0, b, False), (1, original, True), (1, near, False)]
    dups = pd.DataFrame({"group_id": [g for g, _, _ in rows], "kind": "near",
                         "image_id": [r["image_id"] for _, r, _ in rows], "frame_index": [0] * 4,
                         "is_representative": [rep for _, _, rep in rows], "content_similarity": 0.96})
    s = score_near(truth, dups, str(tmp_path), judge_scene=True)
    assert s["pairs_by_relation"]["unplanted"] == 1 and s["pairs_by_relation"]["planted"] == 1
    assert s["unplanted_other_scene"] == 1 and s["false_pair_rate_scene"] == pytest.approx(0.5)
    assert s["scene_other_pairs"][0]["representative"] == a["path"] and s["scene_other_pairs"][0]["member"] == b["path"]
    lo, hi = s["false_pair_rate_scene_interval"]
    assert lo < 0.5 < hi
    assert "false_pair_rate_scene" not in score_near(truth, dups, str(tmp_path))  # judged only when asked
