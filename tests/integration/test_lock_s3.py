"""The exclusive lock on moto's real S3 server: conditional writes (If-None-Match, If-Match) decide races."""
from __future__ import annotations

import json
import threading

import boto3
import pytest

from enrich_ray.config import StorageConfig
from enrich_ray.io.fs import resolve
from enrich_ray.io.lock import Holder, Lock, LockHeld, LockNotHeld
from tests.unit.test_lock import release_racing_a_takeover

HOUR = 3600.0
RUNS = 8


@pytest.fixture
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    if "locks" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="locks")
    return client


def _loc(s3_endpoint: str, key: str):
    storage = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1", access_key_id="testing",
                            secret_access_key="testing")
    return resolve(f"s3://locks/{key}", storage)


def _stored(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket="locks", Key=key)["Body"].read())


def _race(locks: list[Lock]) -> tuple[list[str], list[Holder | None]]:
    """Every lock's acquire at once; the run ids that won and the holders the others were refused by."""
    start = threading.Barrier(len(locks))
    won: list[str] = []
    refused: list[Holder | None] = []

    def go(lock: Lock) -> None:
        start.wait()
        try:
            won.append(lock.acquire().run_id)
        except LockHeld as exc:
            refused.append(exc.holder)

    threads = [threading.Thread(target=go, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_concurrent_acquirers_exactly_one_wins(s3, s3_endpoint):
    loc = _loc(s3_endpoint, "race/_lock")
    runs = [Lock(loc, HOUR, run_id=f"run{i}") for i in range(RUNS)]
    won, refused = _race(runs)
    assert len(won) == 1 and len(refused) == RUNS - 1
    assert _stored(s3, "race/_lock")["run_id"] == won[0]
    assert {h.run_id for h in refused} == {won[0]}

    winner = next(r for r in runs if r.run_id == won[0])
    with pytest.raises(LockHeld) as again:
        Lock(loc, HOUR, run_id="late").acquire()
    message = str(again.value)
    assert f"run {won[0]} on host {winner.holder.host} (pid {winner.holder.pid}) since {winner.holder.started}" in message
    assert "s3://locks/race/_lock" in message

    loser = next(r for r in runs if r.run_id != won[0])
    with pytest.raises(LockNotHeld):
        loser.release()
    assert _stored(s3, "race/_lock")["run_id"] == won[0]
    winner.release()
    assert s3.list_objects_v2(Bucket="locks", Prefix="race/").get("KeyCount") == 0


def test_stale_lock_is_taken_over(s3, s3_endpoint):
    loc = _loc(s3_endpoint, "stale/_lock")
    crashed = Lock(loc, 0, run_id="crashed")  # expires the moment it is written
    crashed.acquire()
    tonight = Lock(loc, HOUR, run_id="tonight")
    assert tonight.acquire().run_id == "tonight"
    assert _stored(s3, "stale/_lock")["run_id"] == "tonight"

    with pytest.raises(LockNotHeld, match="taken over by run tonight"):
        crashed.release()  # its conditional delete names an ETag the store no longer has
    assert _stored(s3, "stale/_lock")["run_id"] == "tonight"
    tonight.release()
    assert s3.list_objects_v2(Bucket="locks", Prefix="stale/").get("KeyCount") == 0


def test_concurrent_takeovers_of_a_stale_lock_exactly_one_wins(s3, s3_endpoint):
    loc = _loc(s3_endpoint, "takeover/_lock")
    Lock(loc, 0, run_id="crashed").acquire()
    won, refused = _race([Lock(loc, HOUR, run_id=f"taker{i}") for i in range(RUNS)])
    assert len(won) == 1 and len(refused) == RUNS - 1
    assert _stored(s3, "takeover/_lock")["run_id"] == won[0]
    assert {h.run_id for h in refused} == {won[0]}  # each loser read the lock again after its 412


def test_release_racing_a_takeover_deletes_nothing(s3, s3_endpoint):
    release_racing_a_takeover(_loc(s3_endpoint, "slow/_lock"))
    assert _stored(s3, "slow/_lock")["run_id"] == "taker"  # the delete named the old ETag: refused
