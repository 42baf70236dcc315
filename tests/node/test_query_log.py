"""The match-query log (node/query_log.py) and its [query_log] config: every rule at its edge.

All on a real directory under tmp_path: rotation and retention are checked by the file names and
sizes on disk, restarts by closing and reopening, crashes by writing a torn line into the file.
"""

from __future__ import annotations

import json
import random

import pytest

from node import query_log as ql
from node.config import ConfigError, render_config
from node.query_log import QueryLog, QueryLogError, QueryRecord, read_records
from tests.support.node_config import load_toml as load, node_toml

NODE = "hk-1"
T0 = 1_767_225_600_000      # 2026-01-01 in ms: 13 digits like any time of this century


def record(time_ms=T0, *, participant="bank-a", commitment=b"\xc1" * 32, query_id=b"\x1d" * 32,
           query_time_ms=T0 - 5, outcome="match"):
    return QueryRecord(participant=participant, commitment=commitment, query_id=query_id,
                       query_time_ms=query_time_ms, time_ms=time_ms, outcome=outcome)


def open_log(directory, *, file_bytes_max=ql.FILE_BYTES_MIN, files_max=ql.FILES_MAX, fsync_interval_ms=1000):
    return QueryLog(directory, node_id=NODE, file_bytes_max=file_bytes_max, files_max=files_max,
                    fsync_interval_ms=fsync_interval_ms)


def files_on_disk(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("queries-"))


def read_all(directory, *, limit=ql.PAGE_RECORDS_MAX, since_ms=0):
    """Every record by following `next` cursors; fails on a cursor that does not advance."""
    out, cursor = [], (since_ms, 0)
    while True:
        page, following = read_records(directory, cursor[0], limit, cursor[1])
        assert len(page) <= limit
        out += page
        if following is None:
            return out
        assert following > cursor and following == (page[-1]["time_ms"], page[-1]["seq"])
        cursor = following


def test_round_trip_writes_one_json_object_per_line_with_every_key(tmp_path):
    with open_log(tmp_path) as log:
        first = log.append(record())
        log.append(record(T0 + 1, participant="bank-b", outcome="not-found", query_time_ms=None))
        log.append(record(T0 + 2, outcome="refused:unauthorized"))
    assert first["seq"] == 1
    lines = (tmp_path / "queries-0000000001.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert list(json.loads(lines[0])) == ["seq", "time_ms", "node", "participant", "commitment",
                                         "query_id", "query_time_ms", "outcome"]
    assert json.loads(lines[0]) == {"seq": 1, "time_ms": T0, "node": NODE, "participant": "bank-a",
                                    "commitment": "c1" * 32, "query_id": "1d" * 32,
                                    "query_time_ms": T0 - 5, "outcome": "match"}
    records, following = read_records(tmp_path, 0, 10)
    assert following is None
    assert [(r["seq"], r["participant"], r["outcome"], r["query_time_ms"]) for r in records] == [
        (1, "bank-a", "match", T0 - 5), (2, "bank-b", "not-found", None), (3, "bank-a", "refused:unauthorized", T0 - 5)]


def test_read_from_a_time_includes_that_millisecond_and_skips_earlier(tmp_path):
    with open_log(tmp_path) as log:
        for offset in (0, 100, 100, 200):
            log.append(record(T0 + offset))
    records, _ = read_records(tmp_path, T0 + 100, 10)
    assert [r["seq"] for r in records] == [2, 3, 4]
    assert read_records(tmp_path, T0 + 201, 10) == ([], None)
    assert read_records(tmp_path / "absent", 0, 10) == ([], None)


