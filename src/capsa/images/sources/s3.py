"""S3-compatible source (boto3): the seed's bucket layout, plus upload helpers.

* ``s3://bucket/prefix/`` — a layered image whose layers are the objects named
  ``<n>.tar`` *directly* under the prefix, in numeric order (``1, 2, 10``, not
  ``1, 10, 2``). Other objects and deeper "directories" are ignored; no match
  at all is NotFound naming what was found.
* ``s3://bucket/key.tar`` (or ``.tar.gz``/``.tgz``/``.tar.zst``) — one object, a
  single-layer image.

S3 objects carry no sha256: layers are described with ``digest=None`` and a
``dedupe_hint`` made of endpoint, bucket, ETag and size, which the caller can
look up in the content store before downloading (families in one bucket share
their first layers). Downloads resume with a ``Range`` GET and send ``If-Match``
with the ETag seen at resolve time, so bytes of two versions of one object are
never spliced together.

Endpoint, region and credentials come from :class:`S3Config`; fields left unset
fall back to the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), so AWS, MinIO, moto or any
compatible store works.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions

from capsa.errors import (
    CapsaError,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Unauthorized,
    Unavailable,
)
from capsa.images.content import DownloadClocks, ProgressFn, Writer, copy_to_store
from capsa.images.oci import (
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    ImageConfig,
    Platform,
    layer_compression,
)
from capsa.images.reference import Reference, RefKind, validate_s3_bucket, validate_s3_key
from capsa.images.sources.base import BlobDescriptor, ResolvedImage, bounded, start_offset

__all__ = ["MAX_LAYERS", "S3Config", "S3Source", "map_s3_error", "s3_errors"]

MAX_LAYERS = 128  # Docker's and containerd's practical bound; also bounds the overlay lowerdir list
_CHUNK = 1024 * 1024
_LAYER_KEY = re.compile(r"^(\d{1,9})\.tar$")
_SUFFIX_MEDIA_TYPES = ((".tar.gz", OCI_LAYER_GZIP), (".tgz", OCI_LAYER_GZIP), (".tar.zst", OCI_LAYER_ZSTD), (".tar", OCI_LAYER_TAR))
_MULTIPART_THRESHOLD = 64 * 1024 * 1024


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    addressing_style: str = "auto"  # "path" suits most S3-compatible stores
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 3  # botocore's own retries of a single call

    def __repr__(self) -> str:  # never print secrets
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("secret_access_key", "session_token")}
        return f"S3Config({', '.join(f'{k}={v!r}' for k, v in shown.items())}, secrets=***)"

    def with_env(self, env: Mapping[str, str] | None = None) -> S3Config:
        """Fill unset fields from the standard AWS environment variables."""
        env = os.environ if env is None else env
        return replace(
            self,
            endpoint_url=self.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=self.session_token or env.get("AWS_SESSION_TOKEN") or None,
        )


class S3Source:
    """The :class:`~capsa.images.sources.base.Source` for ``s3://`` references."""

    def __init__(self, config: S3Config | None = None, *, env: Mapping[str, str] | None = None) -> None:
        self.config = (config or S3Config()).with_env(env)
        if self.config.endpoint_url:
            scheme = urllib.parse.urlsplit(self.config.endpoint_url).scheme
            if scheme not in ("http", "https"):
                raise InvalidArgument(f"S3 endpoint {self.config.endpoint_url!r} must be an http(s) URL")
        session = boto3.session.Session(
            aws_access_key_id=self.config.access_key_id,
            aws_secret_access_key=self.config.secret_access_key,
            aws_session_token=self.config.session_token,
            region_name=self.config.region or "us-east-1",
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=self.config.endpoint_url,
            config=botocore.config.Config(
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
                retries={"max_attempts": self.config.max_attempts, "mode": "standard"},
                s3={"addressing_style": self.config.addressing_style},
                max_pool_connections=16,
            ),
        )
        self._endpoint = urllib.parse.urlsplit(self.client.meta.endpoint_url).netloc
        self._lock = threading.Lock()

    # -- resolve -------------------------------------------------------------------------
    def resolve(self, ref: Reference, platform: Platform | None = None) -> ResolvedImage:
        if ref.kind is not RefKind.S3 or ref.bucket is None or ref.key is None:
            raise InvalidArgument(f"{ref} is not an s3:// reference")
        objects = self._list_layers(ref) if ref.is_s3_prefix else [self._head(ref.bucket, ref.key, ref)]
        layers = tuple(
            BlobDescriptor(
                media_type=media_type, size=size, digest=None, locator=f"s3://{ref.bucket}/{key}",
                compression=layer_compression(media_type),
                dedupe_hint=f"s3:{self._endpoint}/{ref.bucket}#{etag}:{size}",
                annotations={"s3.etag": etag},
            )
            for key, size, etag, media_type in objects
        )
        platform = platform or Platform.default()
        # S3 tarballs carry no config: the image runs with the platform asked for and
        # no Entrypoint/Cmd of its own; diff_ids are filled in once layers are hashed.
        config = ImageConfig(os=platform.os, architecture=platform.architecture, variant=platform.variant)
        listing = json.dumps([(k, s, e) for k, s, e, _ in objects]).encode()
        return ResolvedImage(
            reference=ref, platform=config.platform, config=config, config_bytes=config.to_json(),
            config_digest=None, layers=layers, source_id="s3-listing:" + hashlib.sha256(listing).hexdigest(),
        )

    def _list_layers(self, ref: Reference) -> list[tuple[str, int, str, str]]:
        assert ref.bucket is not None and ref.key is not None
        found: dict[int, tuple[str, int, str, str]] = {}
        others: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with s3_errors(f"listing {ref}"):
            for page in paginator.paginate(Bucket=ref.bucket, Prefix=ref.key, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(ref.key):]
                    match = _LAYER_KEY.match(name)
                    if not match:
                        others.append(name)
                        continue
                    number = int(match.group(1))
                    if number in found:
                        raise InvalidArgument(
                            f"{ref}: {found[number][0]!r} and {obj['Key']!r} both claim layer {number}"
                        )
                    found[number] = (obj["Key"], int(obj["Size"]), obj["ETag"].strip('"'), OCI_LAYER_TAR)
                    if len(found) > MAX_LAYERS:
                        raise LimitExceeded(f"{ref}: more than {MAX_LAYERS} layers")
        if not found:
            seen = ", ".join(sorted(others)[:10]) or "nothing"
            raise NotFound(f"{ref}: no <n>.tar layer objects under the prefix (found: {seen})")
        return [found[n] for n in sorted(found)]

    def _head(self, bucket: str, key: str, ref: Reference) -> tuple[str, int, str, str]:
        with s3_errors(f"{ref}"):
            head = self.client.head_object(Bucket=bucket, Key=key)
        media_type = next(mt for suffix, mt in _SUFFIX_MEDIA_TYPES if key.endswith(suffix))
        return key, int(head["ContentLength"]), head["ETag"].strip('"'), media_type

    # -- fetch ---------------------------------------------------------------------------
    def fetch_blob(
        self, desc: BlobDescriptor, writer: Writer, *, offset: int | None = None, progress: ProgressFn | None = None,
        cancel: threading.Event | None = None, timeout_s: float | None = None,
        clocks: DownloadClocks | None = None,
    ) -> None:
        bucket, key = _split_locator(desc.locator)
        start = start_offset(writer, offset, desc)
        if start >= desc.size:
            return
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start:
            args["Range"] = f"bytes={start}-"
        etag = desc.annotations.get("s3.etag")
        if etag:
            args["IfMatch"] = f'"{etag}"'
        what = f"download of s3://{bucket}/{key}"
        with s3_errors(what):
            resp = self.client.get_object(**args)
        body = resp["Body"]
        body_start = 0
        if start:
            match = re.match(r"bytes (\d+)-", resp.get("ContentRange") or "")
            body_start = int(match.group(1)) if match else 0
            if body_start != start:
                body.close()
                raise Unavailable(f"{what}: store answered from byte {body_start}, asked for {start}")
        try:
            with s3_errors(what):
                copy_to_store(bounded(body.iter_chunks(_CHUNK), desc, start), writer, progress, cancel, timeout_s,
                              total=desc.size, clocks=clocks)
        finally:
            body.close()
        if writer.offset < desc.size:
            raise Unavailable(f"{what}: connection closed at byte {writer.offset} of {desc.size}")

    # -- push helpers --------------------------------------------------------------------
    def upload(
        self, bucket: str, key: str, data: Path | IO[bytes], *, part_size: int = _MULTIPART_THRESHOLD,
        multipart_threshold: int = _MULTIPART_THRESHOLD,
    ) -> str:
        """Upload a file or stream to ``s3://bucket/key`` (multipart above the threshold); returns the ETag."""
        validate_s3_bucket(bucket)
        validate_s3_key(key)
        if part_size < 5 * 1024 * 1024:
            raise InvalidArgument("S3 multipart parts must be at least 5 MiB")
        what = f"upload to s3://{bucket}/{key}"
        stream: IO[bytes] = open(data, "rb") if isinstance(data, Path) else data  # noqa: SIM115
        try:
            first = stream.read(multipart_threshold)
            if len(first) < multipart_threshold:
                with s3_errors(what):
                    return str(self.client.put_object(Bucket=bucket, Key=key, Body=first)["ETag"]).strip('"')
            with s3_errors(what):
                upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            parts: list[dict[str, Any]] = []
            try:
                buffer = b""
                for piece in itertools.chain([first], iter(lambda: stream.read(part_size), b"")):
                    buffer += piece
                    while len(buffer) >= part_size:
                        self._upload_part(bucket, key, upload_id, parts, buffer[:part_size], what)
                        buffer = buffer[part_size:]
                if buffer:  # only the last part may be smaller than 5 MiB
                    self._upload_part(bucket, key, upload_id, parts, buffer, what)
                with s3_errors(what):
                    done = self.client.complete_multipart_upload(
                        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                    )
                return str(done["ETag"]).strip('"')
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: the original error matters
                    self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                raise
        finally:
            if isinstance(data, Path):
                stream.close()

    def _upload_part(self, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]], chunk: bytes, what: str) -> None:
        number = len(parts) + 1
        with s3_errors(f"{what} (part {number})"):
            resp = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk)
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})


