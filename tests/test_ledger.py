"""The processed-files ledger survives restarts and cut lines, and stays as small as the folder."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.records import FileKey
from monitor.sources.ledger import Ledger
from monitor.sources.ledger import _line as ledger_line


def test_ledger_remembers_across_reopen(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    ledger.add(FileKey("a.png", 10, 123))
    ledger.close()
    again = Ledger(tmp_path / "l.jsonl")
    assert ("a.png", 10, 123) in again
    assert ("a.png", 11, 123) not in again  # another version of the same name


def test_a_line_cut_by_a_crash_is_skipped(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"p": "a.png", "s": 1, "m": 2}\n{"p": "b.pn')
    ledger = Ledger(path)
    assert ("a.png", 1, 2) in ledger and len(ledger) == 1


def test_compaction_drops_entries_of_files_that_are_gone(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    for i in range(5):
        ledger.add(FileKey(f"{i}.png", 1, 1))
    ledger.compact([("1.png", 1, 1), ("3.png", 1, 1), ("new.png", 1, 1)])
    ledger.add(FileKey("9.png", 1, 1))
    ledger.close()
    again = Ledger(tmp_path / "l.jsonl")
    assert len(again) == 3
    assert ("1.png", 1, 1) in again and ("9.png", 1, 1) in again and ("0.png", 1, 1) not in again


def test_a_batch_of_keys_is_one_line_each_and_remembered_across_reopen(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    keys = [FileKey(f"{i}.png", 10 + i, 5) for i in range(4)]
    ledger.add_many(keys)
    ledger.add_many([])
    ledger.close()
    assert len((tmp_path / "l.jsonl").read_text().splitlines()) == 4
    again = Ledger(tmp_path / "l.jsonl")
    assert all(key in again for key in keys) and len(again) == 4


# Names with lone surrogates too: os.fsdecode gives them for bytes that are not UTF-8.
@given(st.text(st.characters(exclude_categories=()), max_size=40), st.integers(0, 2**63 - 1),
       st.integers(-(2**63), 2**63 - 1), st.sampled_from([None, True, False]))
@settings(max_examples=300, deadline=None)
def test_a_ledger_line_is_the_json_of_its_file_version(name: str, size: int, mtime_ns: int,
                                                        anomaly: bool | None) -> None:
    record: dict = {"p": name, "s": size, "m": mtime_ns}
    if anomaly is not None:
        record["a"] = anomaly
    assert ledger_line(FileKey(name, size, mtime_ns), anomaly) == json.dumps(record) + "\n"
