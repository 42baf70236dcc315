"""The query log: every answered match query, appended to rotated JSON-lines files a regulator can audit.

Files live in one directory, `queries-0000000001.jsonl`, `queries-0000000002.jsonl`, ...: the
number grows by one at each rotation, so numeric order is write order. Each line is one JSON object
(ASCII only; every str is escaped, so any participant string gives valid JSON), keys in this order:

    seq            int    1, 2, 3, ... in write order, over all files (continues after a restart)
    time_ms        int    the node's clock when it answered, ms since the epoch; never less than the
                          previous record's (a clock stepped back does not reorder the log)
    node           str    this node's id
    participant    str    the participant the query named, cut to PARTICIPANT_CHARS_MAX characters
    commitment     str    the commitment asked about, hex (cut to HEX_BYTES_MAX bytes; "" if unknown)
    query_id       str    sha256 of the signed query body, hex ("" if unknown)
    query_time_ms  int    the query's own signed time_ms (null if the query did not decode)
    outcome        str    "match", "revoked", "not-found", "refused:<error code>", ...

No credit data is logged: only ids, hashes and times. A line is never rewritten once written.
Retention is by file count: after a rotation the oldest files beyond `files_max` are deleted.

Durability: each line goes to the kernel with one write(2) (a crash of the process loses nothing
written); fsync is at most every `fsync_interval_ms` when lines are appended, at each rotation and
at close. Why: an fsync per query would cost a match query a disk round trip (ms), while a power
loss then loses at most the last interval of lines. 0 fsyncs every line.

A crash mid-write leaves a torn last line without its newline. Readers skip any line that is not a
complete, well-formed record; reopening the log ends a torn line with a newline before appending,
so it never merges with the next record.

Order and paging: (time_ms, seq) strictly increases in file order, so `read_records` pages by that
pair: a cursor (since_ms, after_seq) asks for records with (time_ms, seq) > (since_ms, after_seq);
after_seq = 0 means every record with time_ms >= since_ms. Records sharing a time_ms are told apart
by seq, so a page boundary among them neither loses nor repeats one. Reading finds its start by
bisection over files and then over byte offsets in a file, so a page costs O(log size + limit) lines.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

# Bounds on one record's fields: the log never refuses a query for what it named, it cuts it.
PARTICIPANT_CHARS_MAX = 256        # real participant ids are at most 64 bytes (storage.genesis.name_bytes_max)
HEX_BYTES_MAX = 64                 # commitment and query id (32 bytes each when they decoded)
OUTCOME_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}(:[a-z0-9-]{1,31})?")
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
TIME_MS_MAX = 2**63 - 1
# One line's bytes: 256 chars escaped as surrogate pairs (12 bytes each) + 2 x 128 hex + the rest.
LINE_BYTES_MAX = 4096

FILE_BYTES_MIN = LINE_BYTES_MAX            # a file always holds at least one line
FILE_BYTES_MAX = 1024 * 1024 * 1024        # upper bound of the file_bytes_max setting (1 GiB)
FILES_MIN = 2                              # one full file is kept while the next one fills
FILES_MAX = 10_000
FSYNC_INTERVAL_MS_MAX = 60_000
PAGE_RECORDS_MAX = 1000                    # query_log_page_records_max: records per read

FILE_PATTERN = re.compile(r"queries-([0-9]{10,19})\.jsonl")
LOCK_FILE_NAME = "LOCK"
# Bisection inside a file stops when the range is this small; the rest is read line by line.
_BISECT_STOP_BYTES = 16 * 1024
_KEYS = ("seq", "time_ms", "node", "participant", "commitment", "query_id", "query_time_ms", "outcome")
_HEX_DIGITS = frozenset("0123456789abcdef")
_fdatasync = getattr(os, "fdatasync", os.fsync)   # macOS has no fdatasync


class QueryLogError(Exception):
    """The query log directory cannot be used (or a write to it failed); the message says why."""


@dataclass(frozen=True)
class QueryRecord:
    """What the RPC server knows about one answered query; `seq` is assigned by the log."""

    participant: str
    commitment: bytes
    query_id: bytes
    query_time_ms: int | None
    time_ms: int
    outcome: str


def file_name(number: int) -> str:
    return f"queries-{number:010d}.jsonl"


def render_line(record: dict) -> bytes:
    """The bytes of one line for a complete record dict (keys as in _KEYS): compact ASCII JSON + newline."""
    return (json.dumps({key: record[key] for key in _KEYS}, ensure_ascii=True, separators=(",", ":"))
            + "\n").encode("ascii")


def _check_time(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= TIME_MS_MAX:
        raise ValueError(f"{name} must be an integer in 0..2**63-1, got {value!r}")
    return value


def _hex(value: object, name: str) -> str:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value[:HEX_BYTES_MAX]).hex()


def _valid_record(line: bytes) -> dict | None:
    """The record on a complete line, or None when the line is not one the log writes (torn, foreign)."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):   # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(value, dict) or tuple(value) != _KEYS:
        return None
    for key in ("seq", "time_ms"):
        if type(value[key]) is not int or not 0 <= value[key] <= TIME_MS_MAX:
            return None
    if value["query_time_ms"] is not None and (type(value["query_time_ms"]) is not int):
        return None
    for key in ("node", "participant", "outcome"):
        if not isinstance(value[key], str):
            return None
    for key in ("commitment", "query_id"):
        if not isinstance(value[key], str) or not _HEX_DIGITS.issuperset(value[key]):
            return None
    return value


