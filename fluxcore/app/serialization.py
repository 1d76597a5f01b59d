"""Typed payloads to bytes and back: msgspec Structs, dataclasses, pydantic models (when pydantic
is installed), dicts and lists (all JSON, through msgspec) and raw bytes.

On the wire a payload has a type (the class's name unless the class says otherwise) and a
revision (0 unless the class says otherwise). Old revisions are brought up to date by the
upcasters (upcasting.py) before a handler sees them.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgspec

from .upcasting import Upcasters

__all__ = ["Encoded", "Serializer", "SerializationError", "payload"]

T = TypeVar("T")

BYTES_TYPE = "bytes"  # the payload type of raw bytes sent without a type
JSON_TYPE = "json"  # the payload type of a dict or list sent without a type


class SerializationError(ValueError):
    """A payload that cannot be encoded, or bytes that do not decode into the type asked."""


class Encoded(NamedTuple):
    """A payload ready for the wire."""

    data: bytes
    type: str
    revision: int


def payload(*, type: str | None = None, revision: int = 0
            ) -> Callable[[builtins.type[T]], builtins.type[T]]:
    """Class decorator: the payload type name on the wire (default: the class's name) and the
    revision of this shape (default 0). Same as setting `__payload_type__` and
    `__payload_revision__` on the class."""

    def mark(cls: builtins.type[T]) -> builtins.type[T]:
        if type is not None:
            cls.__payload_type__ = type  # type: ignore[attr-defined]
        cls.__payload_revision__ = revision  # type: ignore[attr-defined]
        return cls

    return mark


def type_name(cls: type) -> str:
    """The payload type of a class on the wire."""
    name = cls.__dict__.get("__payload_type__")
    return name if isinstance(name, str) else cls.__name__


def revision_of(cls: type) -> int:
    rev = cls.__dict__.get("__payload_revision__", 0)
    return rev if isinstance(rev, int) else 0


def _is_pydantic(cls: type) -> bool:
    return hasattr(cls, "model_validate_json") and hasattr(cls, "model_dump_json")


def is_payload_class(cls: Any) -> bool:
    """A class whose instances the serializer encodes under their own type name."""
    return isinstance(cls, type) and (
        issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls) or _is_pydantic(cls))


class Serializer:
    """Encodes payloads and decodes them into the classes it knows, by type name."""

    def __init__(self, upcasters: Upcasters | None = None) -> None:
        self.upcasters = upcasters or Upcasters()
        self._classes: dict[str, type] = {}
        self._decoders: dict[type, Callable[[bytes], Any]] = {}
        self._encoder = msgspec.json.Encoder()

    # -- classes -------------------------------------------------------------------------------

    def register(self, cls: type) -> None:
        """Makes `cls` known by its type name, so that messages of that type decode into it."""
        if not is_payload_class(cls):
            raise TypeError(f"{cls!r} is not a payload class (a msgspec Struct, a dataclass or "
                            "a pydantic model)")
        name = type_name(cls)
        known = self._classes.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"two payload classes have the type name {name!r}: {known!r} and "
                             f"{cls!r}; give one another name with @payload(type=...)")
        self._classes[name] = cls

    def class_of(self, name: str) -> type | None:
        return self._classes.get(name)

    def describe(self, cls: type) -> tuple[str, int]:
        """(type name, revision) of a payload class."""
        return type_name(cls), revision_of(cls)

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, value: Any, type: str | None = None) -> Encoded:
        """The wire form of a payload; `type` overrides the type name."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return Encoded(bytes(value), type or BYTES_TYPE, 0)
        cls = value.__class__
        if isinstance(value, msgspec.Struct) or dataclasses.is_dataclass(value):
            self._classes.setdefault(type_name(cls), cls)
            return Encoded(self._encoder.encode(value), type or type_name(cls), revision_of(cls))
        if _is_pydantic(cls):
            self._classes.setdefault(type_name(cls), cls)
            return Encoded(value.model_dump_json().encode(), type or type_name(cls),
                           revision_of(cls))
        try:
            data = self._encoder.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise SerializationError(f"cannot encode a {cls.__name__} as a payload: {exc}"
                                     ) from exc
        return Encoded(data, type or JSON_TYPE, 0)

    # -- decoding ------------------------------------------------------------------------------

    def decoder(self, cls: type) -> Callable[[bytes], Any]:
        """bytes -> an instance of cls (cached per class)."""
        found = self._decoders.get(cls)
        if found is None:
            if _is_pydantic(cls):
                found = cls.model_validate_json  # type: ignore[attr-defined]
            else:
                found = msgspec.json.Decoder(cls).decode
            self._decoders[cls] = found
        return found

    def decode(self, data: bytes, type: str, revision: int, target: type | None = None) -> Any:
        """The payload as an instance of `target`, or of the class registered for its type
        (after upcasting); raw bytes for `bytes`; a dict (or list) for unknown JSON types;
        DROPPED if an upcaster dropped it."""
        if target is bytes:
            return data
        found = self.read(data, type, revision, lambda _name: target)
        return DROPPED if found is None else found[1]

    def read(self, data: bytes, type: str, revision: int,
             target_for: Callable[[str], type | None]) -> tuple[str, Any] | None:
        """(type name after upcasting, payload decoded into `target_for(name)` or the class
        registered for the name), or None if an upcaster dropped it."""
        if self.upcasters.applies(type, revision):
            upcast = self.upcasters.upcast(type, revision, self.loads(data))
            if upcast is None:
                return None
            name, _revision, value = upcast
            cls = target_for(name) or self._classes.get(name)
            return name, (value if cls is None else self.convert(value, cls))
        cls = target_for(type) or self._classes.get(type)
        if cls is None:
            return type, (data if type == BYTES_TYPE else self.loads(data))
        try:
            return type, self.decoder(cls)(data)
        except (msgspec.DecodeError, ValueError) as exc:
            raise SerializationError(f"payload of type {type!r} does not decode into "
                                     f"{cls.__name__}: {exc}") from exc

    @staticmethod
    def loads(data: bytes) -> Any:
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise SerializationError(f"payload is not JSON: {exc}") from exc

    @staticmethod
    def convert(value: Any, cls: type) -> Any:
        if _is_pydantic(cls):
            return cls.model_validate(value)  # type: ignore[attr-defined]
        try:
            return msgspec.convert(value, cls)
        except msgspec.ValidationError as exc:
            raise SerializationError(f"upcast payload does not fit {cls.__name__}: {exc}"
                                     ) from exc

    def to_builtins(self, value: Any) -> Any:
        """A payload as JSON-like Python values (what an upcaster gets)."""
        return self.loads(self.encode(value).data)


class _Dropped:
    """Returned by Serializer.decode when an upcaster dropped the message."""

    def __repr__(self) -> str:
        return "DROPPED"


DROPPED: Any = _Dropped()
