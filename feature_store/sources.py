"""Reading source files into a staging table: format inference, whole-file checks, raw rows.

Every source file is first checked as a whole (exists, not empty, valid UTF-8, required columns
present) and then read by DuckDB with every column as text into a temporary staging table whose
``_row`` column is the 1-based data row (header excluded).  Validation and typing happen later,
in SQL over that table, so a bad value in one row never aborts the file; only a file that cannot
be read as a table at all raises :class:`~recsys.core.errors.DataValidationError`.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from recsys.core.errors import DataValidationError

log = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_DELIMS = {"csv": ",", "tsv": "\t"}
_CHUNK = 8 << 20


@dataclass(frozen=True)
class StagedFile:
    """A file read into the temporary table ``table``: its columns and row count."""

    path: Path
    fmt: str
    table: str
    columns: tuple[str, ...]
    rows: int
    sha256: str


def infer_format(path: Path, fmt: str | None) -> str:
    """The file format: ``fmt`` when given, else from the suffix (.csv .tsv .parquet .jsonl)."""
    if fmt:
        fmt = fmt.lower()
        if fmt == "ndjson":
            fmt = "jsonl"
        if fmt not in FORMATS:
            raise DataValidationError(
                f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", path=str(path)
            )
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise DataValidationError(
            f"cannot tell the format from the suffix {path.suffix!r}; name the file "
            ".csv/.tsv/.parquet/.jsonl or pass --format",
            path=str(path),
        )
    return found


def check_file(path: Path, fmt: str) -> str:
    """Whole-file checks before anything is read into the store; returns the content sha256.

    Text formats must be valid UTF-8; the error names the row and the column of the first bad
    byte so the user can find it.
    """
    if not path.exists():
        raise DataValidationError("file does not exist", path=str(path))
    if not path.is_file():
        raise DataValidationError("not a regular file", path=str(path))
    if path.stat().st_size == 0:
        raise DataValidationError(
            "file is empty; expected a header row and data rows", path=str(path), row=0
        )
    digest = hashlib.sha256()
    text = fmt != "parquet"
    lines_before, tail = 0, b""  # newlines before ``tail``; ``tail`` = the unfinished line
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            if not text:
                continue
            buf = tail + chunk
            cut = buf.rfind(b"\n") + 1  # decode whole lines only: no split characters
            _check_utf8(path, fmt, buf, cut, lines_before)
            lines_before += buf.count(b"\n", 0, cut)
            tail = buf[cut:]
    if text and tail:
        _check_utf8(path, fmt, tail, len(tail), lines_before)
    return digest.hexdigest()


def _check_utf8(path: Path, fmt: str, buf: bytes, end: int, lines_before: int) -> None:
    try:
        buf[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        _raise_bad_utf8(path, fmt, buf, exc.start, lines_before)


def _raise_bad_utf8(path: Path, fmt: str, buf: bytes, offset: int, lines_before: int) -> None:
    line_start = buf.rfind(b"\n", 0, offset) + 1
    line_no = lines_before + buf.count(b"\n", 0, line_start) + 1  # 1-based physical line
    column = None
    if fmt in _DELIMS:
        with path.open("rb") as fh:
            header = fh.readline().decode("utf-8", "replace").rstrip("\r\n")
        names = header.split(_DELIMS[fmt])
        index = buf[line_start:offset].count(_DELIMS[fmt].encode())
        column = names[index] if index < len(names) else f"field {index + 1}"
    row = line_no - 1 if fmt in _DELIMS else line_no
    raise DataValidationError(
        f"bytes are not valid UTF-8 (byte 0x{buf[offset]:02x}); re-save the file as UTF-8",
        path=str(path),
        row=row,
        column=column,
    )


def reader_sql(path: Path, fmt: str) -> str:
    """The DuckDB table function reading ``path`` (CSV/TSV with every column as text).

    CSV/TSV columns come from the header row as written (read here, not sniffed), so a data
    row with a different number of fields is an error naming its line, never a silent guess.
    """
    p = _quote_literal(str(path))
    if fmt in _DELIMS:
        delim = _quote_literal(_DELIMS[fmt])
        names = csv_header(path, fmt)
        columns = ", ".join(f"{_quote_literal(n)}: 'VARCHAR'" for n in names)
        return (
            f"read_csv({p}, delim={delim}, header=false, skip=1, quote='\"', escape='\"', "
            f"columns={{{columns}}}, strict_mode=true, auto_detect=false)"
        )
    if fmt == "parquet":
        return f"read_parquet({p})"
    return f"read_json({p}, format='newline_delimited', sample_size=-1)"


def csv_header(path: Path, fmt: str) -> list[str]:
    """The header row's column names (a BOM is dropped); duplicates or blanks are errors."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        names = next(csv.reader(fh, delimiter=_DELIMS[fmt]), [])
    names = [n.strip() for n in names]
    for index, name in enumerate(names):
        if not name or names.index(name) != index:
            problem = "an empty" if not name else f"a repeated ({name!r})"
            raise DataValidationError(
                f"header has {problem} column name at position {index + 1}",
                path=str(path),
                row=0,
                column=name or f"field {index + 1}",
            )
    return names


