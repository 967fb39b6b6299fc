"""Decode + preprocess throughput per core: DICOM (uncompressed, RLE, JPEG 2000) and BUSI PNGs.

Single process, one thread (OpenCV and BLAS pinned to 1). The 512x512 16-bit DICOMs are made
here from real images (pydicom's 693_UNCR.dcm CT, and MR2_UNCR.dcm binned 2x2) with pydicom's
RLE and JPEG 2000 encoders. Each case runs with and without reduced-resolution decoding and
prints how far the reduced 64x64 output is from the full one (the CT's narrow window makes the
decoder refuse the shortcut, so there it only costs). Then BUSI PNGs and a JPEG, and last
OpenCV INTER_AREA against a plain numpy block-mean resize.

    .venv/bin/python tests/benchmarks/bench_decode.py [--quick]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import time
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEG2000Lossless, RLELossless

from enrich_ray.config import DecodeConfig
from enrich_ray.decode.dicom import iter_dicom_frames
from enrich_ray.decode.preprocess import preprocess, resize_area
from enrich_ray.decode.raster import decode_raster
from enrich_ray.decode.stage import decode_batch

BUSI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "busi_256" / "Dataset_BUSI_with_GT"


def first_frame(data: bytes, cfg: DecodeConfig) -> np.ndarray:
    """The display image of a DICOM file's first frame (the decode stage's path, before crop and resize)."""
    _, frame = next(iter_dicom_frames(data, cfg))
    if isinstance(frame, Exception):
        raise frame
    return frame.image


def _rate(fn, seconds: float) -> float:
    """Calls per CPU-second of this process (one thread: per core), over about `seconds` of CPU time.

    CPU time rather than wall time, so other work on a shared machine does not count against it.
    """
    fn()
    count, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def _encodings(ds: pydicom.Dataset) -> dict[str, bytes]:
    """ds uncompressed, RLE, JPEG 2000 lossless and JPEG 2000 lossy (20:1), as file bytes."""
    original = BytesIO()
    ds.save_as(original)
    cases = {}
    for label, uid, kwargs in (
        ("uncompressed", None, {}),
        ("RLE", RLELossless, {}),
        ("JPEG 2000 lossless", JPEG2000Lossless, {}),
        ("JPEG 2000 lossy 20:1", JPEG2000, {"j2k_cr": [20]}),
    ):
        copy = pydicom.dcmread(BytesIO(original.getvalue()))
        if uid is not None:
            copy.compress(uid, **kwargs)
        buffer = BytesIO()
        copy.save_as(buffer)
        cases[label] = buffer.getvalue()
    return cases


def _dicom_images() -> dict[str, pydicom.Dataset]:
    """Two real 512x512 16-bit images: a CT in a narrow window, and an MR in a wide one (MR2, 2x2-binned)."""
    ct = pydicom.dcmread(get_testdata_file("693_UNCR.dcm", download=False))
    mr = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm", download=False))
    binned = mr.pixel_array.reshape(512, 2, 512, 2).mean(axis=(1, 3)).round().astype(np.uint16)
    mr.Rows, mr.Columns, mr.PixelData = 512, 512, binned.tobytes()
    return {"693 CT, window 40/100": ct, "MR2 binned, window 1000/2000": mr}


def _blas_note() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} x{i['num_threads']}" for i in threadpool_info())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings (about 0.3 s per case)")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 1.5
    cv2.setNumThreads(1)
    full, reduced = DecodeConfig(reduced_resolution=False), DecodeConfig(reduced_resolution=True)
    uncropped = DecodeConfig(reduced_resolution=False, crop="none")
    print(f"one thread; cv2 threads {cv2.getNumThreads()}; BLAS: {_blas_note()}; size={full.size}; "
          "rates in images per CPU-second")

    for title, ds in _dicom_images().items():
        print(f"\nDICOM 512x512 16-bit, {title}: decode + window + crop + INTER_AREA resize to 64x64")
        print(f"{'encoding':22s} {'bytes':>8s} {'crop=none':>10s} {'crop=trim':>10s} {'trim+reduced':>13s} "
              f"{'speed-up':>9s} {'mean|d|':>8s} {'max|d|':>7s}")
        for label, data in _encodings(ds).items():
            rates, outputs = {}, {}
            for name, cfg in (("none", uncropped), ("full", full), ("reduced", reduced)):
                outputs[name] = preprocess(first_frame(data, cfg), cfg)[0]
                rates[name] = _rate(lambda cfg=cfg, data=data: preprocess(first_frame(data, cfg), cfg), seconds)
            diff = np.abs(outputs["full"] - outputs["reduced"])
            print(f"{label:22s} {len(data):8d} {rates['none']:10.0f} {rates['full']:10.0f} {rates['reduced']:13.0f} "
                  f"{rates['reduced'] / rates['full']:8.1f}x {diff.mean():8.4f} {diff.max():7.3f}")

    if BUSI.is_dir():
        files = sorted(BUSI.rglob("*.png"))[:200]
        blobs = [p.read_bytes() for p in files]
        print(f"\nBUSI 256x256 PNG ({len(blobs)} files), decode + luma + crop + resize")
        rate = _rate(lambda: [preprocess(decode_raster(b, full).image, full) for b in blobs], seconds) * len(blobs)
        print(f"  decode_raster + preprocess: {rate:8.0f} images/s")
        table = pa.Table.from_pylist([{"image_id": str(i), "source_uri": str(p), "format": "png", "data": b}
                                      for i, (p, b) in enumerate(zip(files, blobs))])
        rate = _rate(lambda: decode_batch(table, full), seconds) * len(blobs)
        print(f"  decode_batch (Arrow in, Arrow out): {rate:8.0f} images/s")
        big = cv2.resize(cv2.imdecode(np.frombuffer(blobs[0], np.uint8), cv2.IMREAD_COLOR), (1024, 1024))
        jpeg = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        a = preprocess(decode_raster(jpeg, full).image, full)[0]
        b = preprocess(decode_raster(jpeg, reduced).image, reduced)[0]
        r_full = _rate(lambda: preprocess(decode_raster(jpeg, full).image, full), seconds)
        r_red = _rate(lambda: preprocess(decode_raster(jpeg, reduced).image, reduced), seconds)
        print(f"  1024x1024 JPEG (BUSI upscaled): full {r_full:6.0f} img/s, DCT-reduced {r_red:6.0f} img/s "
              f"({r_red / r_full:.1f}x), mean|d| {np.abs(a - b).mean():.4f}, max|d| {np.abs(a - b).max():.3f}")
    else:
        print(f"\nBUSI PNGs not found at {BUSI}: skipped")

    print("\nResize 512x512 float32 -> 64x64: OpenCV INTER_AREA vs numpy block mean")
    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    area = _rate(lambda: resize_area(image, 64), seconds)
    block = _rate(lambda: image.reshape(64, 8, 64, 8).mean(axis=(1, 3)), seconds)
    same = np.abs(resize_area(image, 64) - image.reshape(64, 8, 64, 8).mean(axis=(1, 3))).max()
    print(f"  INTER_AREA {area:8.0f} /s   numpy block mean {block:8.0f} /s   ({area / block:.1f}x), max|d| {same:.1e}")


if __name__ == "__main__":
    main()
