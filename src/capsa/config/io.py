"""Reading and writing config files: strict YAML in, readable YAML out, private files written atomically."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from capsa.config.client import ClientConfig, load_client_config, read_config_text
from capsa.config.server import ServerConfig
from capsa.config.yaml_strict import load_yaml
from capsa.errors import AlreadyExists, InvalidArgument

__all__ = [
    "dump_yaml",
    "fsync_dir",
    "load_client_config",
    "load_server_config",
    "parse_config",
    "save_config",
    "write_private_file",
]

M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line text (PEM certificates and keys) as block scalars, so the file
    # stays readable and diffable instead of one long quoted line of "\n"s.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(model: BaseModel | ClientConfig, *, only_set: bool = False) -> str:
    """YAML text for ``model`` (PEM fields as block scalars), fields in declaration order.

    ``only_set`` writes only the fields given explicitly, so unlisted sections
    keep following capsa's defaults when those change.
    """
    data = model.to_dict() if isinstance(model, ClientConfig) else model.model_dump(mode="json", exclude_unset=only_set)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------- validation errors


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _unwrap(annotation: Any) -> Any:
    """The model or dict type inside Optional[...] / Annotated[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _walk(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, list[str] | None]:
    """Render ``loc`` as a field path and find the field names allowed at its last step.

    Walking the model types tells dict keys (``registries['r']``) apart from
    fields (``images.unpack``) even when a key looks like an identifier.
    """
    parts: list[str] = []
    current: Any = model
    holder: Any = None  # the type that holds the last item of loc
    for item in loc:
        holder = current
        if typing.get_origin(current) is dict:
            parts.append(f"[{item!r}]")
            current = _unwrap(typing.get_args(current)[1])
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
            current = None
            continue
        if not parts:
            parts.append(item)
        elif _IDENTIFIER.fullmatch(item):
            parts.append(f".{item}")
        else:
            parts.append(f"[{item!r}]")
        known = _is_model(current) and item in current.model_fields
        current = _unwrap(current.model_fields[item].annotation) if known else None
    allowed = list(holder.model_fields) if _is_model(holder) else None
    return "".join(parts) or "(top level)", allowed


def _describe(error: Any, allowed: list[str] | None) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        if not allowed:
            return "unknown key"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return "required field is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _format_errors(model: type[BaseModel], exc: ValidationError, source: str) -> InvalidArgument:
    problems: list[tuple[str, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # pydantic marks a failed dict *key* (not value) with a trailing "[key]".
        bad_key = bool(loc) and loc[-1] == "[key]"
        field, allowed = _walk(model, loc[:-1] if bad_key else loc)
        message = _describe(error, allowed)
        problems.append((field, f"invalid key: {message}" if bad_key else message))
    lines = [f"{source}: {field}: {message}" for field, message in problems]
    if len(lines) == 1:
        head = lines[0]
    else:
        head = f"{source}: {len(lines)} errors in {model.__name__}:\n  " + "\n  ".join(lines)
    return InvalidArgument(
        head,
        detail={"path": source, "errors": [{"field": f, "message": m} for f, m in problems]},
    )


def parse_config(model: type[M], text: str, *, source: str = "<string>") -> M:
    """Validate YAML ``text`` as ``model``; InvalidArgument naming ``source`` and each bad field."""
    if model is ClientConfig:   # a dataclass with its own validation (no pydantic on the CLI's path)
        return ClientConfig.parse_text(text, source=source)  # type: ignore[return-value]
    data = load_yaml(text, source=source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}",
            detail={"path": source},
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(model, exc, source) from None


def load_server_config(path: Path) -> ServerConfig:
    return parse_config(ServerConfig, read_config_text(Path(path)), source=str(path))


# --------------------------------------------------------------------------- writing


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, text: str, *, overwrite: bool = False, mode: int = 0o600) -> Path:
    """Write ``text`` to ``path`` atomically and durably, readable by the owner only.

    Data goes to a temporary file in the same directory, is fsynced, then
    renamed over ``path`` and the directory fsynced: readers see the old file
    or the new one, never a torn one, and a crash never leaves key material in
    a world-readable file (the temp file is created 0600 before any byte is written).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise AlreadyExists(f"{path} already exists (pass overwrite to replace it)")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; O_TRUNC keeps an old mode
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    if overwrite:
        os.replace(tmp, path)
    else:
        # link() fails if path appeared meanwhile, unlike rename() which would clobber it.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{path} already exists (pass overwrite to replace it)") from None
        finally:
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def save_config(path: Path, model: BaseModel | ClientConfig, *, overwrite: bool = False, only_set: bool = False) -> Path:
    """Write ``model`` as YAML to ``path`` (mode 0600, atomic); see :func:`dump_yaml`."""
    return write_private_file(path, dump_yaml(model, only_set=only_set), overwrite=overwrite)