def staged_columns(con: duckdb.DuckDBPyConnection, path: Path, fmt: str) -> dict[str, str]:
    """Column name -> DuckDB type of the file as DuckDB reads it (everything VARCHAR for CSV)."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {reader_sql(path, fmt)}").fetchall()
    except duckdb.Error as exc:
        raise as_validation_error(path, exc) from exc
    return {str(r[0]): str(r[1]) for r in rows}


def stage_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    table: str,
    *,
    required: Sequence[str],
    known: Sequence[str],
    list_columns: Sequence[str] = (),
) -> StagedFile:
    """Check ``path`` and read it into the temp table ``table`` (text columns + ``_row``)."""
    select, sha = file_select(
        con, path, fmt, required=required, known=known, list_columns=list_columns
    )
    rows = stage_query(con, select, table, path=path)
    return StagedFile(path, fmt, table, tuple(known), rows, sha)


def file_select(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    *,
    required: Sequence[str],
    known: Sequence[str],
    list_columns: Sequence[str] = (),
) -> tuple[str, str]:
    """Check ``path`` as a whole; return a SELECT reading it as text columns, and its sha256.

    ``required`` columns must be in the header; columns outside ``known`` are ignored.  Columns
    in ``list_columns`` stay lists when the source has lists (Parquet, JSON arrays); from text
    they are split on ``|``.  Missing optional columns are NULL.
    """
    sha = check_file(path, fmt)
    types = staged_columns(con, path, fmt)
    missing = [c for c in required if c not in types]
    if missing:
        raise DataValidationError(
            _missing_message(fmt, missing, list(types)), path=str(path), row=0, column=missing[0]
        )
    ignored = [c for c in types if c not in known]
    if ignored:
        log.info("%s: ignoring column(s) outside the contract: %s", path, ", ".join(ignored))
    selects = []
    for name in known:
        ident = _ident(name)
        if name not in types:
            kind = "VARCHAR[]" if name in list_columns else "VARCHAR"
            selects.append(f"NULL::{kind} AS {ident}")
        elif name in list_columns:
            selects.append(_list_expr(ident, types[name]) + f" AS {ident}")
        elif types[name].upper() == "JSON":  # mixed types across records: scalars as text
            selects.append(
                f"CASE WHEN json_type({ident}) IN ('OBJECT', 'ARRAY') THEN CAST({ident} AS VARCHAR)"
                f" ELSE json_extract_string({ident}, '$') END AS {ident}"
            )
        elif types[name].upper().startswith(("STRUCT", "MAP")):
            selects.append(f"to_json({ident})::VARCHAR AS {ident}")
        elif types[name].upper().endswith("[]"):
            selects.append(f"to_json({ident})::VARCHAR AS {ident}")
        else:
            selects.append(f"CAST({ident} AS VARCHAR) AS {ident}")
    return f"SELECT {', '.join(selects)} FROM {reader_sql(path, fmt)}", sha


def stage_query(
    con: duckdb.DuckDBPyConnection, select_sql: str, table: str, *, path: Path | None = None
) -> int:
    """Materialize ``select_sql`` as temp table ``{table}_raw`` and expose it as the view
    ``table`` with a 1-based ``_row`` in source order; returns the row count."""
    try:
        # Insertion order is preserved (DuckDB's default), so rowid follows the source order.
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_raw AS {select_sql}")
        # Rows appended inside a transaction get row ids counting up from a large base, so
        # number them relative to the first (looked up once, not on every read of the view).
        found = con.execute(f"SELECT min(rowid), count(*) FROM {table}_raw").fetchone()
        base, count = (int(found[0] or 0), int(found[1])) if found else (0, 0)
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT rowid - {base} + 1 AS _row, * "
            f"FROM {table}_raw"
        )
    except duckdb.Error as exc:
        if path is None:
            raise
        raise as_validation_error(path, exc) from exc
    return count


def drop_stage(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Drop what :func:`stage_query` created."""
    con.execute(f"DROP VIEW IF EXISTS {table}")
    con.execute(f"DROP TABLE IF EXISTS {table}_raw")


def _list_expr(ident: str, dtype: str) -> str:
    upper = dtype.upper()
    if upper.endswith("[]"):
        return f"CAST({ident} AS VARCHAR[])"
    if upper == "JSON":
        return (
            f"CASE WHEN json_type({ident}) = 'ARRAY' THEN CAST(from_json({ident}, '[\"VARCHAR\"]')"
            f" AS VARCHAR[]) ELSE string_split(json_extract_string({ident}, '$'), '|') END"
        )
    return f"string_split(CAST({ident} AS VARCHAR), '|')"


def _missing_message(fmt: str, missing: list[str], found: list[str]) -> str:
    msg = f"missing required column(s) {', '.join(missing)}; the file has {len(found)} column(s)"
    msg += f" {', '.join(repr(c) for c in found[:12])}"
    if fmt in _DELIMS and len(found) == 1:
        other = next((d for d in (";", "\t", ",", "|") if d in found[0]), None)
        if other:
            expected = "tab" if fmt == "tsv" else "comma"
            msg += (
                f" (the header row is one field containing {other!r}: wrong delimiter? "
                f"{fmt} files are {expected}-separated)"
            )
    return msg + " (row 0 is the header)"


_LINE_RE = re.compile(r"[Ll]ine:?\s*(\d+)")


def as_validation_error(path: Path, exc: duckdb.Error) -> DataValidationError:
    """DuckDB could not read ``path``: say so, with the line when DuckDB names one."""
    text = str(exc)
    match = _LINE_RE.search(text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # DuckDB's first line says what failed, the second usually why ("Expected Number of ...")
    first = "; ".join(lines[:2]) if lines else type(exc).__name__
    line = int(match.group(1)) if match else None
    return DataValidationError(
        f"cannot read the file as a table: {first}",
        path=str(path),
        row=(line - 1) if line else None,
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
