"""The decode stage's pixel_hash, colorfulness and header facts, on real DICOM files and photographs.

pixel_hash makes exact duplicates (analysis.duplicates): pixel-identical files of another
container, compression or lossless transfer syntax hash equal; any pixel change differs.
"""
from __future__ import annotations

import struct
import zlib
from io import BytesIO

import cv2
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from skimage import data as photos

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.stage import decode_batch, pixel_hash
from tests.conftest import testdata_path

# Measured on the planted archive below (pixel embedder, cosine 0.85 and content 0.95): 30 of 36 near-dups
# grouped with their original (0.833: burned-in text, +8% brightness and a 5-degree rotation on the
# flat synthetic frames are what it misses; README's planted-truth table has the full runs), no
# false pair of 42. Below the 0.90 goal on this base.
NEAR_RECALL_FLOOR = 0.83
NEAR_FALSE_CEILING = 0.01

FULL = DecodeConfig(reduced_resolution=False)


def _frames(files: dict[str, bytes], cfg: DecodeConfig = DecodeConfig(), **archive) -> dict[str, dict]:
    """Decode named files through the stage; name -> its frames row (frame 0)."""
    rows = [{"image_id": name, "source_uri": f"mem/{name}", "format": _format(data), "data": data, **archive}
            for name, data in files.items()]
    frames, errors = decode_batch(pa.Table.from_pylist(rows), cfg)
    assert errors.num_rows == 0, errors.to_pylist()
    table = frames.drop_columns(["pixels"]).to_pylist()
    return {r["image_id"]: r for r in table if r["frame_index"] == 0}


