"""Documents as search entries (reference §8): a JSON walk that turns a document into
(type, value, long path, short path) entries, the normalization every comparison uses, the
words of a phrase (the three in compiled code, fluxcore/_ext/_search.pyx), and the text form
of facets and sortables."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from fluxcore._ext import _search
from fluxcore._ext._search import normalize, path_segment, words

__all__ = [
    "BOOLEAN",
    "EMPTY_ARRAY",
    "EMPTY_OBJECT",
    "NULL",
    "NUMERIC",
    "TEXT",
    "DocumentError",
    "Entry",
    "as_phrase",
    "flatten",
    "normalize",
    "path_segment",
    "short_path",
    "sortable_text",
    "split_path",
    "words",
]

# The compiled walk numbers the types in this order too.
TEXT, NUMERIC, BOOLEAN, NULL, EMPTY_ARRAY, EMPTY_OBJECT = range(6)

# (type, raw value, long path, short path); a root primitive has the empty path.
Entry = tuple[int, str, str, str]

_INTEGER = re.compile(r"-?\d+")


class DocumentError(ValueError):
    """A document (or a facet or sortable) that cannot be indexed; says what and where."""


def as_phrase(entry_type: int, value: str) -> str:
    """What match and contains compare: the normalized text of TEXT, the raw value otherwise."""
    return normalize(value) if entry_type == TEXT else value


def split_path(path: str) -> list[str]:
    """The segments of a path, on every `/` that is not escaped."""
    segments: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "\\" and i + 1 < len(path):
            current.append(path[i : i + 2])
            i += 2
            continue
        if char == "/":
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    segments.append("".join(current))
    return segments


def short_path(path: str) -> str:
    """The path without its array indices (its unquoted integer segments)."""
    if not path:
        return path
    return "/".join(s for s in split_path(path) if not _INTEGER.fullmatch(s))


def flatten(document: Any) -> list[Entry]:
    """Every (type, value, long path, short path) of the document, in document order."""
    return _search.flatten(document, DocumentError)


_SCALE = 10**6
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def sortable_text(value: Any, where: str) -> str:
    """A sortable's text, ordered as its value: numbers as 20 zero-padded digits of the value
    times 10^6 plus 2^63 (clamped to the long range), so text order is numeric order; times
    as ISO-8601 with milliseconds and Z; anything else normalized."""
    if isinstance(value, bool) or value is None:
        return normalize(str(value).lower() if value is not None else "null")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            raise DocumentError(f"the sortable {where} is NaN")
        if isinstance(value, float) and math.isinf(value):
            scaled = _LONG_MAX if value > 0 else _LONG_MIN
        else:
            scaled = min(max(round(value * _SCALE), _LONG_MIN), _LONG_MAX)
        return f"{scaled - _LONG_MIN:020d}"
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    if isinstance(value, str):
        return normalize(value)
    raise DocumentError(f"the sortable {where} is a {type(value).__name__}, not a value")
