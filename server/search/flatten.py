"""Documents as search entries (reference §8): a JSON walk that turns a document into
(type, value, long path, short path) entries, the normalization every comparison uses, the
words of a phrase, and the text form of facets and sortables."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

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

TEXT, NUMERIC, BOOLEAN, NULL, EMPTY_ARRAY, EMPTY_OBJECT = range(6)
MAX_DEPTH = 100

# (type, raw value, long path, short path); a root primitive has the empty path.
Entry = tuple[int, str, str, str]

_TRIMMED = "".join(map(chr, range(33)))  # what Java's String.trim() removes
_ACCENTS = re.compile("[\u0300-\u036f]+")
_INTEGER = re.compile(r"-?\d+")
# A word: letters (any script) and ASCII digits, as the reference's boundaries count them.
_WORD = re.compile(r"(?:[^\W\d_]|[0-9])+")


class DocumentError(ValueError):
    """A document (or a facet or sortable) that cannot be indexed; says what and where."""


def normalize(value: str) -> str:
    """Accents stripped, trimmed (characters up to U+0020, as Java's trim), lower case."""
    if value.isascii():  # nothing to decompose: most text
        return value.strip(_TRIMMED).lower()
    stripped = _ACCENTS.sub("", unicodedata.normalize("NFD", value))
    return stripped.strip(_TRIMMED).lower()


def as_phrase(entry_type: int, value: str) -> str:
    """What match and contains compare: the normalized text of TEXT, the raw value otherwise."""
    return normalize(value) if entry_type == TEXT else value


def words(phrase: str) -> list[str]:
    """The words of a normalized phrase: maximal runs of letters and digits 0-9."""
    return _WORD.findall(phrase)


def _key(name: str) -> str:
    """A field name as a path segment: `/` and `"` escaped, integer-like names quoted."""
    escaped = name.replace("\\", "\\\\").replace("/", "\\/").replace('"', '\\"')
    return f'"{escaped}"' if _INTEGER.fullmatch(name) else escaped


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


def _number_text(value: int | float, where: str) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"{value} at {where} is not a JSON number")
        if value.is_integer() and abs(value) < 1e16:
            return repr(value)
    return str(value)


_KEYS: dict[str, str] = {}  # field name -> path segment; names repeat across documents


def path_segment(name: str) -> str:
    """A field name as a path segment (cached)."""
    found = _KEYS.get(name)
    if found is None:
        found = _key(name)
        if len(_KEYS) < 100_000:
            _KEYS[name] = found
    return found


def _walk(value: Any, long: str, short: str, depth: int, out: list[Entry]) -> None:
    # Paths are built as strings on the way down: the long one with array indices, the
    # short one without (a quoted integer-like key is not an index and stays).
    if isinstance(value, str):
        out.append((TEXT, value, long, short))
    elif value is None:
        out.append((NULL, "null", long, short))
    elif isinstance(value, bool):
        out.append((BOOLEAN, "true" if value else "false", long, short))
    elif isinstance(value, (int, float)):
        out.append((NUMERIC, _number_text(value, long or "the root"), long, short))
    elif depth > MAX_DEPTH:
        raise DocumentError(f"the document nests deeper than {MAX_DEPTH} at {long}")
    elif isinstance(value, dict):
        if not value:
            out.append((EMPTY_OBJECT, "{}", long, short))
        for name, item in value.items():
            if not isinstance(name, str):
                raise DocumentError(f"the key {name!r} at {long or 'the root'} is not a string")
            segment = path_segment(name)
            _walk(item, f"{long}/{segment}" if long else segment,
                  f"{short}/{segment}" if short else segment, depth + 1, out)
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append((EMPTY_ARRAY, "[]", long, short))
        for index, item in enumerate(value):
            _walk(item, f"{long}/{index}" if long else str(index), short, depth + 1, out)
    else:
        raise DocumentError(f"a {type(value).__name__} at {long or 'the root'} is not JSON data")


def flatten(document: Any) -> list[Entry]:
    """Every (type, value, long path, short path) of the document, in document order."""
    out: list[Entry] = []
    _walk(document, "", "", 0, out)
    return out


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
