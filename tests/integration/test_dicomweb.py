"""`enrich-ray pack dicomweb://...` against a real PACS: Orthanc with its DICOMweb plugin (tests/integration/pacs.py),
loaded with pydicom-data's files over STOW-RS."""
from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as pads
import pydicom
import pytest
from pydicom.uid import generate_uid

from enrich_ray.config import DecodeConfig, load_config
from enrich_ray.decode.stage import decode_batch
from enrich_ray.io import dicomweb
from enrich_ray.io.fs import StorageError
from enrich_ray.io.pack import ERRORS_NAME, archive_shards, pack
from tests.conftest import testdata_path
from tests.integration.pacs import PASSWORD, USER, BearerGate, broken_instance, pydicom_data_files, start_pacs

KEY = "dicomweb-test-key"


def _readable(paths) -> list:
    out = []
    for path in paths:
        try:
            out.append(pydicom.dcmread(path))
        except Exception:  # a few of pydicom-data's files are broken on purpose; the PACS never sees them
            continue
    return out


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """One Orthanc for the module, holding pydicom-data's files and an image whose pixel data ends halfway."""
    broken = broken_instance()
    server, accepted = start_pacs(tmp_path_factory.mktemp("pacs"), [*_readable(pydicom_data_files()), broken])
    assert broken in accepted
    yield server, server.instances(), broken.SOPInstanceUID
    server.stop()


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv(dicomweb.USER_ENV, USER)
    monkeypatch.setenv(dicomweb.PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv("ENRICH_RAY_PATIENT_KEY", KEY)


def _archive(path) -> pd.DataFrame:
    return pads.dataset(archive_shards(str(path)), format="parquet").to_table().to_pandas()


def _uids(df: pd.DataFrame) -> set[tuple]:
    return set(zip(df["sop_uid"], df["study_uid"], df["series_uid"]))


def _held_uids(held: dict, keep=lambda tags: True) -> set[tuple]:
    return {(sop, t["StudyInstanceUID"], t["SeriesInstanceUID"]) for sop, t in held.items() if keep(t)}


def test_pack_holds_every_instance_once_as_a_folder_pack_of_the_pacs_files(pacs, tmp_path):
    server, held, broken_sop = pacs
    summary = pack([server.source], str(tmp_path / "web"), progress=False)
    web = _archive(tmp_path / "web")
    assert len(web) == len(held) == summary.images and summary.unreadable == 0
    assert web["sop_uid"].is_unique and _uids(web) == _held_uids(held)
    assert web["source_uri"].str.startswith(f"{server.source}/studies/").all()
    assert (web["source_uri"] == [f"{server.source}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"
                                  for r in web.itertuples()]).all()

    # The bytes are the PACS's own (retrieved in any transfer syntax, never transcoded): the same image ids
    # and header fields as a pack of the files in its storage folder.
    folder = pack([str(server.storage)], str(tmp_path / "folder"), progress=False)
    files = _archive(tmp_path / "folder")
    assert folder.images == len(files) == len(web) and set(files["image_id"]) == set(web["image_id"])
    fields = ["image_id", "sop_uid", "study_uid", "series_uid", "patient_key", "modality", "n_frames", "rows",
              "transfer_syntax", "station"]
    pd.testing.assert_frame_equal(web[fields].sort_values("image_id").reset_index(drop=True),
                                  files[fields].sort_values("image_id").reset_index(drop=True))

    # De-identification as for folders: patient_key is the keyed HMAC of PatientID; no PatientID is stored.
    for row in web.itertuples():
        patient_id = held[row.sop_uid]["PatientID"]
        expected = hmac.new(KEY.encode(), patient_id.encode(), hashlib.sha256).hexdigest() if patient_id else None
        assert (None if pd.isna(row.patient_key) else row.patient_key) == expected
    ids = {t["PatientID"] for t in held.values() if t["PatientID"]}
    assert ids and not ids & set(web.drop(columns=["data", "source_uris"]).astype(str).to_numpy().ravel())

    # The broken instance is packed, and its decode is an error row naming the cause, as for a file.
    broken = web[web["sop_uid"] == broken_sop]
    rows = pads.dataset(archive_shards(str(tmp_path / "web"))).to_table(filter=pads.field("sop_uid") == broken_sop)
    frames, errors = decode_batch(rows, DecodeConfig())
    assert len(broken) == 1 and frames.num_rows == 0
    assert errors.to_pylist()[0]["error_type"] in ("Truncated", "CorruptPixelData")
    assert errors.to_pylist()[0]["source_uri"] == broken["source_uri"].iloc[0]


def test_query_filters_by_modality_and_night(pacs, tmp_path):
    server, held, _ = pacs
    summary = pack([f"{server.source}?Modality=MR"], str(tmp_path / "mr"), progress=False)
    mr = _archive(tmp_path / "mr")
    expected = _held_uids(held, lambda t: t["Modality"] == "MR")
    assert 0 < len(expected) < len(held) and summary.files_seen == len(expected)
    assert _uids(mr) == expected and set(mr["modality"]) == {"MR"}

    # A night in ISO form (what the nightly CronJob substitutes) matches the DICOM date, with another key.
    pack([f"{server.source}?StudyDate=2004-08-26&Modality=US"], str(tmp_path / "night"), progress=False)
    expected = _held_uids(held, lambda t: t["Modality"] == "US" and t["StudyDate"] == "20040826")
    assert expected and _uids(_archive(tmp_path / "night")) == expected


def test_failed_retrieve_is_an_error_row_and_a_rerun_fetches_only_what_is_missing(tmp_path, monkeypatch):
    server, accepted = start_pacs(tmp_path / "pacs", _readable(pydicom_data_files()[:12]))
    try:
        held = server.instances()
        stored = {}
        for ds in accepted:  # the first of a SOP Instance UID is the one the PACS keeps
            stored.setdefault(ds.SOPInstanceUID, ds)
        gone = sorted(held)[0]
        late = copy.deepcopy(stored[gone])
        late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        real_search, real_retrieve = dicomweb.Pacs.search, dicomweb.Pacs.retrieve

        def search_then_delete(self):  # the PACS drops an instance between the search and its retrieve
            found = real_search(self)
            server.rest("DELETE", f"/instances/{held[gone]['orthanc_id']}")
            return found

        monkeypatch.setattr(dicomweb.Pacs, "search", search_then_delete)
        first = pack([server.source], str(tmp_path / "a"), progress=False)
        errors = pd.read_parquet(tmp_path / "a" / ERRORS_NAME)
        assert first.unreadable == 1 and len(errors) == 1
        row = errors.iloc[0]
        assert row["stage"] == "pack" and row["error_type"] == "RetrieveFailed" and "HTTP 404" in row["message"]
        assert row["source_uri"].endswith(f"/instances/{gone}")
        packed = _archive(tmp_path / "a")
        assert set(packed["sop_uid"]) == set(held) - {gone}
        shard0 = (tmp_path / "a" / "part-00000.parquet").read_bytes()

        # The instance comes back and a new one arrives: the rerun fetches those two and nothing else.
        monkeypatch.setattr(dicomweb.Pacs, "search", real_search)
        server.store([stored[gone], late])
        fetched = []

        def retrieve(self, instance):
            fetched.append(instance.sop_uid)
            return real_retrieve(self, instance)

        monkeypatch.setattr(dicomweb.Pacs, "retrieve", retrieve)
        second = pack([server.source], str(tmp_path / "a"), progress=False)
        new = set(server.instances()) - set(held)
        assert new == {late.SOPInstanceUID} and sorted(fetched) == sorted({gone, *new}) and second.already_packed == len(held) - 1
        after = _archive(tmp_path / "a")
        assert after["sop_uid"].is_unique and set(after["sop_uid"]) == set(held) | new
        assert (tmp_path / "a" / "part-00000.parquet").read_bytes() == shard0
        assert len(archive_shards(str(tmp_path / "a"))) == 2
        assert pd.read_parquet(tmp_path / "a" / ERRORS_NAME).empty

        fetched.clear()
        third = pack([server.source], str(tmp_path / "a"), progress=False)
        assert fetched == [] and third.images == 0 and len(_archive(tmp_path / "a")) == len(after)
    finally:
        server.stop()


def test_an_outage_keeps_what_was_fetched_and_the_rerun_goes_on(tmp_path, monkeypatch):
    server, accepted = start_pacs(tmp_path / "pacs", _readable(pydicom_data_files()[:20]))
    try:
        held = server.instances()
        real_retrieve = dicomweb.Pacs.retrieve
        fetched = []

        def retrieve_then_fail(self, instance):  # the PACS goes down after a few instances
            if len(fetched) == 5:
                server.stop()
            fetched.append(instance.sop_uid)
            return real_retrieve(self, instance)

        monkeypatch.setattr(dicomweb.Pacs, "retrieve", retrieve_then_fail)
        with pytest.raises(StorageError, match="cannot be reached.*rerun the same command"):
            pack([server.source], str(tmp_path / "a"), progress=False)
        kept = set(_archive(tmp_path / "a")["sop_uid"])
        assert kept and kept < set(held)

        server.start()
        fetched.clear()
        monkeypatch.setattr(dicomweb.Pacs, "retrieve", lambda self, i: fetched.append(i.sop_uid) or real_retrieve(self, i))
        second = pack([server.source], str(tmp_path / "a"), progress=False)
        assert set(fetched) == set(held) - kept and second.already_packed == len(kept)
        done = _archive(tmp_path / "a")
        assert done["sop_uid"].is_unique and set(done["sop_uid"]) == set(held)
    finally:
        server.stop()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "enrich_ray", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_bad_sources_stop_before_work_in_one_line(pacs, tmp_path):
    server, _, _ = pacs
    closed = server.source.replace(f":{server.port}", ":9")
    cases = [
        ([closed], {}, "cannot be reached"),
        (["dicomweb:///dicom-web"], {}, "malformed DICOMweb source"),
        ([f"{server.source}?Modaliy=US"], {}, "did you mean Modality"),
        ([f"{server.source}?StudyDate=2026-11"], {}, "is not a date"),
        ([server.source.replace("//", f"//{USER}:{PASSWORD}@")], {}, "credentials do not go in the URL"),
        ([server.source], {dicomweb.PASSWORD_ENV: "wrong"}, "refused access (HTTP 401"),
        ([server.source.replace("/dicom-web", "/elsewhere")], {}, "no DICOMweb service"),
        ([server.source, str(tmp_path)], {}, "an archive of its own"),
    ]
    for sources, env, words in cases:
        proc = _cli("pack", *sources, "--out", str(tmp_path / "out"), env=env)
        lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert words in lines[0], lines[0]
        assert PASSWORD not in proc.stderr and "wrong" not in proc.stderr
        assert not (tmp_path / "out").exists()


TOKEN = "test-bearer-token-7f3a91"


@pytest.fixture()
def gate(pacs, monkeypatch):
    """The PACS behind a proxy that takes only `Bearer TOKEN`, and no basic credentials in the environment."""
    server, held, _ = pacs
    monkeypatch.delenv(dicomweb.USER_ENV)
    monkeypatch.delenv(dicomweb.PASSWORD_ENV)
    proxy = BearerGate(server, TOKEN)
    yield proxy, held
    proxy.stop()


def test_a_bearer_token_reaches_the_pacs_on_every_request(gate, tmp_path, monkeypatch):
    """pack with the token in the variable pack.dicomweb_bearer_env names (the default, then another):
    the search and every retrieve carry `Authorization: Bearer TOKEN`, and the archive is the one basic
    credentials give; the KOS store (STOW-RS) carries it too."""
    proxy, held = gate
    monkeypatch.setenv(dicomweb.TOKEN_ENV, TOKEN)
    summary = pack([f"{proxy.source}?Modality=CT"], str(tmp_path / "ct"), progress=False)
    expected = _held_uids(held, lambda t: t["Modality"] == "CT")
    assert expected and _uids(_archive(tmp_path / "ct")) == expected and summary.images == len(expected)
    searches = [p for m, p, _ in proxy.seen if "/instances?" in p or p.endswith("/instances")]
    retrieves = [p for m, p, _ in proxy.seen if m == "GET" and "/studies/" in p]
    assert searches and len(retrieves) == len(expected)
    assert {auth for _, _, auth in proxy.seen} == {f"Bearer {TOKEN}"}

    proxy.seen.clear()
    monkeypatch.delenv(dicomweb.TOKEN_ENV)
    monkeypatch.setenv("HOSPITAL_PACS_TOKEN", TOKEN)
    cfg = load_config(None, ["pack.dicomweb_bearer_env=HOSPITAL_PACS_TOKEN"])
    pack([f"{proxy.source}?Modality=CT"], str(tmp_path / "named"), cfg.pack, progress=False)
    assert _uids(_archive(tmp_path / "named")) == expected and {a for _, _, a in proxy.seen} == {f"Bearer {TOKEN}"}
    assert TOKEN not in cfg.pack.dicomweb_bearer_env  # the setting names the variable; the token stays in the environment

    proxy.seen.clear()
    ds = pydicom.dcmread(testdata_path("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    dicomweb.Pacs(dicomweb.parse_query(proxy.source), "HOSPITAL_PACS_TOKEN").store(buffer.getvalue())
    assert [(m, a) for m, _, a in proxy.seen] == [("POST", f"Bearer {TOKEN}")]


def test_a_refused_or_doubled_token_stops_pack_in_one_line_that_never_shows_it(gate, tmp_path):
    """A wrong token, no credentials at all, or a token and a user both set: exit 2, one line naming the
    variable, never the token; with --verbose (every request logged) a good token shows nowhere either,
    in the console or in the archive's files."""
    proxy, _ = gate
    cases = [
        ({dicomweb.TOKEN_ENV: "wrong-token"}, "the bearer token in ENRICH_RAY_DICOMWEB_TOKEN was refused"),
        ({}, "refused access (HTTP 401"),
        ({dicomweb.TOKEN_ENV: TOKEN, dicomweb.USER_ENV: USER}, "both a DICOMweb bearer token (ENRICH_RAY_DICOMWEB_TOKEN)"),
        ({dicomweb.TOKEN_ENV: TOKEN + "\nX-Other: 1"}, "holds characters no HTTP header may carry"),
    ]
    for env, words in cases:
        proc = _cli("pack", proxy.source, "--out", str(tmp_path / "out"), env=env)
        lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert words in lines[0], lines[0]
        assert TOKEN not in proc.stderr + proc.stdout and "wrong-token" not in proc.stderr + proc.stdout
        assert not (tmp_path / "out").exists()
    proc = _cli("pack", f"{proxy.source}?Modality=CT", "--out", str(tmp_path / "ok"), "-v", env={dicomweb.TOKEN_ENV: TOKEN})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"GET /dicom-web/studies/' in proc.stderr  # every request logged (urllib3, DEBUG), without its headers
    assert TOKEN not in proc.stdout + proc.stderr
    assert not [f for f in (tmp_path / "ok").iterdir() if f.suffix != ".parquet" and TOKEN in f.read_text(errors="replace")]
    for f in (tmp_path / "ok").glob("*.parquet"):
        assert TOKEN.encode() not in f.read_bytes()


@pytest.mark.ray
def test_nightly_on_a_night_packed_from_the_pacs(pacs, ray_cluster, tmp_path):
    """The CronJob's flow with a PACS as the source: pack the night's DICOMweb query, then nightly on that archive."""
    from enrich_ray.pipelines.nightly import nightly

    server, held, _ = pacs
    night = "2017-01-01"
    archive = str(tmp_path / f"archive/night={night}")
    pack([f"{server.source}?StudyDate={night}"], archive, progress=False)
    cfg = load_config(None, ["vae.max_epochs=2", "vae.latent_dim=16", "embed.batch_size=32", "decode.batch_size=8",
                             "selection.k=3"])
    result = nightly(str(tmp_path / "catalog"), archive, night, cfg)
    assert result.exit_code == 0
    tonight = {sop for sop, t in held.items() if t["StudyDate"] == night.replace("-", "")}
    packed = _archive(archive)
    assert tonight and set(packed["sop_uid"]) == tonight
    summary = json.loads((tmp_path / "catalog" / "nights" / night / "summary.json").read_text())
    manifest = pd.read_parquet(tmp_path / "catalog" / "nights" / night / "manifest.parquet")
    assert summary["counts"]["frames_embedded"] > 0 and len(manifest) > 0
    assert set(manifest["sop_uid"]) <= tonight and manifest["source_uri"].str.startswith(f"{server.source}/studies/").all()
