"""Moving capsule versions in and out: uploads from the CLI, push and pull to S3 and OCI registries.

What travels is always the version's canonical tar (:mod:`capsa.capsules.canonical`),
whose sha256 *is* the version's digest, plus a small JSON description
(:class:`CapsuleManifest`: name, version, digest, size, dependencies, labels).
A pull hashes the bytes while it downloads them and refuses anything whose
digest differs from the description (``ChecksumMismatch``), and the store then
hashes the imported tree again.

* **S3** (same endpoint and credentials as images, :class:`S3Config`):
  ``push NAME@VERSION s3://bucket/prefix/`` writes
  ``prefix/NAME/VERSION/capsule.tar`` and then ``prefix/NAME/VERSION/capsule.json``
  (the description last, so a reader that finds it finds a complete tar);
  ``pull s3://bucket/prefix/NAME/VERSION/`` (or the ``capsule.json`` key) reads them.
* **OCI registries**, as OCI artifacts: an image manifest whose ``artifactType``
  and config media type are :data:`CONFIG_MEDIA_TYPE` (the config blob is the
  description), with one layer of :data:`LAYER_MEDIA_TYPE` (the canonical tar)
  and the name, version and dependencies also in annotations, so registry tools
  can show them without fetching a blob. The tag defaults to the version
  (characters a tag cannot hold become ``_``); the annotations keep the exact one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import botocore.exceptions
import urllib3.exceptions

from capsa.capsules._fs import staging_dir
from capsa.capsules.model import CapsuleVersion, GcReport
from capsa.capsules.store import CapsuleStore
from capsa.capsules.verify import SOURCE_MIGRATIONS, CapsuleReport, verify_version
from capsa.capsules.versions import (
    check_labels,
    check_name,
    parse_reference,
    parse_requirement,
    parse_version,
)
from capsa.errors import (
    Canceled,
    CapsaError,
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Unavailable,
    Unsupported,
)
from capsa.fsm import Engine
from capsa.images.oci import OCI_MANIFEST, Digest, load_json_object, sha256_digest
from capsa.images.reference import Reference, RefKind
from capsa.images.reference import parse_reference as parse_location
from capsa.images.sources.registry import RegistryClient, RegistryConfig
from capsa.images.sources.registry_client import discard_response
from capsa.images.sources.s3 import S3Config, S3Source, s3_errors

__all__ = [
    "ANNOTATION_DEPENDENCIES",
    "ANNOTATION_NAME",
    "ANNOTATION_VERSION",
    "CONFIG_MEDIA_TYPE",
    "LAYER_MEDIA_TYPE",
    "CapsuleDistribution",
    "CapsuleManifest",
    "CapsuleReport",
    "PushResult",
]

CONFIG_MEDIA_TYPE = "application/vnd.capsa.capsule.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.capsa.capsule.layer.v1.tar"
ANNOTATION_NAME = "dev.capsa.capsule.name"
ANNOTATION_VERSION = "dev.capsa.capsule.version"
ANNOTATION_DEPENDENCIES = "dev.capsa.capsule.dependencies"   # JSON list of PEP 508 requirements
_ANNOTATION_TITLE = "org.opencontainers.image.title"
_SCHEMA = "capsa.capsule.v1"
_S3_TAR, _S3_MANIFEST = "capsule.tar", "capsule.json"
_MAX_DESCRIPTION = 64 * 1024
_CHUNK = 1 << 20
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class CapsuleManifest:
    """The description that travels with a capsule's canonical tar."""

    name: str
    version: str
    digest: str                 # sha256 of the canonical tar = the version's identity
    size: int                   # bytes of the canonical tar
    deps: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"schema": _SCHEMA, "name": self.name, "version": self.version, "digest": self.digest,
                           "size": self.size, "dependencies": list(self.deps), "labels": self.labels},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str) -> CapsuleManifest:
        if len(data) > _MAX_DESCRIPTION:
            raise LimitExceeded(f"{what} is over {_MAX_DESCRIPTION} bytes")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schema") != _SCHEMA:
            raise Unsupported(f"{what} is not a capsa capsule description (schema {_SCHEMA!r})")
        try:
            deps = doc.get("dependencies", [])
            size = doc["size"]
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                raise TypeError("dependencies must be a list of strings")
            if not isinstance(size, int) or size < 0:
                raise TypeError("size must be a non-negative integer")
            manifest = cls(name=check_name(doc["name"]), version=str(parse_version(doc["version"])),
                           digest=str(Digest(doc["digest"])), size=size,
                           deps=tuple(sorted({str(parse_requirement(d)) for d in deps})),
                           labels=check_labels(doc.get("labels") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{what} is malformed: {exc}") from None
        return manifest


@dataclass(frozen=True)
class PushResult:
    location: str               # where to pull it from
    digest: str                 # the capsule's digest
    size: int
    manifest_digest: str = ""   # registries: the artifact manifest's digest


class CapsuleDistribution:
    """Uploads, pushes and pulls for one :class:`CapsuleStore`; safe to share between threads."""

    def __init__(self, store: CapsuleStore, *, registry: RegistryConfig | None = None, s3: S3Config | None = None,
                 max_upload_bytes: int = 1 << 40, engine: Engine | None = None) -> None:
        self.store = store
        self.registry = registry or RegistryConfig()
        self.s3 = s3 or S3Config()
        self.max_upload_bytes = max_upload_bytes
        self.engine = engine
        store.db.migrate("capsule_sources", SOURCE_MIGRATIONS)
        if engine is not None:  # push and pull become durable runs on the download queue
            from capsa.capsules.machines import register_capsule_machines

            register_capsule_machines(engine, self)

    # -- uploads -------------------------------------------------------------------------------
    def create_from_upload(self, name: str, version: str, chunks: Iterable[bytes], *,
                           deps: Iterable[str] = (), labels: dict[str, str] | None = None,
                           request_id: str = "") -> CapsuleVersion:
        """Stage an uploaded tar (plain or compressed) and import it as ``name@version``.

        With a ``request_id`` already used, the version created then is returned and the upload is not read.
        """
        earlier = self.store.created_for_request(request_id)
        if earlier is not None:
            return earlier
        check_name(name)
        parse_version(version)
        with staging_dir(self.store.layout.ingest) as staging:
            archive = staging / "upload.tar"
            received = 0
            with open(archive, "wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self.max_upload_bytes:
                        raise LimitExceeded(f"the upload of {name}@{version} is over {self.max_upload_bytes} bytes")
                    out.write(chunk)
            if not received:
                raise InvalidArgument(f"the upload of {name}@{version} is empty; send a tar of the capsule's files")
            return self.store.create(name, version, archive, deps=list(deps), labels=labels, request_id=request_id)

    # -- push ----------------------------------------------------------------------------------
    def push(self, ref: str, destination: str, *, insecure: bool = False) -> PushResult:
        """Send ``NAME@VERSION`` to ``s3://bucket/prefix/`` or to a registry repository ``host/repo[:tag]``.

        With an engine, as a durable ``capsule.push`` run (deduplicated, resumed after a crash,
        cancellable, in the run history); the caller waits for it.
        """
        if self.engine is not None:
            from capsa.capsules.machines import start_push

            return start_push(self.engine, ref, destination, insecure=insecure)
        return self.push_now(ref, destination, insecure=insecure)

    def push_now(self, ref: str, destination: str, *, insecure: bool = False) -> PushResult:
        """The push itself, in the calling thread."""
        name, version = parse_reference(ref)
        found = self.store.get(name, str(version))
        if not destination:
            raise InvalidArgument("no destination given: s3://bucket/prefix/ or host/repository[:tag]")
        location = parse_location(destination)
        with staging_dir(self.store.layout.ingest) as staging:
            archive = staging / _S3_TAR
            with open(archive, "wb") as out:
                digest = self.store.export_tar(found.name, found.version, out)
            manifest = CapsuleManifest(found.name, found.version, digest, archive.stat().st_size, found.deps,
                                       dict(found.labels))
            if location.kind is RefKind.S3:
                return self._push_s3(location, archive, manifest)
            if location.kind is RefKind.REGISTRY:
                return self._push_registry(location, destination, archive, manifest, insecure)
        raise InvalidArgument(f"cannot push capsules to {destination!r}: use s3://bucket/prefix/ or a registry "
                              "repository such as 127.0.0.1:5000/capsules/NAME")

    def _push_s3(self, location: Reference, archive: Path, manifest: CapsuleManifest) -> PushResult:
        if not location.is_s3_prefix:
            raise InvalidArgument(f"push to an S3 prefix ending in '/', not {location}")
        assert location.bucket is not None
        prefix = f"{location.key}{manifest.name}/{manifest.version}/"
        source = S3Source(self.s3)
        source.upload(location.bucket, prefix + _S3_TAR, archive)
        source.upload(location.bucket, prefix + _S3_MANIFEST, _Bytes(manifest.to_json()))
        return PushResult(location=f"s3://{location.bucket}/{prefix}", digest=manifest.digest, size=manifest.size)

    def _push_registry(self, location: Reference, text: str, archive: Path, manifest: CapsuleManifest,
                       insecure: bool) -> PushResult:
        if location.digest is not None:
            raise InvalidArgument(f"push to a tag, not a digest: {text}")
        explicit_tag = ":" in text.rsplit("/", 1)[-1]
        tag = location.tag if explicit_tag and location.tag else _TAG_UNSAFE.sub("_", manifest.version)
        assert location.repository is not None
        client = self._registry_client(location, insecure)
        repo = location.repository
        config = manifest.to_json()
        client.push_blob(repo, archive, manifest.digest, manifest.size)
        client.push_blob(repo, config, sha256_digest(config), len(config))
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": CONFIG_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": manifest.digest, "size": manifest.size,
                        "annotations": {_ANNOTATION_TITLE: f"{manifest.name}-{manifest.version}.tar"}}],
            "annotations": {ANNOTATION_NAME: manifest.name, ANNOTATION_VERSION: manifest.version,
                            ANNOTATION_DEPENDENCIES: json.dumps(list(manifest.deps))},
        }
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = client.push_manifest(repo, tag, body, OCI_MANIFEST)
        return PushResult(location=f"{location.registry}/{repo}:{tag}", digest=manifest.digest, size=manifest.size,
                          manifest_digest=str(manifest_digest))

    # -- pull ----------------------------------------------------------------------------------
    def pull(self, source: str, *, insecure: bool = False) -> CapsuleVersion:
        """Fetch a pushed capsule, verify its digest, and import it (a no-op if it is already here).

        With an engine, as a durable ``capsule.pull`` run on the download queue; the caller waits.
        """
        if self.engine is not None:
            from capsa.capsules.machines import start_pull

            return start_pull(self.engine, self.store, source, insecure=insecure)
        return self.pull_now(source, insecure=insecure)

    def pull_now(self, source: str, *, insecure: bool = False, cancel: threading.Event | None = None) -> CapsuleVersion:
        """The pull itself, in the calling thread; ``cancel`` stops the download between chunks."""
        if not source:
            raise InvalidArgument("no source given: s3://bucket/prefix/NAME/VERSION/ or host/repository:tag")
        location = parse_location(source)
        with staging_dir(self.store.layout.ingest) as staging:
            archive = staging / _S3_TAR
            if location.kind is RefKind.S3:
                manifest = self._pull_s3(location, archive, cancel)
            elif location.kind is RefKind.REGISTRY:
                manifest = self._pull_registry(location, archive, insecure, cancel)
            else:
                raise InvalidArgument(f"cannot pull capsules from {source!r}: use s3://bucket/prefix/NAME/VERSION/ "
                                      "or a registry reference")
            pulled = self._import(manifest, archive, source)
        # where it came from, so `capsa capsule verify --repair` can fetch it again
        self.store.db.execute(
            "INSERT OR REPLACE INTO capsule_sources (name, version, source, insecure) VALUES (?, ?, ?, ?)",
            (pulled.name, pulled.version, source, int(insecure)))
        return pulled

    # -- gc ------------------------------------------------------------------------------------
    def gc(self, *, unused: bool = False, older_than: timedelta | None = None, dry_run: bool = False) -> GcReport:
        """Collect unreferenced content (and, with ``unused``, unused versions); a ``capsule.gc`` run
        when there is an engine (one at a time, in the run history)."""
        if self.engine is None:
            return self.store.gc(unused=unused, older_than=older_than, dry_run=dry_run)
        from capsa.capsules.machines import GcRequest, start_gc

        return start_gc(self.engine, GcRequest(unused=unused, dry_run=dry_run,
                                               older_than_s=older_than.total_seconds() if older_than else None))

    # -- verify --------------------------------------------------------------------------------
    def verify(self, ref: str = "", *, all_versions: bool = False, repair: bool = False) -> list[CapsuleReport]:
        """Re-hash stored trees (``NAME@VERSION``, or every version) against their recorded digests.

        ``repair``: a damaged version that was pulled is removed and pulled again from its recorded
        source (refused, and said so, when it is attached, pinned or needed by another version).
        """
        if all_versions:
            versions = self.store.list()
        elif ref:
            name, version = parse_reference(ref)
            versions = [self.store.get(name, str(version))]
        else:
            raise InvalidArgument("name a capsule version (NAME@VERSION) to verify, or ask for all of them")
        reports = [verify_version(v) for v in versions]
        return [self._repair(r) if repair and not r.ok else r for r in reports]

    def _repair(self, report: CapsuleReport) -> CapsuleReport:
        name, version = parse_reference(report.ref)
        row = self.store.db.query_one("SELECT source, insecure FROM capsule_sources WHERE name = ? AND version = ?",
                                      (name, str(version)))
        if row is None:
            return replace(report, repair_error="no recorded source (it was created here): remove it and create "
                                                "it again")
        try:
            self.store.remove(name, str(version))
            again = verify_version(self.pull(row["source"], insecure=bool(row["insecure"])))
        except CapsaError as exc:
            return replace(report, repair_error=exc.message)
        return replace(report, repaired=again.ok, repair_error=again.problem)

    def _import(self, manifest: CapsuleManifest, archive: Path, source: str) -> CapsuleVersion:
        try:
            existing = self.store.get(manifest.name, manifest.version)
        except NotFound:
            existing = None
        if existing is not None and existing.digest == manifest.digest:
            # "already imported" is only true of an intact tree (image ADR-006): never hand out a
            # version whose stored files were changed or removed behind capsa's back
            report = verify_version(existing)
            if not report.ok:
                raise FailedPrecondition(f"{existing.ref} is stored but damaged ({report.problem}); remove it "
                                         f"(`capsa capsule rm {existing.ref}`) and pull it again")
            return existing
        created = self.store.create(manifest.name, manifest.version, archive, deps=manifest.deps,
                                    labels=manifest.labels)
        if created.digest != manifest.digest:
            # The bytes matched the description, but they were not a canonical tar: the tree is not
            # the one the publisher described. Refuse it rather than keep a version under a lie.
            with contextlib.suppress(CapsaError):
                self.store.remove(created.name, created.version)
            raise ChecksumMismatch(f"{source}: the capsule's files hash to {created.digest}, "
                                   f"its description says {manifest.digest}")
        return created

    def _pull_s3(self, location: Reference, archive: Path, cancel: threading.Event | None) -> CapsuleManifest:
        assert location.bucket is not None and location.key is not None
        key = location.key
        if key.endswith("/" + _S3_MANIFEST) or key == _S3_MANIFEST:
            key = key[: -len(_S3_MANIFEST)]
        elif key and not key.endswith("/"):
            raise InvalidArgument(f"pull from the prefix a push printed (s3://bucket/.../NAME/VERSION/), "
                                  f"not {location}")
        client = S3Source(self.s3).client
        what = f"s3://{location.bucket}/{key}{_S3_MANIFEST}"
        with s3_errors(what):
            obj = client.get_object(Bucket=location.bucket, Key=key + _S3_MANIFEST)
            data = obj["Body"].read(_MAX_DESCRIPTION + 1)
            obj["Body"].close()
        manifest = CapsuleManifest.from_json(data, what)
        what = f"s3://{location.bucket}/{key}{_S3_TAR}"
        with s3_errors(what):
            obj = client.get_object(Bucket=location.bucket, Key=key + _S3_TAR)
            try:
                _receive(obj["Body"].iter_chunks(_CHUNK), archive, manifest.digest, manifest.size, what, cancel)
            finally:
                obj["Body"].close()
        return manifest

    def _pull_registry(self, location: Reference, archive: Path, insecure: bool,
                       cancel: threading.Event | None) -> CapsuleManifest:
        assert location.repository is not None and location.manifest_reference is not None
        client = self._registry_client(location, insecure)
        repo = location.repository
        body, _content_type, _digest = client.get_manifest(repo, location.manifest_reference)
        doc = load_json_object(body, f"manifest of {location}")
        config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        layers = doc.get("layers") if isinstance(doc.get("layers"), list) else []
        if config.get("mediaType") != CONFIG_MEDIA_TYPE:
            raise Unsupported(f"{location} is not a capsa capsule (its config is {config.get('mediaType')!r}, "
                              f"a capsule's is {CONFIG_MEDIA_TYPE!r})")
        if len(layers) != 1 or not isinstance(layers[0], dict) or layers[0].get("mediaType") != LAYER_MEDIA_TYPE:
            raise InvalidArgument(f"{location}: a capsule artifact has exactly one {LAYER_MEDIA_TYPE} layer")
        try:
            config_digest, layer_digest = Digest(config["digest"]), Digest(layers[0]["digest"])
            config_size, layer_size = int(config["size"]), int(layers[0]["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{location}: malformed descriptor: {exc}") from None
        raw = client.get_blob_bytes(repo, config_digest, size=config_size, limit=_MAX_DESCRIPTION)
        manifest = CapsuleManifest.from_json(raw, f"capsule description of {location}")
        _check_annotations(doc.get("annotations"), manifest, str(location))
        if layer_digest != manifest.digest or layer_size != manifest.size:
            raise ChecksumMismatch(f"{location}: the layer is {layer_digest} ({layer_size} bytes), the capsule "
                                   f"description says {manifest.digest} ({manifest.size} bytes)")
        resp, start = client.open_blob(repo, layer_digest)
        what = f"layer {layer_digest} of {location}"
        try:
            if start:
                raise Unavailable(f"{what}: the registry answered from byte {start}, asked for 0")
            _receive(resp.stream(_CHUNK, decode_content=False), archive, manifest.digest, manifest.size, what,
                     cancel)
        finally:
            discard_response(resp)
        return manifest

    def _registry_client(self, location: Reference, insecure: bool) -> RegistryClient:
        host = location.api_host
        assert host is not None
        config = self.registry
        if insecure:
            config = replace(config, insecure=config.insecure | {host})
        return RegistryClient(host, config)


class _Bytes:
    """A tiny readable stream for S3Source.upload."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = self._data[self._pos:end]
        self._pos += len(chunk)
        return chunk


def _receive(chunks: Iterable[bytes], path: Path, digest: str, size: int, what: str,
             cancel: threading.Event | None = None) -> None:
    """Write a download to ``path`` while hashing it; ChecksumMismatch unless it is exactly ``digest``."""
    hasher = hashlib.sha256()
    received = 0
    try:
        with open(path, "wb") as out:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise Canceled(f"{what}: canceled at byte {received}")
                received += len(chunk)
                if received > size:
                    raise ChecksumMismatch(f"{what}: more than the {size} bytes its description declares")
                hasher.update(chunk)
                out.write(chunk)
    except CapsaError:
        raise
    except (OSError, urllib3.exceptions.HTTPError, botocore.exceptions.BotoCoreError) as exc:
        raise Unavailable(f"{what}: download failed at byte {received}: {exc}") from None
    actual = f"sha256:{hasher.hexdigest()}"
    if received != size or actual != digest:
        raise ChecksumMismatch(f"{what}: received {received} bytes hashing to {actual}; expected {size} bytes "
                               f"hashing to {digest}")


def _check_annotations(annotations: object, manifest: CapsuleManifest, where: str) -> None:
    if not isinstance(annotations, dict):
        return   # annotations are informative; the config blob is what is verified
    name, version = annotations.get(ANNOTATION_NAME), annotations.get(ANNOTATION_VERSION)
    deps = annotations.get(ANNOTATION_DEPENDENCIES)
    try:
        listed = sorted({str(parse_requirement(d)) for d in json.loads(deps)}) if deps is not None else None
    except (TypeError, ValueError, CapsaError):
        raise InvalidArgument(f"{where}: annotation {ANNOTATION_DEPENDENCIES} is not a JSON list of "
                              "requirements") from None
    if (name is not None and name != manifest.name) or (version is not None and version != manifest.version) \
            or (listed is not None and listed != list(manifest.deps)):
        raise InvalidArgument(f"{where}: the annotations ({name}@{version}, {listed}) contradict the capsule "
                              f"description ({manifest.name}@{manifest.version}, {list(manifest.deps)})")
