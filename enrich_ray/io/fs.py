"""One way to reach a URI: a local path or any fsspec URL (s3:// through s3fs).

Credentials and the endpoint come from StorageConfig or the standard AWS environment
variables; they are passed to the filesystem and never written to any output.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs

from enrich_ray.config import StorageConfig


class StorageError(RuntimeError):
    """A URI that cannot be reached: missing, unreachable or forbidden."""


def unreachable_store(exc: BaseException) -> str | None:
    """One line naming the object store when `exc`, or an error it was raised from, says the store
    cannot be reached (refused, reset, timed out); None for any other error."""
    from botocore.exceptions import ConnectionError as ClientConnectionError
    from botocore.exceptions import HTTPClientError
    from fsspec.exceptions import FSTimeoutError

    kinds: tuple[type[BaseException], ...] = (ClientConnectionError, HTTPClientError, ConnectionError, FSTimeoutError)
    try:
        import aiohttp

        kinds += (aiohttp.ClientConnectionError,)
    except ImportError:
        pass
    seen, stack = set(), [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, kinds):
            url = urlsplit(str((getattr(err, "kwargs", None) or {}).get("endpoint_url") or ""))
            store = f"the object store at {url.scheme}://{url.netloc}" if url.netloc else "the object store"
            why = " ".join(f"{type(err).__name__}: {err}".split())
            return f"{store} cannot be reached ({why}); rerun the same command once it is back"
        stack += [err.__cause__, err.__context__]
    return None


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it, as both fsspec and pyarrow need them."""

    fs: fsspec.AbstractFileSystem
    path: str
    protocol: str

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def uri(self, *parts: str) -> str:
        """The full URI of a path below this location."""
        path = "/".join([self.path.rstrip("/"), *parts]) if parts else self.path
        return path if self.is_local else f"{self.protocol}://{path}"

    def join(self, *parts: str) -> "Location":
        """A location below this one."""
        return Location(self.fs, "/".join([self.path.rstrip("/"), *parts]), self.protocol)

    def write_bytes(self, data: bytes) -> None:
        """Write the file whole or not at all, so a run stopped mid-write never leaves a part of it.

        On an object store one PUT (an object appears complete or not at all); on a local disk a
        hidden file beside it, renamed over it (Parquet readers skip names starting with '.').
        """
        if not self.is_local:
            self.fs.pipe_file(self.path, data)
            return
        folder, name = os.path.split(self.path)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def arrow_fs(self) -> pafs.FileSystem:
        """The same filesystem for pyarrow and Ray Data."""
        if self.is_local:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))


def storage_options(storage: StorageConfig | None) -> dict:
    """fsspec options for s3fs from config; unset fields fall back to AWS_* variables."""
    storage = storage or StorageConfig()
    opts: dict = {}
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if storage.region:
        client_kwargs["region_name"] = storage.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    if storage.access_key_id:
        opts["key"] = storage.access_key_id
    if storage.secret_access_key:
        opts["secret"] = storage.secret_access_key
    if storage.session_token:
        opts["token"] = storage.session_token
    return opts


def resolve(uri: str, storage: StorageConfig | None = None) -> Location:
    """The filesystem and path behind a URI (a local path when it has no scheme)."""
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return Location(fsspec.filesystem("file"), os.path.abspath(path), "file")
    opts = storage_options(storage) if protocol in ("s3", "s3a") else {}
    fs = fsspec.filesystem(protocol, **opts)
    return Location(fs, uri.split("://", 1)[1].rstrip("/"), protocol)
