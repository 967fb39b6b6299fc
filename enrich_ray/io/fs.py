"""One way to reach a URI: a local path or any fsspec URL (s3:// through s3fs).

Credentials and the endpoint come from StorageConfig or the standard AWS environment
variables; they are passed to the filesystem and never written to any output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec
import pyarrow.fs as pafs

from enrich_ray.config import StorageConfig


class StorageError(RuntimeError):
    """A URI that cannot be reached: missing, unreachable or forbidden."""


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
