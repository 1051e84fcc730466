"""S3 access for the capture inbox: a client from the standard boto3 credential chain, listing, and
downloads that survive transient faults.

Inputs: :class:`S3Settings` (endpoint, retry budget), ``s3://bucket/prefix`` URLs. Outputs:
:class:`RemoteObject` listings and files downloaded atomically (temporary sibling, size and, for
single-part uploads, MD5 checked against the ETag, then renamed). Credentials come only from
boto3's chain (environment, shared files, instance roles) and are never logged or stored.

Transient faults (HTTP 500/502/503/504, ``SlowDown``, throttling, timeouts, dropped or truncated
connections) are retried: botocore's ``standard`` retry mode retries each API call, and
:func:`retrying` wraps whole operations (a listing page, a streamed download) with exponential
backoff and jitter, since a connection dropped while streaming a body is not retried by botocore.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from capture3d.errors import Capture3dError

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRYABLE_CODES = {
    "500",
    "502",
    "503",
    "504",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BadDigest",
    "IncompleteBody",
}


class S3Error(Capture3dError):
    """An S3 operation that failed for good (after the retries, or a permanent error)."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3 API. ``endpoint_url`` empty: AWS (or ``AWS_ENDPOINT_URL``)."""

    endpoint_url: str = ""
    max_attempts: int = 8  # per operation, botocore's and ours alike
    retry_base_s: float = 0.2  # first backoff; doubles per attempt, with full jitter
    retry_max_s: float = 5.0


@dataclass(frozen=True)
class RemoteObject:
    """One object of a listing: its key, ETag (quotes stripped) and size in bytes."""

    key: str
    etag: str
    size: int


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise S3Error(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise S3Error(f"no bucket in {url!r}")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client: credentials and region from the standard chain, retries in standard mode."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=5,
        read_timeout=30,
        signature_version="s3v4",
    )
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=settings.endpoint_url or None, config=config, region_name=session.region_name or "us-east-1"
    )


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault worth retrying (server errors, throttling, broken connections)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return str(err.get("Code", "")) in RETRYABLE_CODES or status >= 500
    return isinstance(
        exc,
        (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
            Urllib3Error,
            ConnectionError,
            TimeoutError,
            _ShortRead,
        ),
    )


class _ShortRead(IOError):
    """A download whose size or MD5 does not match the listing (a truncated transfer)."""


def retrying(operation: Callable[[], T], settings: S3Settings, what: str, rng: random.Random | None = None) -> T:
    """Run ``operation``; on a transient fault wait ``uniform(0, min(max, base * 2^attempt))`` and
    retry, up to ``settings.max_attempts`` tries. Other errors and the last fault raise
    :class:`S3Error` naming ``what``."""
    rng = rng or random.Random()
    for attempt in range(settings.max_attempts):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not is_transient(exc):
                raise S3Error(f"{what}: {_describe(exc)}") from None
            if attempt == settings.max_attempts - 1:
                raise S3Error(
                    f"{what}: still failing after {settings.max_attempts} attempts ({_describe(exc)})"
                ) from None
            delay = rng.uniform(0.0, min(settings.retry_max_s, settings.retry_base_s * 2**attempt))
            logger.warning(
                "%s: transient fault (%s), retry %d/%d in %.2f s",
                what,
                _describe(exc),
                attempt + 1,
                settings.max_attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip().rstrip(":")
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def list_objects(client: Any, bucket: str, prefix: str, settings: S3Settings) -> list[RemoteObject]:
    """Every object under ``prefix`` (paginated; each page retried on its own)."""
    objects: list[RemoteObject] = []
    token: str | None = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = retrying(lambda kw=kwargs: client.list_objects_v2(**kw), settings, f"listing s3://{bucket}/{prefix}")
        for item in page.get("Contents", []):
            objects.append(RemoteObject(item["Key"], str(item["ETag"]).strip('"'), int(item["Size"])))
        if not page.get("IsTruncated"):
            return objects
        token = page["NextContinuationToken"]


def download(client: Any, bucket: str, obj: RemoteObject, dest: Path, settings: S3Settings) -> None:
    """Fetch ``obj`` to ``dest`` atomically; a short or corrupted body is retried like a fault."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    single_part = "-" not in obj.etag and len(obj.etag) == 32

    def fetch() -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
        try:
            digest, size = hashlib.md5(usedforsecurity=False), 0
            body = client.get_object(Bucket=bucket, Key=obj.key)["Body"]
            with os.fdopen(fd, "wb") as handle:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            if size != obj.size or (single_part and digest.hexdigest() != obj.etag):
                raise _ShortRead(f"got {size} of {obj.size} bytes" if size != obj.size else "MD5 differs from the ETag")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    retrying(fetch, settings, f"downloading s3://{bucket}/{obj.key}")