@pytest.mark.parametrize("limit", [1, 3, 7, 8])
def test_paging_across_files_and_equal_times_neither_loses_nor_repeats(tmp_path, limit):
    # Groups of 7 records share a millisecond, so most page boundaries fall inside a group.
    with open_log(tmp_path) as log:
        for index in range(120):
            log.append(record(T0 + index // 7))
    assert len(files_on_disk(tmp_path)) >= 5
    records = read_all(tmp_path, limit=limit)
    assert [r["seq"] for r in records] == list(range(1, 121))
    # A cursor in the middle of a group continues with the rest of that group.
    page, following = read_records(tmp_path, T0 + 2, 3, 16)
    assert [r["seq"] for r in page] == [17, 18, 19] and following == (T0 + 2, 19)


def test_a_page_of_exactly_limit_has_no_next_and_one_more_does(tmp_path):
    with open_log(tmp_path) as log:
        for _ in range(5):
            log.append(record())
        assert read_records(tmp_path, 0, 5)[1] is None
        log.append(record())
        page, following = read_records(tmp_path, 0, 5)
        assert len(page) == 5 and following == (T0, 5)
        assert [r["seq"] for r in read_records(tmp_path, *following[:1], 5, following[1])[0]] == [6]


@pytest.mark.parametrize("bad", [0, -1, ql.PAGE_RECORDS_MAX + 1, True, 1.0, "10"])
def test_limit_outside_1_to_page_max_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="limit must be an integer in 1..1000"):
        read_records(tmp_path, 0, bad)


def test_limit_of_page_max_reads_that_many(tmp_path):
    with open_log(tmp_path, file_bytes_max=1024 * 1024) as log:
        for _ in range(ql.PAGE_RECORDS_MAX + 1):
            log.append(record())
    page, following = read_records(tmp_path, 0, ql.PAGE_RECORDS_MAX)
    assert len(page) == ql.PAGE_RECORDS_MAX and following == (T0, ql.PAGE_RECORDS_MAX)


@pytest.mark.parametrize("since_ms, after_seq", [(-1, 0), (2**63, 0), (0, -1), (True, 0), (0, None)])
def test_cursor_outside_uint63_is_refused(tmp_path, since_ms, after_seq):
    with pytest.raises(ValueError, match="must be an integer in 0..2"):
        read_records(tmp_path, since_ms, 10, after_seq)


def fill_to(log, directory, target_size):
    """Append records until the next one, sized by its participant, leaves the file at exactly target_size."""
    path = directory / "queries-0000000001.jsonl"
    size = path.stat().st_size if path.exists() else 0
    while True:
        seq = log.last_seq + 1
        empty = ql.render_line({"seq": seq, "time_ms": T0, "node": NODE, "participant": "",
                                "commitment": "c1" * 32, "query_id": "1d" * 32,
                                "query_time_ms": T0 - 5, "outcome": "match"})
        room = target_size - size
        if room - len(empty) <= ql.PARTICIPANT_CHARS_MAX:
            assert room >= len(empty)
            log.append(record(participant="p" * (room - len(empty))))
            return
        log.append(record(participant="p" * 100))
        size = path.stat().st_size


def test_a_file_is_filled_to_exactly_file_bytes_max_then_rotated(tmp_path):
    with open_log(tmp_path, file_bytes_max=ql.FILE_BYTES_MIN) as log:
        fill_to(log, tmp_path, ql.FILE_BYTES_MIN)
        assert files_on_disk(tmp_path) == ["queries-0000000001.jsonl"]
        assert (tmp_path / "queries-0000000001.jsonl").stat().st_size == ql.FILE_BYTES_MIN
        log.append(record())
    assert files_on_disk(tmp_path) == ["queries-0000000001.jsonl", "queries-0000000002.jsonl"]
    assert (tmp_path / "queries-0000000001.jsonl").stat().st_size == ql.FILE_BYTES_MIN
    assert len((tmp_path / "queries-0000000002.jsonl").read_bytes().splitlines()) == 1


def test_a_line_one_byte_over_file_bytes_max_goes_to_the_next_file(tmp_path):
    with open_log(tmp_path, file_bytes_max=ql.FILE_BYTES_MIN) as log:
        fill_to(log, tmp_path, ql.FILE_BYTES_MIN + 1)
    assert files_on_disk(tmp_path) == ["queries-0000000001.jsonl", "queries-0000000002.jsonl"]
    assert (tmp_path / "queries-0000000001.jsonl").stat().st_size < ql.FILE_BYTES_MIN
    assert [r["seq"] for r in read_all(tmp_path)] == list(range(1, read_all(tmp_path)[-1]["seq"] + 1))


def test_retention_deletes_only_the_oldest_files_beyond_files_max(tmp_path):
    with open_log(tmp_path, files_max=3) as log:
        while len(files_on_disk(tmp_path)) < 3 or log.last_seq < 80:
            log.append(record(T0 + log.last_seq))
        names = files_on_disk(tmp_path)
        newest = int(names[-1][8:18])
    assert names == [ql.file_name(n) for n in range(newest - 2, newest + 1)]
    first_kept = json.loads((tmp_path / names[0]).read_text().splitlines()[0])["seq"]
    assert first_kept > 1
    assert [r["seq"] for r in read_all(tmp_path)] == list(range(first_kept, 81))
    # A cursor into deleted records continues at the oldest kept one.
    assert read_records(tmp_path, 0, 1, 1)[0][0]["seq"] == first_kept


def test_a_lower_files_max_at_reopen_deletes_the_oldest_at_once(tmp_path):
    with open_log(tmp_path) as log:
        while len(files_on_disk(tmp_path)) < 5:
            log.append(record())
    before = files_on_disk(tmp_path)
    with open_log(tmp_path, files_max=2):
        assert files_on_disk(tmp_path) == before[-2:]


def test_restart_continues_in_the_last_file_with_the_next_seq(tmp_path):
    with open_log(tmp_path) as log:
        for offset in range(3):
            log.append(record(T0 + offset))
    with open_log(tmp_path) as log:
        assert log.last_seq == 3
        # The clock stepped back over the restart: the log keeps time order.
        assert log.append(record(T0 - 60_000))["time_ms"] == T0 + 2
        log.append(record(T0 + 10))
    assert files_on_disk(tmp_path) == ["queries-0000000001.jsonl"]
    assert [(r["seq"], r["time_ms"]) for r in read_all(tmp_path)] == [
        (1, T0), (2, T0 + 1), (3, T0 + 2), (4, T0 + 2), (5, T0 + 10)]


def test_restart_after_rotation_continues_in_the_newest_file(tmp_path):
    with open_log(tmp_path) as log:
        while len(files_on_disk(tmp_path)) < 3:
            log.append(record())
        last = log.last_seq
    with open_log(tmp_path) as log:
        assert log.append(record())["seq"] == last + 1
    assert len(files_on_disk(tmp_path)) == 3
    assert [r["seq"] for r in read_all(tmp_path)] == list(range(1, last + 2))


def test_a_torn_last_line_is_skipped_and_never_merges_with_the_next(tmp_path):
    with open_log(tmp_path) as log:
        log.append(record(T0))
        log.append(record(T0 + 1))
    path = tmp_path / "queries-0000000001.jsonl"
    torn = b'{"seq":3,"time_ms":1767225600002,"node":"hk-1","partic'
    with open(path, "ab") as f:
        f.write(torn)                      # the process died mid-write
    assert [r["seq"] for r in read_records(tmp_path, 0, 10)[0]] == [1, 2]
    with open_log(tmp_path) as log:
        assert log.append(record(T0 + 3))["seq"] == 3
        log.append(record(T0 + 4))
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == torn                # kept as written, ended by a newline of its own
    assert [r["seq"] for r in read_all(tmp_path)] == [1, 2, 3, 4]


def test_a_newest_file_holding_only_a_torn_line_takes_seq_from_the_one_before(tmp_path):
    with open_log(tmp_path) as log:
        while len(files_on_disk(tmp_path)) < 2:
            log.append(record())
        last = log.last_seq
    newest = tmp_path / files_on_disk(tmp_path)[-1]
    newest.write_bytes(b'{"seq":')           # crashed during the first write after a rotation
    with open_log(tmp_path) as log:
        assert log.append(record())["seq"] == last
    assert [r["seq"] for r in read_all(tmp_path)] == list(range(1, last + 1))


def test_foreign_and_overlong_lines_are_skipped_by_the_reader(tmp_path):
    with open_log(tmp_path, file_bytes_max=1024 * 1024) as log:
        log.append(record(T0))
    path = tmp_path / "queries-0000000001.jsonl"
    with open(path, "ab") as f:
        f.write(b"x" * 100_000 + b"\n")                    # far past LINE_BYTES_MAX
        f.write(b'{"seq": "2"}\n[1, 2]\n\xff\xfe\n\n')     # JSON of the wrong shape, not UTF-8, empty
        f.write(b"[" * 3000 + b"\n")                        # deep nesting
    with open_log(tmp_path, file_bytes_max=1024 * 1024) as log:
        log.append(record(T0 + 1))
    assert [r["seq"] for r in read_all(tmp_path)] == [1, 2]
    assert [r["seq"] for r in read_records(tmp_path, T0 + 1, 10)[0]] == [2]


@pytest.mark.parametrize("participant", [
    'quote " backslash \\ newline \n return \r tab \t nul \x00 del \x7f',
    "\u2028\u2029 line separators, \ufeff bom",
    "lone surrogates \ud800 \udfff",
    "\U0001F600" * 10_000,                 # astral: the longest escape, 12 bytes per character
    "",
])
def test_any_participant_string_gives_one_valid_json_line(tmp_path, participant):
    with open_log(tmp_path) as log:
        written = log.append(record(participant=participant, commitment=b"\xff" * 10_000))
        log.append(record())
    raw = (tmp_path / "queries-0000000001.jsonl").read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 2
    line = raw.split(b"\n")[0]
    assert len(line) < ql.LINE_BYTES_MAX
    assert json.loads(line)["participant"] == participant[:ql.PARTICIPANT_CHARS_MAX] == written["participant"]
    assert json.loads(line)["commitment"] == "ff" * ql.HEX_BYTES_MAX
    assert [r["participant"] for r in read_records(tmp_path, 0, 10)[0]] == [participant[:ql.PARTICIPANT_CHARS_MAX],
                                                                          "bank-a"]


@pytest.mark.parametrize("changes, message", [
    ({"outcome": "Match"}, "outcome must match"),
    ({"outcome": "refused:"}, "outcome must match"),
    ({"outcome": "match\n"}, "outcome must match"),
    ({"outcome": "x" * 33}, "outcome must match"),
    ({"time_ms": -1}, "time_ms must be an integer"),
    ({"time_ms": 2**63}, "time_ms must be an integer"),
    ({"query_time_ms": True}, "query_time_ms must be an integer"),
    ({"participant": b"bank-a"}, "participant must be a str"),
    ({"commitment": "c1" * 32}, "commitment must be bytes"),
])
def test_a_record_built_wrong_is_refused_and_nothing_is_written(tmp_path, changes, message):
    with open_log(tmp_path) as log:
        with pytest.raises(ValueError, match=message):
            log.append(record(**changes))
        assert log.last_seq == 0
        assert log.append(record())["seq"] == 1
    assert (tmp_path / "queries-0000000001.jsonl").read_bytes().count(b"\n") == 1


def test_longest_outcome_is_accepted(tmp_path):
    with open_log(tmp_path) as log:
        assert log.append(record(outcome="r" * 32 + ":" + "c" * 31))["seq"] == 1


@pytest.mark.parametrize("args, message", [
    ({"file_bytes_max": ql.FILE_BYTES_MIN - 1}, "file_bytes_max must be an integer in 4096.."),
    ({"file_bytes_max": ql.FILE_BYTES_MAX + 1}, "file_bytes_max must be an integer in 4096.."),
    ({"files_max": 1}, "files_max must be an integer in 2..10000"),
    ({"files_max": 10_001}, "files_max must be an integer in 2..10000"),
    ({"fsync_interval_ms": -1}, "fsync_interval_ms must be an integer in 0..60000"),
    ({"node_id": "hk 1"}, "node_id must be"),
])
def test_constructor_bounds(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        QueryLog(tmp_path, **({"node_id": NODE, "file_bytes_max": 65536, "files_max": 2} | args))
    assert not list(tmp_path.iterdir())


def test_a_second_writer_on_the_same_directory_is_refused_until_the_first_closes(tmp_path):
    first = open_log(tmp_path)
    with pytest.raises(QueryLogError, match="in use by another process"):
        open_log(tmp_path)
    first.close()
    first.close()                           # twice is harmless
    with pytest.raises(QueryLogError, match="closed"):
        first.append(record())
    with open_log(tmp_path) as again:
        assert again.append(record())["seq"] == 1


def test_a_directory_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(QueryLogError, match="query log .*taken"):
        open_log(tmp_path / "taken")


def test_fsync_every_line_writes_the_same_log(tmp_path):
    with open_log(tmp_path, fsync_interval_ms=0) as log:
        for offset in range(30):
            log.append(record(T0 + offset))
    assert [r["seq"] for r in read_all(tmp_path, limit=4)] == list(range(1, 31))


def test_bisection_finds_every_cursor_in_large_files(tmp_path):
    # Files far above the bisection's stop size, so the start of a page is found by seeking.
    with open_log(tmp_path, file_bytes_max=256 * 1024) as log:
        for index in range(4000):
            log.append(record(T0 + index // 3, participant="p" * (index % 50)))
    assert len(files_on_disk(tmp_path)) >= 3
    every = read_all(tmp_path)
    assert [r["seq"] for r in every] == list(range(1, 4001))
    rng = random.Random(15)
    for _ in range(60):
        since_ms = T0 + rng.randrange(-5, 1340)
        after_seq = rng.choice([0, rng.randrange(0, 4005)])
        limit = rng.randrange(1, 20)
        expected = [r for r in every if (r["time_ms"], r["seq"]) > (since_ms, after_seq)]
        page, following = read_records(tmp_path, since_ms, limit, after_seq)
        assert page == expected[:limit]
        assert following == ((page[-1]["time_ms"], page[-1]["seq"]) if len(expected) > limit else None)


# --- [query_log] in node.toml ---

BASE = node_toml(sections="[rpc]\nplaintext = true\n")


def test_config_defaults_put_the_log_under_the_data_dir(tmp_path):
    config = load(tmp_path, BASE)
    assert config.query_log.dir is None
    assert config.query_log.directory(config.data_dir) == tmp_path / "data" / "query-log"
    assert (config.query_log.file_bytes_max, config.query_log.files_max, config.query_log.fsync_interval_ms) == (
        64 * 1024 * 1024, 64, 1000)


def test_config_relative_dir_resolves_against_the_config_file(tmp_path):
    config = load(tmp_path, BASE + '[query_log]\ndir = "audit/queries"\n')
    assert config.query_log.directory(config.data_dir) == tmp_path / "audit" / "queries"


@pytest.mark.parametrize("dir_line", ["", 'dir = "/var/lib/bayledger/queries"\n'])
def test_config_renders_and_loads_back_equal(tmp_path, dir_line):
    config = load(tmp_path, BASE + "[query_log]\n" + dir_line + "file_bytes_max = 4096\nfiles_max = 10000\n"
                  "fsync_interval_ms = 0\n")
    rendered = render_config(config)
    assert "[query_log]" in rendered and ("\ndir = " in rendered) == bool(dir_line)
    assert load(tmp_path, rendered).query_log == config.query_log


@pytest.mark.parametrize("key, low, high", [
    ("file_bytes_max", 4096, 1024 * 1024 * 1024),
    ("files_max", 2, 10_000),
    ("fsync_interval_ms", 0, 60_000),
])
def test_config_integer_bounds_are_inclusive(tmp_path, key, low, high):
    for good in (low, high):
        assert getattr(load(tmp_path, BASE + f"[query_log]\n{key} = {good}\n").query_log, key) == good
    for bad in (low - 1, high + 1, "true", '"64"'):
        with pytest.raises(ConfigError, match=f"^query_log.{key}: must be an integer between {low} and {high}"):
            load(tmp_path, BASE + f"[query_log]\n{key} = {bad}\n")


@pytest.mark.parametrize("section, message", [
    ("[query_log]\nfiles = 3\n", "query_log.files: unknown key"),
    ('[query_log]\ndir = ""\n', "query_log.dir: must be a non-empty path string"),
    ("[query_log]\ndir = 5\n", "query_log.dir: must be a non-empty path string"),
    ('query_log = "on"\n', "query_log: must be a table"),
])
def test_config_refuses_bad_query_log_sections_by_key(tmp_path, section, message):
    text = BASE.replace("[listen]", section + "[listen]") if section.startswith("query_log =") else BASE + section
    with pytest.raises(ConfigError, match=f"^{message}"):
        load(tmp_path, text)


def test_operations_doc_lists_every_query_log_setting_with_its_default():
    from dataclasses import fields
    from pathlib import Path

    from node.config import QueryLogConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    assert "### Query log" in text and "`[query_log]`" in text
    for field in fields(QueryLogConfig):
        shown = "`DATA_DIR/query-log`" if field.name == "dir" else str(field.default)
        assert f"| `{field.name}` | {shown} |" in text, field.name
    for key in ("seq", "time_ms", "node", "participant", "commitment", "query_id", "query_time_ms", "outcome"):
        assert f"| `{key}` |" in text, key
