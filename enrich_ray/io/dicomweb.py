"""Reach a PACS over DICOMweb: a `dicomweb://` query, its search (QIDO-RS) and each instance's stored
bytes (WADO-RS), and the store (STOW-RS) of the KOS documents `export --to kos` makes, through dicomweb-client.

`dicomweb://HOST[:PORT]/PATH?Keyword=value&...` speaks plain HTTP, `dicomwebs://` HTTPS; PATH is the
service root (Orthanc: /dicom-web) and every query key is a DICOM attribute keyword, matched by an
instance-level search (dates as YYYYMMDD, YYYY-MM-DD or a range A-B). Credentials come from the
environment, never from the URL, and are written nowhere: HTTP basic (USER_ENV, PASSWORD_ENV) or a
bearer token (`Authorization: Bearer`, from the variable pack.dicomweb_bearer_env names; TOKEN_ENV by default).
"""
from __future__ import annotations

import difflib
import io
import logging
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from enrich_ray.config import ConfigError
from enrich_ray.io.fs import StorageError

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
USER_ENV = "ENRICH_RAY_DICOMWEB_USER"
PASSWORD_ENV = "ENRICH_RAY_DICOMWEB_PASSWORD"
TOKEN_ENV = "ENRICH_RAY_DICOMWEB_TOKEN"  # pack.dicomweb_bearer_env's default
RETRY_ATTEMPTS = 3  # tries of each request (dicomweb-client backs off exponentially: 2 s, then 4 s)
_UIDS = {"study_uid": "0020000D", "series_uid": "0020000E", "sop_uid": "00080018"}
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DICOM_DATE = re.compile(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}")


def is_dicomweb(uri: str) -> bool:
    """Whether a source names a DICOMweb query rather than a path or bucket."""
    return uri.split("://", 1)[0].lower() in SCHEMES if "://" in uri else False


@dataclass(frozen=True)
class Instance:
    """One SOP instance the search found, with the URI its archive row names it by."""

    study_uid: str
    series_uid: str
    sop_uid: str
    uri: str


