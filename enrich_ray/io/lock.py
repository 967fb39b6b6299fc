"""An exclusive lock with an expiry on a local path or an S3 key: one run holds it at a time.

The lock is a small JSON record (holder: host, pid, run id, started, expires). Every change is
conditional on the state it was judged on, so two runs racing for it cannot both win:

- S3: create with ``If-None-Match: *``, take over an expired record with ``If-Match: <its ETag>``,
  release with a delete under the same ``If-Match``; the store answers 412 to all but one.
- A local path: create by hard-linking a fully written temporary file onto the lock's name
  (atomic and exclusive, and the record is never seen half-written); take over or release a
  record only while holding ``<lock>.<tag>.claim``, created with ``O_CREAT | O_EXCL``, where the
  tag is the SHA-256 of the record judged: one claim per record, so one taker per record.

Expiry is read against this machine's clock (UTC): hosts sharing a lock need clocks that agree
to well within the expiry.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

from fsspec.asyn import sync

from enrich_ray.io.fs import Location, StorageError

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# What an S3 store answers when the condition a write was made on no longer holds (or another
# conditional write to the key is in flight): the lock's state changed since it was read.
_S3_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412"}
_ATTEMPTS = 3  # a failed attempt means the lock changed hands while it was read: read again


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, from when, and until when it may be taken over."""

    host: str
    pid: int
    run_id: str
    started: str
    expires: str

    def expired(self, now: float | None = None) -> bool:
        """True once the holder's expiry has passed on this machine's clock."""
        return (time.time() if now is None else now) >= calendar.timegm(time.strptime(self.expires, TIME_FORMAT))

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} (pid {self.pid}) since {self.started}"


class LockHeld(StorageError):
    """Another run holds the lock, or is taking its expired holder's over (holder None: an unreadable record)."""

    def __init__(self, uri: str, holder: Holder | None):
        self.holder = holder
        if holder is None:
            why = f"lock {uri} holds a record that cannot be read, so it is never taken over"
        elif holder.expired():
            why = f"lock {uri} was held by {holder.describe()} until {holder.expires}; another run is taking it over"
        else:
            why = f"lock {uri} is held by {holder.describe()}; it expires at {holder.expires}"
        super().__init__(f"{why} (delete it by hand only if no run holds it)")


class LockNotHeld(StorageError):
    """release() of a lock this Lock does not hold: never acquired, released, or taken over."""


class Lock:
    """An exclusive lock at loc, held for at most expiry_s before another run may take it over."""

    def __init__(self, loc: Location, expiry_s: float, run_id: str | None = None):
        self.loc = loc
        self.expiry_s = expiry_s
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.holder: Holder | None = None  # set while this Lock holds it
        self._record: bytes | None = None
        self._store = _LocalStore(loc.path) if loc.is_local else _S3Store(loc)

    def acquire(self) -> Holder:
        """Take the lock (or an expired one over), or raise LockHeld naming its holder."""
        started = time.time()
        holder = Holder(socket.gethostname(), os.getpid(), self.run_id, _stamp(started),
                        _stamp(started + self.expiry_s))
        record = json.dumps(asdict(holder), sort_keys=True).encode()
        current: Holder | None = None
        for _ in range(_ATTEMPTS):
            if self._store.create(record):
                return self._held(holder, record)
            found = self._store.read()
            if found is None:
                continue  # released since: create again
            data, tag = found
            if data == record:  # our own create, answered 412 on a retry of a request that landed
                return self._held(holder, record)
            current = _parse(data)
            if current is None or not current.expired():
                raise LockHeld(self.loc.uri(), current)
            if self._store.replace(record, tag):
                return self._held(holder, record)
        if current is None:
            raise StorageError(f"lock {self.loc.uri()} was taken and released {_ATTEMPTS} times while run "
                               f"{self.run_id} tried to take it; try again")
        raise LockHeld(self.loc.uri(), current)  # another run is taking the expired lock over right now

    def release(self) -> None:
        """Delete the lock if this Lock holds it, else raise LockNotHeld naming who does."""
        if self._record is None:
            raise LockNotHeld(f"lock {self.loc.uri()} is not held by run {self.run_id}: it never took it or released it already")
        found = self._store.read()
        if found is not None and found[0] == self._record and self._store.delete(found[1]):
            self.holder = self._record = None
            return
        found = self._store.read()
        if found is None:
            why = "nobody holds it (deleted by hand?)"
        else:
            other = _parse(found[0])
            why = f"it was taken over by {other.describe()}" if other else "it holds a record that cannot be read"
        raise LockNotHeld(f"lock {self.loc.uri()} is not held by run {self.run_id}: {why}")

    def _held(self, holder: Holder, record: bytes) -> Holder:
        self.holder, self._record = holder, record
        return holder


def _stamp(t: float) -> str:
    return time.strftime(TIME_FORMAT, time.gmtime(t))


def _parse(data: bytes) -> Holder | None:
    try:
        holder = Holder(**json.loads(data))
        holder.expired()  # the expiry must be readable too
        return holder
    except (ValueError, TypeError):
        return None


class _LocalStore:
    """The lock's four conditional operations on a local path (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def replace(self, data: bytes, tag: str) -> bool:
        with _Claim(self, tag) as claimed:
            if not claimed:
                return False
            tmp = self._write_tmp(data)
            os.replace(tmp, self.path)
            return True

    def delete(self, tag: str) -> bool:
        with _Claim(self, tag) as claimed:
            if claimed:
                os.unlink(self.path)
            return claimed

    def _write_tmp(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp


class _Claim:
    """Held while the record with this tag is replaced or deleted; true only if that record is still the lock's."""

    def __init__(self, store: _LocalStore, tag: str):
        self.store, self.tag = store, tag
        self.path = f"{store.path}.{tag[:16]}.claim"
        self.fd: int | None = None

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False  # another run is replacing or deleting this very record
        found = self.store.read()
        return found is not None and found[1] == self.tag

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            os.unlink(self.path)


class _S3Store:
    """The lock's four conditional operations on an S3 key, through s3fs's client."""

    def __init__(self, loc: Location):
        self.fs = loc.fs
        self.path = loc.path
        self.bucket, self.key, _ = loc.fs.split_path(loc.path)

    def read(self) -> tuple[bytes, str] | None:
        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with resp["Body"] as body:
                return await body.read(), resp["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> bool:
        return self._conditional("put_object", Body=data, IfNoneMatch="*")

    def replace(self, data: bytes, tag: str) -> bool:
        return self._conditional("put_object", Body=data, IfMatch=tag)

    def delete(self, tag: str) -> bool:
        return self._conditional("delete_object", IfMatch=tag)

    def _conditional(self, method: str, **kwargs) -> bool:
        """True when the store applied the request; False when its condition failed."""
        try:
            self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
            return True
        except OSError as exc:
            response = getattr(exc.__cause__, "response", None) or {}
            code = response.get("Error", {}).get("Code")
            if code in _S3_CONDITION_CODES:
                return False
            raise
        finally:
            self.fs.invalidate_cache(self.path)