def _format(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpeg" if data.startswith(b"\xff\xd8") else "dicom"


def _png(image: np.ndarray, **options) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1] if image.ndim == 3 else image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def _with_text_chunk(png: bytes) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: other bytes, same pixels."""
    body = b"tEXt" + b"Comment\x00re-saved elsewhere"
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]


def _with_comment(jpeg: bytes) -> bytes:
    """The same JPEG codestream with a COM segment after SOI."""
    text = b"another writer"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def test_lossless_transfer_syntaxes_of_one_image_hash_equal():
    family = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
              "MR_small_expb.dcm", "MR_small_implicit.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]
    rows = _frames({name: testdata_path(name).read_bytes() for name in [*family, "CT_small.dcm", "SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm"]})
    assert len({rows[name]["pixel_hash"] for name in family}) == 1
    assert rows["CT_small.dcm"]["pixel_hash"] != rows["MR_small.dcm"]["pixel_hash"]
    assert rows["SC_rgb.dcm"]["pixel_hash"] == rows["SC_rgb_rle.dcm"]["pixel_hash"]  # RGB, RLE: lossless
    assert rows["SC_rgb_jpeg_dcmtk.dcm"]["pixel_hash"] != rows["SC_rgb.dcm"]["pixel_hash"]  # lossy JPEG


def test_large_jpeg2000_lossless_hashes_equal_when_decoded_in_full():
    files = {name: testdata_path(name).read_bytes() for name in ("MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm")}
    full = _frames(files, FULL)
    assert full["MR2_UNCR.dcm"]["pixel_hash"] == full["MR2_J2KR.dcm"]["pixel_hash"] != full["MR2_J2KI.dcm"]["pixel_hash"]
    # Reduced-resolution decoding (the default) hashes the reduced image: the J2K file's own.
    reduced = _frames(files)
    assert reduced["MR2_UNCR.dcm"]["pixel_hash"] == full["MR2_UNCR.dcm"]["pixel_hash"]
    assert reduced["MR2_J2KR.dcm"]["pixel_hash"] != reduced["MR2_UNCR.dcm"]["pixel_hash"]


def test_png_resaves_hash_equal_and_any_pixel_change_differs():
    photo = photos.astronaut()
    changed = photo.copy()
    changed[100, 200, 1] ^= 1
    rows = _frames({
        "fast": _png(photo, compress_level=1),
        "small": _png(photo, compress_level=9, optimize=True),
        "text": _with_text_chunk(_png(photo)),
        "one pixel": _png(changed),
        "grey": _png(photos.camera()),
    }, FULL)
    assert rows["fast"]["pixel_hash"] == rows["small"]["pixel_hash"] == rows["text"]["pixel_hash"]
    assert rows["one pixel"]["pixel_hash"] != rows["fast"]["pixel_hash"]
    assert len({r["pixel_hash"] for r in rows.values()}) == 3


def test_jpeg_reencodes_hash_differently_and_metadata_does_not():
    photo = photos.coffee()
    q90 = _jpeg(photo, 90)
    rows = _frames({"png": _png(photo), "q90": q90, "q90 commented": _with_comment(q90), "q80": _jpeg(photo, 80),
                    "q90 again": _jpeg(cv2.imdecode(np.frombuffer(q90, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], 90)})
    assert rows["q90"]["pixel_hash"] == rows["q90 commented"]["pixel_hash"]  # same codestream
    assert len({rows[n]["pixel_hash"] for n in ("png", "q90", "q80", "q90 again")}) == 4


def test_colorfulness_of_colour_grey_and_grey_in_rgb_sources():
    astronaut, camera = photos.astronaut(), photos.camera()
    grey_rgb = np.repeat(camera[..., None], 3, axis=2)  # as BUSI stores its ultrasound: RGB holding grey
    rows = _frames({
        "astronaut png": _png(astronaut),
        "astronaut jpeg": _jpeg(astronaut, 90),
        "camera png": _png(camera),
        "camera in rgb png": _png(grey_rgb),
        "camera in rgb jpeg": _jpeg(grey_rgb, 90),
    })
    rgb = astronaut.astype(np.float64)
    truth = float((rgb.max(axis=2) - rgb.min(axis=2)).mean() / 255)
    assert rows["astronaut png"]["colorfulness"] == pytest.approx(truth, rel=0.02) and truth > 0.1
    assert rows["astronaut jpeg"]["colorfulness"] == pytest.approx(truth, rel=0.3)  # from 8x8 block means
    assert rows["camera png"]["colorfulness"] == 0.0 and rows["camera in rgb png"]["colorfulness"] == 0.0
    assert rows["camera in rgb jpeg"]["colorfulness"] < 0.01  # chroma of grey content: compression noise only
    dicom = _frames({n: testdata_path(n).read_bytes() for n in ("SC_rgb.dcm", "US1_UNCR.dcm", "MR_small.dcm", "OBXXXX1A.dcm")})
    assert dicom["SC_rgb.dcm"]["colorfulness"] > 0.3 and dicom["OBXXXX1A.dcm"]["colorfulness"] > 0.0  # RGB, palette
    assert 0.0 < dicom["US1_UNCR.dcm"]["colorfulness"] < 0.2 and dicom["MR_small.dcm"]["colorfulness"] == 0.0


def test_header_facts_reach_the_frames_rows():
    from enrich_ray.decode.dicom import read_header

    ct = testdata_path("RG3_UNCR.dcm").read_bytes()
    header = read_header(ct, None)
    assert header["body_part"] == "EXTREMITY"
    dicom = _frames({"cr": ct}, **{k: header[k] for k in ("rows", "cols", "photometric", "body_part", "modality")})["cr"]
    assert (dicom["rows"], dicom["cols"], dicom["photometric"], dicom["body_part"], dicom["modality"]) == (1760, 1760, "MONOCHROME1", "EXTREMITY", "CR")
    rows = _frames({"rgb": _png(photos.astronaut()[:300]), "grey": _jpeg(photos.camera()[:, :400], 90),
                    "rgb jpeg": _jpeg(photos.coffee(), 90)})
    assert (rows["rgb"]["rows"], rows["rgb"]["cols"], rows["rgb"]["photometric"]) == (300, 512, "RGB")
    assert (rows["grey"]["rows"], rows["grey"]["cols"], rows["grey"]["photometric"]) == (512, 400, "MONOCHROME2")
    assert (rows["rgb jpeg"]["rows"], rows["rgb jpeg"]["cols"], rows["rgb jpeg"]["photometric"]) == (400, 600, "RGB")
    assert rows["rgb"]["body_part"] is None


def test_pixel_hash_covers_shape_and_dtype():
    image = np.zeros((4, 6), np.float32)
    assert pixel_hash(image) == pixel_hash(image.copy())
    assert pixel_hash(image) != pixel_hash(image.reshape(6, 4))
    assert pixel_hash(image) != pixel_hash(image.astype(np.float64))
    assert pixel_hash(np.asfortranarray(np.arange(6.0).reshape(2, 3))) == pixel_hash(np.arange(6.0).reshape(2, 3))


def test_byte_copies_are_rows_of_their_exact_group_and_near_members_speak_for_one_path():
    import pandas as pd

    from enrich_ray.analysis.duplicates import near_duplicates
    from enrich_ray.index.knn import exact_knn_graph
    from enrich_ray.analysis.duplicates import duplicate_families
    from enrich_ray.analysis.duplicates import rows_per_path
    from enrich_ray.schema import with_keys

    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 32))
    x = np.stack([base[0], base[0], base[0] + 0.05 * rng.standard_normal(32), base[1], base[2]])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    hashes = ["h0", "h0", "h2", "h3", "h4"]  # rows 0 and 1: the same pixels in two files
    uris = [["a"], ["b1", "b2"], ["c1", "c2"], ["d1", "d2", "d3"], ["e"]]  # identical bytes at several paths
    frames = pd.DataFrame({"image_id": list("abcde"), "frame_index": 0, "source_uri": [u[0] for u in uris]})
    groups = near_duplicates(exact_knn_graph(x, 2), 0.98, x, hashes, np.array([len(u) for u in uris]))
    dups = rows_per_path(with_keys(groups, frames), uris)
    by_group = {g: d for g, d in dups.groupby("group_id")}
    assert sorted(by_group) == [0, 1, 2, 3]  # exact {0, 1}, near {0, 2}, exact {2} (bytes at two paths), exact {3}
    g0, g1, g2, g3 = (by_group[g] for g in range(4))
    assert g0["source_uri"].tolist() == ["a", "b1", "b2"] and set(g0["kind"]) == {"exact"} and g0["group_size"].eq(3).all()
    assert g1["source_uri"].tolist() == ["a", "c1"] and set(g1["kind"]) == {"near"} and g1["group_size"].eq(2).all()
    assert g2["source_uri"].tolist() == ["c1", "c2"] and set(g2["kind"]) == {"exact"}
    assert g3["source_uri"].tolist() == ["d1", "d2", "d3"] and set(g3["kind"]) == {"exact"} and g3["group_size"].eq(3).all()
    assert dups.groupby("group_id")["is_representative"].sum().tolist() == [1, 1, 1, 1]
    assert dups.loc[dups["is_representative"], "source_uri"].tolist() == ["a", "a", "c1", "d1"]
    assert "e" not in set(dups["source_uri"])
    family = duplicate_families(dups, len(x))  # the near star with the exact sets of its members
    assert family[0] == family[1] == family[2] != family[3] and family[4] == -1


@pytest.fixture(scope="module")
def planted_archive(tmp_path_factory):
    """A small planted archive (enrich_ray.truth, synthetic base), packed and decoded, with pixel embeddings."""
    from enrich_ray import schema
    from enrich_ray.config import EmbedConfig
    from enrich_ray.embed.registry import fit_state, make_embedder
    from enrich_ray.io.pack import archive_table, pack
    from enrich_ray.truth import plant_archive

    out = tmp_path_factory.mktemp("planted_dups")
    truth = plant_archive(out / "src", "synthetic", n_base=120, seed=0, near_dup_share=0.3)
    pack([str(out / "src")], str(out / "archive"), progress=False)
    archive = archive_table(str(out / "archive"), schema.ARCHIVE.names).to_pandas()
    frames, errors = decode_batch(pa.Table.from_pandas(archive, schema=schema.ARCHIVE, preserve_index=False), DecodeConfig())
    meta = frames.drop_columns(["pixels"]).to_pandas()
    pixels = np.asarray(frames.column("pixels").combine_chunks().flatten(), np.float32).reshape(len(meta), 64, 64)
    embed = EmbedConfig(embedder="pixels")
    emb = make_embedder(embed, DecodeConfig(), state=fit_state(embed, DecodeConfig(), pixels)).embed_array(pixels)
    uris = meta["image_id"].map(dict(zip(archive["image_id"], archive["source_uris"]))).map(list).tolist()
    return out, truth, meta, pixels, emb, uris


def test_planted_duplicates_reach_their_floors(planted_archive):
    """Exact: every identical pair and nothing else; near: the planted near-dups at the measured floors."""
    from enrich_ray.analysis.duplicates import content_similarity, near_duplicates, thumbnails
    from enrich_ray.config import AnalysisConfig
    from enrich_ray.index.knn import exact_knn_graph
    from enrich_ray.analysis.duplicates import rows_per_path
    from enrich_ray.schema import with_keys
    from enrich_ray.truth import score_exact, score_near

    out, truth, meta, pixels, emb, uris = planted_archive
    # The defaults' embedding threshold (0.975) is the beta-VAE's; the raw-pixel cosine runs lower on one
    # picture (a crop, a rotation), so this pixel-embedding archive is judged at the thresholds chosen for it
    # before (README, "Judgments on planted truth"): what is checked is the mechanism and its invariants.
    cfg = AnalysisConfig(near_duplicate_threshold=0.85, near_duplicate_content_threshold=0.95)
    thumbs = thumbnails(pixels)
    table = near_duplicates(exact_knn_graph(emb, 10), cfg.near_duplicate_threshold, emb, meta["pixel_hash"].tolist(),
                            np.array([len(u) for u in uris]), thumbs, cfg.near_duplicate_content_threshold)
    dups = rows_per_path(with_keys(table, meta[["image_id", "frame_index", "source_uri"]]), uris)
    dups["source_uri"] = [u.split("/src/", 1)[1] for u in dups["source_uri"]]
    exact = score_exact(truth, dups, str(out / "src"))
    assert exact["precision"] == 1.0 and exact["recall"] == 1.0 and exact["true_pairs"] >= 5
    near = score_near(truth, dups, str(out / "src"))
    assert near["planted"] >= 20 and near["recall"] >= NEAR_RECALL_FLOOR
    assert near["false_pair_rate"] <= NEAR_FALSE_CEILING
    # The invariant behind the floors, on real frames: every near member passes both checks.
    for _, g in table[table["kind"] == "near"].groupby("group_id"):
        rep = np.full(len(g), g["row"].iloc[0])
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        assert (np.einsum("ij,ij->i", unit[g["row"]].astype(np.float64), unit[rep].astype(np.float64)) >= cfg.near_duplicate_threshold - 1e-6).all()
        assert (content_similarity(thumbs, g["row"].to_numpy(), rep) >= cfg.near_duplicate_content_threshold).all()