def _key(record: dict) -> tuple[int, int]:
    return record["time_ms"], record["seq"]


def _lines(f: BinaryIO, start: int) -> Iterator[tuple[int, dict | None]]:
    """(offset, record or None) for every complete line from `start` (a line start) on.

    A line longer than LINE_BYTES_MAX is skipped in pieces, never held whole; a last line without
    its newline (torn, or being written) is not yielded.
    """
    f.seek(start)
    offset = start
    while True:
        line = f.readline(LINE_BYTES_MAX + 1)
        if not line.endswith(b"\n"):
            if len(line) <= LINE_BYTES_MAX:
                return                      # end of file; a partial line is not a record
            length = len(line)
            while not line.endswith(b"\n"):  # overlong: skip to its end without keeping it
                line = f.readline(LINE_BYTES_MAX + 1)
                if not line:
                    return
                length += len(line)
            yield offset, None
            offset += length
            continue
        yield offset, _valid_record(line)
        offset += len(line)


def _next_line_start(f: BinaryIO, position: int) -> int:
    """The first line start at or after `position` (a position inside the file)."""
    if position == 0:
        return 0
    f.seek(position - 1)
    while True:
        chunk = f.readline(LINE_BYTES_MAX + 1)
        if not chunk or chunk.endswith(b"\n"):
            return f.tell()


def _last_record(path: Path) -> tuple[dict | None, int, bool]:
    """(last well-formed record, file size, whether the file ends inside a line) of one file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        torn = False
        if size:
            f.seek(size - 1)
            torn = f.read(1) != b"\n"
        # The last record is almost always in the last two lines' worth of bytes; read only those.
        start = _next_line_start(f, max(0, size - 2 * LINE_BYTES_MAX - 2))
        last = None
        for _, record in _lines(f, start):
            if record is not None:
                last = record
        if last is None and start > 0:     # garbage at the end: the whole file, once
            for _, record in _lines(f, 0):
                if record is not None:
                    last = record
        return last, size, torn


def _numbered_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for name in os.listdir(directory):
        match = FILE_PATTERN.fullmatch(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    found.sort()
    return found


def _start_offset(f: BinaryIO, size: int, after: tuple[int, int]) -> int:
    """A line start before which no record's key is above `after`, close before the first that is."""
    low, high = 0, size
    while high - low > _BISECT_STOP_BYTES:
        middle = (low + high) // 2
        probe = _next_line_start(f, middle)
        found = None
        for offset, record in _lines(f, probe):
            if record is not None:
                found = (offset, record)
                break
        if found is None:
            high = middle                  # nothing valid from the middle on
        elif _key(found[1]) > after:
            high = middle                  # the first wanted record starts at or before this one
        else:
            low = found[0]                 # this record and all before it are not wanted
    return low