@dataclass(frozen=True)
class Query:
    """A parsed `dicomweb://` source: the service root it reaches and the search's match keys."""

    source: str  # as given
    service: str  # http(s)://host[:port]/path
    filters: tuple[tuple[str, str], ...]

    def instance_uri(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """The instance's WADO-RS path under the source's own scheme: stable, credential-free, no query."""
        scheme = self.source.split("://", 1)[0].lower()
        root = f"{scheme}://{self.service.split('://', 1)[1]}"
        return f"{root}/studies/{quote(study_uid)}/series/{quote(series_uid)}/instances/{quote(sop_uid)}"


def parse_query(source: str) -> Query:
    """A `dicomweb://` source checked before any request: a host, no credentials, DICOM keywords as keys."""
    from pydicom.datadict import dictionary_VR, keyword_dict

    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(f"malformed DICOMweb source {source!r}: expected dicomweb://HOST[:PORT]/PATH?Keyword=value "
                          "(dicomwebs:// for HTTPS)")
    if parts.username or parts.password:
        raise ConfigError(f"DICOMweb source {parts.hostname}: credentials do not go in the URL (they would be logged); "
                          f"set {USER_ENV} and {PASSWORD_ENV}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"malformed DICOMweb source {source!r}: the port is not a number from 1 to 65535") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    service = f"{SCHEMES[scheme]}://{host}{f':{port}' if port else ''}{parts.path.rstrip('/')}"
    filters: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in keyword_dict:
            near = difflib.get_close_matches(key, keyword_dict, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"unknown query key {key!r} in {source}: query keys are DICOM attribute keywords such as "
                              f"StudyDate or Modality{hint}")
        if key in filters:
            raise ConfigError(f"query key {key} appears twice in {source}: give several values as one, "
                              f"comma-separated ({key}=A,B)")
        if dictionary_VR(keyword_dict[key]) == "DA":
            value = _ISO_DATE.sub(r"\1\2\3", value)
            if not _DICOM_DATE.fullmatch(value):
                raise ConfigError(f"{key}={value!r} in {source} is not a date: YYYYMMDD, YYYY-MM-DD or a range "
                                  "A-B of them")
        filters[key] = value
    return Query(source, service, tuple(filters.items()))


class RetrieveFailed(RuntimeError):
    """One instance the search listed that WADO-RS did not deliver: an error row (its error_type), not the end of the run."""


class Pacs:
    """A DICOMweb service reached through dicomweb-client, with the environment's credentials: HTTP basic
    (USER_ENV, PASSWORD_ENV) or the bearer token in the variable `bearer_env` names (one of the two)."""

    def __init__(self, query: Query, bearer_env: str = TOKEN_ENV):
        from dicomweb_client.api import DICOMwebClient

        self.query, self.bearer_env = query, bearer_env
        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # its line per request shows with --verbose only
            logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        session = requests.Session()
        user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
        token = os.environ.get(bearer_env, "").strip() if bearer_env else ""
        if token and (user or password):
            raise ConfigError(f"both a DICOMweb bearer token ({bearer_env}) and a user and password ({USER_ENV}, "
                              f"{PASSWORD_ENV}) are set: set the one the server at {query.service} takes")
        if not token.isprintable():
            raise ConfigError(f"{bearer_env} holds characters no HTTP header may carry (a line break?): set it to the token alone")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"  # on the session only: never logged, never written
        elif user or password:
            session.auth = (user or "", password or "")
        # permissive_uid: archives hold UIDs that break the standard's syntax; the server still names them.
        self.client = DICOMwebClient(query.service, session=session, permissive_uid=True)
        # A refused connection or a busy answer (429, 503, ...) is tried again after 2 s and 4 s; a longer
        # outage stops pack, and its rerun goes on from what was packed.
        self.client.set_http_retry_params(retry=True, max_attempts=RETRY_ATTEMPTS)

    def search(self) -> list[Instance]:
        """Every instance the query matches (QIDO-RS, paged to the end); a refusal or outage raises StorageError."""
        try:
            found = self.client.search_for_instances(
                search_filters=dict(self.query.filters), fields=["StudyInstanceUID", "SeriesInstanceUID"],
                get_remaining=True)
        except requests.HTTPError as exc:
            raise StorageError(self._refusal(exc)) from None
        except requests.RequestException as exc:
            raise StorageError(self._outage(exc)) from None
        except ValueError as exc:  # a body that is not DICOM JSON: not a DICOMweb service
            raise StorageError(f"{self.query.service} answered the search with something other than DICOM JSON "
                               f"({exc}): is PATH the DICOMweb root (e.g. /dicom-web)?") from None
        instances = []
        for item in found:
            uids = {name: (item.get(tag, {}).get("Value") or [None])[0] for name, tag in _UIDS.items()}
            if None in uids.values():
                raise StorageError(f"{self.query.service} answered the search without Study, Series and SOP "
                                   f"Instance UIDs for an instance: {sorted(item)[:8]}")
            instances.append(Instance(**uids, uri=self.query.instance_uri(*uids.values())))
        return instances

    def retrieve(self, instance: Instance) -> bytes:
        """The instance's bytes as the PACS stores them (WADO-RS, any transfer syntax: never transcoded).

        A refusal of this one instance raises RetrieveFailed (an error row); an outage raises StorageError.
        """
        try:
            dataset = self.client.retrieve_instance(instance.study_uid, instance.series_uid, instance.sop_uid,
                                                    media_types=(("application/dicom", "*"),))
        except requests.HTTPError as exc:
            response = exc.response
            raise RetrieveFailed(f"WADO-RS answered HTTP {response.status_code} {response.reason}: "
                                f"{' '.join(response.text.split())[:300]}") from None
        except requests.RequestException as exc:
            raise StorageError(self._outage(exc)) from None
        except Exception as exc:  # the answer is not one DICOM instance (pydicom or the client refused it)
            raise RetrieveFailed(f"WADO-RS answer is not one readable DICOM instance: {type(exc).__name__}: {exc}") from None
        return dataset.buffer.getvalue()  # the part's bytes exactly as received (pydicom keeps the buffer it read)

    def store(self, data: bytes) -> None:
        """Store one DICOM file on the service (STOW-RS); a refusal, a failed instance or an outage raises StorageError."""
        import pydicom

        try:
            answer = self.client.store_instances([pydicom.dcmread(io.BytesIO(data))])
        except requests.HTTPError as exc:
            response = exc.response
            if response.status_code in (401, 403):
                raise StorageError(self._refusal(exc)) from None
            raise StorageError(f"the DICOMweb server at {self.query.service} refused to store an instance (STOW-RS: HTTP "
                               f"{response.status_code} {response.reason}): {' '.join(response.text.split())[:300]}") from None
        except requests.RequestException as exc:
            raise StorageError(self._outage(exc)) from None
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason")
            raise StorageError(f"the DICOMweb server at {self.query.service} did not store instance "
                               f"{failed[0].get('ReferencedSOPInstanceUID')} (STOW-RS failure reason {reason})")

    def _outage(self, exc: requests.RequestException) -> str:
        # urllib3 nests the cause (refused, unresolved, timed out) after the pool's and the connection's names
        inner = getattr(exc.args[0], "reason", exc.args[0]) if exc.args else exc
        why = " ".join(f"{type(exc).__name__}: {str(inner).rsplit('): ', 1)[-1]}".split())[:300]
        return f"the DICOMweb server at {self.query.service} cannot be reached ({why}); rerun the same command once it is back"

    def _refusal(self, exc: requests.HTTPError) -> str:
        response, where = exc.response, self.query.service
        status = f"HTTP {response.status_code} {response.reason}"
        if response.status_code in (401, 403):
            if self.bearer_env and os.environ.get(self.bearer_env, "").strip():
                return f"the DICOMweb server at {where} refused access ({status}): the bearer token in {self.bearer_env} was refused"
            given = "were refused" if os.environ.get(USER_ENV) else "are not set"
            return (f"the DICOMweb server at {where} refused access ({status}): its credentials {given} ({USER_ENV}, "
                    f"{PASSWORD_ENV}, or a bearer token in {self.bearer_env})")
        if response.status_code == 404:
            return f"no DICOMweb service at {where} ({status} on the search): PATH must be its root, e.g. /dicom-web"
        body = " ".join(response.text.split())[:300]
        return f"the DICOMweb server at {where} rejected the search {dict(self.query.filters)} ({status}): {body}"
