"""Rows set aside: the record kept in OUTPUT/_rejected/, and every reason's wording."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

RAW_PREVIEW_CHARS = 200
# One path component, no dot first (so no "..", no hidden folders), no "=" or "/" that would
# break hive partitioning or escape OUTPUT.
COLLECTION_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


@dataclass(frozen=True)
class Rejection:
    """One input row that could not be embedded, and why."""

    file: str  # path under INPUT
    row: int | None  # source row; for a file that failed to read, the first row lost
    reason: str
    id: str | None = None
    raw: str | None = None  # the start of the raw line or text, where there is one

    @classmethod
    def of(cls, file: str, row: int | None, reason: str, id_: Any = None, raw: Any = None):
        """A rejection with the id as text and the raw value cut to a preview, each writable
        as UTF-8 (a lone surrogate shown as its escape)."""
        preview = None if raw is None else writable(str(raw)[:RAW_PREVIEW_CHARS])
        return cls(file, row, reason, None if id_ is None else writable(str(id_)), preview)

    def as_record(self) -> dict[str, Any]:
        """The line written to OUTPUT/_rejected/: the row is always there, the rest if known."""
        values = {"file": self.file, "row": self.row, "reason": self.reason}
        values.update({k: v for k, v in (("id", self.id), ("raw", self.raw)) if v is not None})
        return values

    @property
    def kind(self) -> str:
        """The reason without its details (the part before the first colon)."""
        return self.reason.split(":")[0]


def writable(text: str) -> str:
    """The text with anything UTF-8 cannot hold (lone surrogates) as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def count_by_kind(rejections: Iterable[Rejection]) -> dict[str, int]:
    return dict(Counter(r.kind for r in rejections).most_common())


# -- the reasons -----------------------------------------------------------------------------


def missing_text(column: str) -> str:
    return f"missing text column {column!r}"


def null_text(column: str) -> str:
    return f"null text in column {column!r}"


def text_not_a_string(type_name: str) -> str:
    return f"text is not a string but {type_name}"


EMPTY_TEXT = "empty or whitespace-only text"


def not_unicode(what: str, value: str) -> str:
    """A string with a lone surrogate: JSON can spell one ("\\ud83d"), typically half of an
    emoji that a splitter cut apart, but UTF-8 (so Arrow and Parquet) cannot hold it."""
    position = next(i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff")
    return (
        f"{what} is not valid Unicode: a lone surrogate {writable(value[position])} at "
        f"character {position} (half of a character cut apart?)"
    )


def invalid_collection(value: Any) -> str:
    return (
        f"invalid collection name {value!r}: use letters, digits, '_', '.', '-' "
        "(not starting with '.' or '-', at most 128 characters)"
    )


def duplicate_id(first_seen: str) -> str:
    return f"duplicate id: first seen in {first_seen}"


def unreadable(first_row: int, err: BaseException) -> str:
    where = "unreadable file" if first_row == 0 else f"file unreadable from row {first_row} on"
    return f"{where}: {type(err).__name__}: {err}"