def read_records(directory: str | Path, since_ms: int, limit: int,
                 after_seq: int = 0) -> tuple[list[dict], tuple[int, int] | None]:
    """Records with (time_ms, seq) > (since_ms, after_seq), oldest first, at most `limit`.

    Returns (records, next): `next` is the cursor (since_ms, after_seq) to pass for the following
    page, namely the last returned record's (time_ms, seq), or None when no record after this page
    existed when it was read. To wait for records appended later, poll with the last record's
    (time_ms, seq). after_seq = 0 gives every record with time_ms >= since_ms (seq starts at 1).
    Records deleted by retention are gone; a cursor into them continues at the oldest kept record.
    `limit` must be 1..PAGE_RECORDS_MAX. Raises ValueError for bad arguments.
    """
    since_ms = _check_time(since_ms, "since_ms")
    after_seq = _check_time(after_seq, "after_seq")
    if type(limit) is not int or not 1 <= limit <= PAGE_RECORDS_MAX:
        raise ValueError(f"limit must be an integer in 1..{PAGE_RECORDS_MAX}, got {limit!r}")
    directory = Path(directory)
    after = (since_ms, after_seq)
    try:
        files = _numbered_files(directory)
    except FileNotFoundError:
        return [], None

    # The first file whose last record is wanted (keys only grow, so every file before it can be
    # skipped). A file with no record counts as wanted: scanning it costs little and loses nothing.
    def wanted(index: int) -> bool:
        try:
            last, _, _ = _last_record(files[index][1])
        except FileNotFoundError:           # deleted by retention meanwhile
            return True
        return last is None or _key(last) > after

    low, high = 0, len(files)
    while low < high:
        middle = (low + high) // 2
        if wanted(middle):
            high = middle
        else:
            low = middle + 1

    records: list[dict] = []
    started = False                         # past the first wanted record: no more bisection
    for _, path in files[low:]:
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            start = 0 if started else _start_offset(f, os.fstat(f.fileno()).st_size, after)
            for _, record in _lines(f, start):
                if record is None or _key(record) <= after:
                    continue
                started = True
                if len(records) == limit:   # one more exists: there is a next page
                    return records, _key(records[-1])
                records.append(record)
    return records, None


