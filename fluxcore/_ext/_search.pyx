# cython: language_level=3
"""The search store's per-value work in C (server/search/flatten.py and store.py are the thin
Python over it): a document flattened into (type, value, long path, short path) entries
(reference §8), and the rows of those entries (phrase, number, words) for the store's tables."""

import re
import unicodedata

from cpython.unicode cimport Py_UNICODE_ISALNUM, Py_UNICODE_ISDECIMAL

# Entry types, as server/search/flatten.py numbers them (the order of the reference).
cdef int _TEXT = 0, _NUMERIC = 1, _BOOLEAN = 2, _NULL = 3, _EMPTY_ARRAY = 4, _EMPTY_OBJECT = 5
MAX_DEPTH = 100
cdef int _MAX_DEPTH = MAX_DEPTH

cdef str _TRIMMED = "".join(map(chr, range(33)))  # what Java's String.trim() removes
_accents_sub = re.compile("[\u0300-\u036f]+").sub
_nfd = unicodedata.normalize

# Field name -> path segment, and value -> (phrase, words) for TEXT and for the other types:
# all repeat across documents; each is emptied when full.
cdef dict _segments = {}
cdef Py_ssize_t _SEGMENTS_MAX = 100_000
cdef dict _analyzed_texts = {}
cdef dict _analyzed_others = {}
cdef Py_ssize_t _ANALYZED_MAX = 200_000


cdef inline bint _is_integer(str name):
    # `-?\d+` in full, \d as Python's re has it for text (Unicode decimal digits).
    cdef Py_ssize_t n = len(name), i = 0
    if n and name[0] == "-":
        i = 1
    if i >= n:
        return False
    while i < n:
        if not Py_UNICODE_ISDECIMAL(name[i]):
            return False
        i += 1
    return True


cpdef str path_segment(str name):
    """A field name as a path segment: `/` and `"` escaped, integer-like names quoted."""
    found = _segments.get(name)
    if found is not None:
        return <str>found
    cdef str escaped = name.replace("\\", "\\\\").replace("/", "\\/").replace('"', '\\"')
    if _is_integer(name):
        escaped = f'"{escaped}"'
    if len(_segments) >= _SEGMENTS_MAX:
        _segments.clear()
    _segments[name] = escaped
    return escaped


cpdef str normalize(str value):
    """Accents stripped, trimmed (characters up to U+0020, as Java's trim), lower case."""
    if value.isascii():  # nothing to decompose: most text
        return value.strip(_TRIMMED).lower()
    cdef str stripped = _accents_sub("", _nfd("NFD", value))
    return stripped.strip(_TRIMMED).lower()


cdef inline bint _word_char(Py_UCS4 ch):
    # `[^\W\d_]|[0-9]` of Python's re: letters of any script (alphanumerics that are not
    # decimal digits, nor `_`) and the ASCII digits.
    if ch < 128:
        return (48 <= ch <= 57) or (65 <= ch <= 90) or (97 <= ch <= 122)
    return Py_UNICODE_ISALNUM(ch) and not Py_UNICODE_ISDECIMAL(ch)


cpdef list words(str phrase):
    """The words of a normalized phrase: maximal runs of letters and digits 0-9."""
    cdef list found = []
    cdef Py_ssize_t n = len(phrase), i = 0, start = -1
    cdef Py_UCS4 ch
    for i in range(n):
        ch = phrase[i]
        if _word_char(ch):
            if start < 0:
                start = i
        elif start >= 0:
            found.append(phrase[start:i])
            start = -1
    if start >= 0:
        found.append(phrase[start:n])
    return found


cdef str _number_text(object value, str where, object error):
    cdef double number
    if isinstance(value, float):
        number = value
        if number != number or number - number != 0.0:  # NaN or infinite
            raise error(f"{value} at {where} is not a JSON number")
        if value.is_integer() and abs(number) < 1e16:
            return repr(value)
    return str(value)


cdef void _walk(object value, str long, str short, int depth, list out,
                object error) except *:
    # Paths are built as strings on the way down: the long one with array indices, the
    # short one without (a quoted integer-like key is not an index and stays).
    cdef str segment
    cdef Py_ssize_t index
    if isinstance(value, str):
        out.append((_TEXT, value, long, short))
    elif value is None:
        out.append((_NULL, "null", long, short))
    elif isinstance(value, bool):
        out.append((_BOOLEAN, "true" if value else "false", long, short))
    elif isinstance(value, (int, float)):
        out.append((_NUMERIC, _number_text(value, long or "the root", error), long, short))
    elif depth > _MAX_DEPTH:
        raise error(f"the document nests deeper than {_MAX_DEPTH} at {long}")
    elif isinstance(value, dict):
        if not value:
            out.append((_EMPTY_OBJECT, "{}", long, short))
        for name, item in value.items():
            if not isinstance(name, str):
                raise error(f"the key {name!r} at {long or 'the root'} is not a string")
            segment = path_segment(name)
            _walk(item, f"{long}/{segment}" if long else segment,
                  f"{short}/{segment}" if short else segment, depth + 1, out, error)
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append((_EMPTY_ARRAY, "[]", long, short))
        index = 0
        for item in value:
            _walk(item, f"{long}/{index}" if long else str(index), short, depth + 1, out,
                  error)
            index += 1
    else:
        raise error(f"a {type(value).__name__} at {long or 'the root'} is not JSON data")


def flatten(document: object, error: type) -> list:
    """Every (type, value, long path, short path) of the document, in document order; what
    cannot be indexed raises `error` with what and where."""
    cdef list out = []
    _walk(document, "", "", 0, out, error)
    return out


cdef tuple _analyze(int entry_type, str value):
    # The phrase that match and contains compare (TEXT normalized, any other type its value),
    # and its distinct words.
    cdef dict cache = _analyzed_texts if entry_type == _TEXT else _analyzed_others
    found = cache.get(value)
    if found is not None:
        return <tuple>found
    cdef str phrase = normalize(value) if entry_type == _TEXT else value
    cdef tuple result = (phrase, tuple(set(words(phrase))))
    if len(cache) >= _ANALYZED_MAX:
        cache.clear()
    cache[value] = result
    return result


def entry_rows(long long base, object coll, list entries, list rows, list word_rows,
               set vocabulary) -> None:
    """Appends the entries' rows (entry, coll, type, value, phrase, number, long path, short
    path), with entry = base | n for the n-th entry, their (word, entry) rows, and adds
    their words to the vocabulary. A value equal to its phrase, and a long path equal to
    the short one, is the empty string (it reads as the other; an empty value has an
    empty phrase, an empty long path an empty short one)."""
    cdef Py_ssize_t n = 0
    cdef int entry_type
    cdef str value, phrase, long_path, short_path
    cdef tuple analyzed, found
    for item in entries:
        entry_type = item[0]
        value = item[1]
        long_path = item[2]
        short_path = item[3]
        analyzed = _analyze(entry_type, value)
        phrase = <str>analyzed[0]
        found = <tuple>analyzed[1]
        entry = base | n  # one int object for the entry's row and its word rows
        rows.append((entry, coll, item[0], "" if value == phrase else value, phrase,
                     float(value) if entry_type == _NUMERIC else None,
                     "" if long_path == short_path else long_path, short_path))
        for word in found:
            word_rows.append((word, entry))
        if found:
            vocabulary.update(found)
        n += 1
