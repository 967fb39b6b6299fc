"""The exclusive lock on a local path: one holder, the rest refused by name, expired locks taken over."""
from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from enrich_ray.io.fs import resolve
from enrich_ray.io.lock import Lock, LockHeld, LockNotHeld

HOUR = 3600.0


@pytest.fixture
def loc(tmp_path):
    return resolve(str(tmp_path / "catalog" / "_lock"))


def test_one_holder_the_second_refused_with_holder_named(loc):
    first = Lock(loc, HOUR, run_id="night-a")
    held = first.acquire()
    record = json.loads(open(loc.path).read())
    assert record == {"host": socket.gethostname(), "pid": os.getpid(), "run_id": "night-a",
                      "started": held.started, "expires": held.expires}

    with pytest.raises(LockHeld) as refused:
        Lock(loc, HOUR, run_id="night-b").acquire()
    assert refused.value.holder == held
    message = str(refused.value)
    assert "run night-a" in message and socket.gethostname() in message and f"pid {os.getpid()}" in message
    assert f"since {held.started}" in message and loc.path in message
    assert json.loads(open(loc.path).read())["run_id"] == "night-a"  # the refused run changed nothing

    first.release()
    assert not os.path.exists(loc.path)
    assert Lock(loc, HOUR, run_id="night-b").acquire().run_id == "night-b"
    assert sorted(os.listdir(os.path.dirname(loc.path))) == ["_lock"]  # no temporary or claim file left


def test_stale_lock_is_taken_over_and_its_old_holder_cannot_release(loc):
    stale = Lock(loc, 0, run_id="crashed")  # expires the moment it is written
    stale.acquire()
    taker = Lock(loc, HOUR, run_id="tonight")
    assert taker.acquire().run_id == "tonight"
    assert json.loads(open(loc.path).read())["run_id"] == "tonight"

    with pytest.raises(LockNotHeld, match="taken over by run tonight"):
        stale.release()
    assert json.loads(open(loc.path).read())["run_id"] == "tonight"  # the refused release deleted nothing
    taker.release()
    assert not os.path.exists(loc.path)


def test_record_written_by_another_host_is_judged_by_its_expiry(loc):
    os.makedirs(os.path.dirname(loc.path))
    old = {"host": "worker-7", "pid": 4242, "run_id": "old", "started": "2001-01-01T00:00:00Z",
           "expires": "2001-01-01T06:00:00Z"}
    live = {**old, "run_id": "live", "expires": "2999-01-01T00:00:00Z"}
    with open(loc.path, "w") as fh:
        json.dump(live, fh)
    with pytest.raises(LockHeld, match="run live on host worker-7 \\(pid 4242\\) since 2001-01-01T00:00:00Z"):
        Lock(loc, HOUR).acquire()
    with open(loc.path, "w") as fh:
        json.dump(old, fh)
    assert Lock(loc, HOUR, run_id="new").acquire().run_id == "new"


def test_unreadable_record_is_never_taken_over(loc):
    os.makedirs(os.path.dirname(loc.path))
    with open(loc.path, "w") as fh:
        fh.write("not a lock record")
    with pytest.raises(LockHeld, match="cannot be read"):
        Lock(loc, HOUR).acquire()
    assert open(loc.path).read() == "not a lock record"


def test_release_of_a_lock_not_held_is_refused(loc):
    holder = Lock(loc, HOUR, run_id="holder")
    holder.acquire()
    with pytest.raises(LockNotHeld, match="never took it or released it already"):
        Lock(loc, HOUR, run_id="other").release()
    assert os.path.exists(loc.path)
    holder.release()
    with pytest.raises(LockNotHeld, match="never took it or released it already"):
        holder.release()  # a second release: it is no longer this run's


@pytest.mark.parametrize("stale_first", [False, True], ids=["free", "stale"])
def test_concurrent_acquirers_exactly_one_wins(loc, stale_first):
    if stale_first:
        Lock(loc, 0, run_id="crashed").acquire()
    runs = [Lock(loc, HOUR, run_id=f"run{i}") for i in range(8)]
    start = threading.Barrier(len(runs))
    won, refused = [], []

    def race(lock: Lock) -> None:
        start.wait()
        try:
            won.append(lock.acquire().run_id)
        except LockHeld as exc:
            refused.append(exc.holder)

    threads = [threading.Thread(target=race, args=(lock,)) for lock in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == len(runs) - 1
    assert json.loads(open(loc.path).read())["run_id"] == won[0]
    # A loser names the winner, or (racing the takeover itself) the stale record it lost to.
    assert {h.run_id for h in refused} <= {won[0], "crashed"}


def release_racing_a_takeover(loc) -> None:
    """An expired holder's release, its lock taken over between the release's read and its delete: refused
    (the local and the S3 store alike; the caller checks the taker's record stayed)."""
    slow = Lock(loc, 0, run_id="slow")
    slow.acquire()
    taker = Lock(loc, HOUR, run_id="taker")
    read = slow._store.read

    def read_then_taken_over():
        found = read()
        if taker.holder is None:
            taker.acquire()
        return found

    slow._store.read = read_then_taken_over
    with pytest.raises(LockNotHeld, match="taken over by run taker"):
        slow.release()


def test_release_racing_a_takeover_deletes_nothing(loc):
    release_racing_a_takeover(loc)
    assert json.loads(open(loc.path).read())["run_id"] == "taker"