def _split_locator(locator: str) -> tuple[str, str]:
    if not locator.startswith("s3://"):
        raise InvalidArgument(f"{locator!r} is not an s3:// locator")
    bucket, _, key = locator[5:].partition("/")
    return validate_s3_bucket(bucket), validate_s3_key(key)


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Translate boto/botocore/urllib3 failures into capsa's error vocabulary (see :func:`map_s3_error`).

    The one mapper for every S3 caller (image sources, capsule push/pull)."""
    try:
        yield
    except CapsaError:
        raise
    except Exception as exc:
        mapped = map_s3_error(exc, what)
        if mapped is None:
            raise
        raise mapped from None


_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AllAccessDisabled"}
_CHANGED = {"PreconditionFailed", "412", "InvalidRange", "416"}


def map_s3_error(exc: BaseException, what: str) -> CapsaError | None:
    """capsa's error for an S3 failure, or None for an exception that is not S3's.

    Decided once for images and capsules: only what may pass by itself is retryable (5xx,
    throttling, timeouts, connection failures → Unavailable); an S3 refusal capsa does not
    recognise is a FailedPrecondition — retrying the same request cannot change S3's answer.
    """
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = error.get("Message") or code or f"HTTP {status}"
        if code in _NOT_FOUND or status == 404:
            return NotFound(f"{what}: not found ({message})")
        if code in _DENIED or status == 403:
            return Unauthorized(f"{what}: access denied ({message}); check the S3 credentials")
        if code in _CHANGED or status in (412, 416):
            return FailedPrecondition(f"{what}: the object changed since it was resolved ({message}); pull again")
        if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
            return Unavailable(f"{what}: S3 answered {code or status} ({message})")
        return FailedPrecondition(f"{what}: S3 refused the request: {code} ({message})")
    if isinstance(exc, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return Unauthorized(f"{what}: no usable S3 credentials ({exc})")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return InvalidArgument(f"{what}: {exc}")
    if isinstance(exc, (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError)):
        return Unavailable(f"{what}: {type(exc).__name__}: {exc}")
    return None