class QueryLog:
    """The append side of the query log (one per node; a lock file keeps out a second writer).

    Not thread-safe: call `append` from one thread (the daemon's trio thread). `read` may run anywhere.
    """

    def __init__(self, directory: str | Path, *, node_id: str, file_bytes_max: int, files_max: int,
                 fsync_interval_ms: int = 1000) -> None:
        if not isinstance(node_id, str) or not NODE_ID_PATTERN.fullmatch(node_id):
            raise ValueError(f"node_id must be 1-64 of letters, digits, '.', '_' or '-', got {node_id!r}")
        for name, value, low, high in (("file_bytes_max", file_bytes_max, FILE_BYTES_MIN, FILE_BYTES_MAX),
                                       ("files_max", files_max, FILES_MIN, FILES_MAX),
                                       ("fsync_interval_ms", fsync_interval_ms, 0, FSYNC_INTERVAL_MS_MAX)):
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        self.directory = Path(directory)
        self.node_id = node_id
        self.file_bytes_max = file_bytes_max
        self.files_max = files_max
        self.fsync_interval_s = fsync_interval_ms / 1000
        self._fd: int | None = None
        self._lock_fd: int | None = None
        try:
            self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QueryLogError(f"query log {self.directory} is in use by another process") from None
            self._open_last()
        except OSError as exc:
            self.close()
            raise QueryLogError(f"query log {self.directory}: {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise

    def _open_last(self) -> None:
        files = _numbered_files(self.directory)
        self._seq = 0
        self._time_ms = 0
        # seq and the clock floor continue from the newest record; older files only if newer hold none.
        for _, path in reversed(files):
            last, _, _ = _last_record(path)
            if last is not None:
                self._seq, self._time_ms = last["seq"], last["time_ms"]
                break
        if files:
            self._number = files[-1][0]
            _, _, torn = _last_record(files[-1][1])
            self._open_file(self._number)
            self._torn = torn
        else:
            self._number = 1
            self._open_file(1)
        self._retain()

    def _open_file(self, number: int) -> None:
        fd = os.open(self.directory / file_name(number), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            size = os.fstat(fd).st_size
            self._fsync_dir()              # the new name itself must survive a power loss
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._size, self._torn = fd, size, False
        self._last_fsync = time.monotonic()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _retain(self) -> None:
        files = _numbered_files(self.directory)
        for _, path in files[:max(0, len(files) - self.files_max)]:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _rotate(self) -> None:
        # The next file is opened before the current one is closed: if that fails the log keeps
        # appending where it was (over file_bytes_max) rather than losing its open file.
        assert self._fd is not None
        previous = self._fd
        self._open_file(self._number + 1)
        self._number += 1
        try:
            os.fsync(previous)
        finally:
            os.close(previous)
        self._retain()
        self._fsync_dir()

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, record: QueryRecord) -> dict:
        """Write one record as one line; returns what was written (with `seq` and the logged time_ms).

        Raises ValueError for a record the caller built wrong (bad outcome, time, types) and
        QueryLogError when the disk refuses the write; nothing is half-counted in either case.
        """
        if self._fd is None:
            raise QueryLogError("query log is closed")
        if not isinstance(record.participant, str):
            raise ValueError(f"participant must be a str, got {type(record.participant).__name__}")
        if not isinstance(record.outcome, str) or not OUTCOME_PATTERN.fullmatch(record.outcome):
            raise ValueError(f"outcome must match {OUTCOME_PATTERN.pattern}, got {record.outcome!r}")
        time_ms = _check_time(record.time_ms, "time_ms")
        if record.query_time_ms is not None:
            _check_time(record.query_time_ms, "query_time_ms")
        entry = {
            "seq": self._seq + 1,
            "time_ms": max(time_ms, self._time_ms),
            "node": self.node_id,
            "participant": record.participant[:PARTICIPANT_CHARS_MAX],
            "commitment": _hex(record.commitment, "commitment"),
            "query_id": _hex(record.query_id, "query_id"),
            "query_time_ms": record.query_time_ms,
            "outcome": record.outcome,
        }
        line = render_line(entry)
        assert len(line) <= LINE_BYTES_MAX, len(line)
        # After a torn line (a crash or failed write mid-line), end it first as its own skipped line.
        prefix = b"\n" if self._torn else b""
        try:
            if self._size > 0 and self._size + len(prefix) + len(line) > self.file_bytes_max:
                self._rotate()
                prefix = b""               # a fresh file has no torn line to end
            self._write(prefix + line)
        except OSError as exc:
            raise QueryLogError(f"query log {self.directory}: write failed: {exc.strerror or exc}") from None
        self._seq = entry["seq"]
        self._time_ms = entry["time_ms"]
        return entry

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError:
                # Whatever part of the line reached the file, the next append starts on a new line.
                if len(view) < len(data):
                    self._torn = data[len(data) - len(view) - 1:len(data) - len(view)] != b"\n"
                raise
            self._size += written
            view = view[written:]
        self._torn = False
        now = time.monotonic()
        if now - self._last_fsync >= self.fsync_interval_s:
            _fdatasync(self._fd)
            self._last_fsync = now

    def read(self, since_ms: int, limit: int, after_seq: int = 0) -> tuple[list[dict], tuple[int, int] | None]:
        """See read_records."""
        return read_records(self.directory, since_ms, limit, after_seq)

    def close(self) -> None:
        """fsync and close; safe to call twice."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass                       # the lines are with the kernel; at close there is no retry
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)        # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "QueryLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
