"""Evaluation dataset loaders: ARITH-500, MATH-500 (hub and local), JSONL paths, errors."""

import json
import sys
import time
import types

import pytest

from tts_ray.constants import MATH500_PATH
from tts_ray.eval import datasets
from tts_ray.eval.datasets import DatasetError, DatasetNotFoundError, load_dataset, load_jsonl, load_math500

needs_math500 = pytest.mark.skipif(not MATH500_PATH.is_file(),
                                   reason=f"MATH-500 JSONL not present at {MATH500_PATH}")


@pytest.fixture
def no_hub(monkeypatch):
    """The hub is unreachable (as on these machines), without waiting on a network probe."""
    monkeypatch.setattr(datasets, "hub_reachable", lambda timeout_s=0: False)


def test_arith500_has_math500_fields():
    loaded = load_dataset("arith500")
    assert loaded.source == "generated"
    assert len(loaded.problems) == 500
    first = loaded.problems[0]
    assert first.unique_id == "arith500/0000"
    assert first.solution.rstrip().endswith(f"\\boxed{{{first.answer}}}")
    assert sorted({p.level for p in loaded.problems}) == [1, 2, 3, 4, 5]
    assert len({p.unique_id for p in loaded.problems}) == 500


def test_limit_takes_the_first_problems():
    assert [p.unique_id for p in load_dataset("arith500", limit=3).problems] == [
        "arith500/0000", "arith500/0001", "arith500/0002"]
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("arith500", limit=0)


@needs_math500
def test_math500_local(no_hub):
    loaded = load_dataset("math500")
    assert loaded.source == str(MATH500_PATH)
    assert len(loaded.problems) == 500
    assert loaded.problems[0].unique_id == "test/precalculus/807.json"
    assert loaded.problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert {p.subject for p in loaded.problems} >= {"Algebra", "Geometry", "Precalculus"}
    assert all(p.level in (1, 2, 3, 4, 5) for p in loaded.problems)


def test_math500_from_the_hub_when_reachable(monkeypatch, tmp_path):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return [{"problem": "1+1?", "solution": "\\boxed{2}", "answer": "2", "subject": "Algebra",
                 "level": 1, "unique_id": "test/algebra/1.json"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    monkeypatch.setattr(datasets, "hub_reachable", lambda timeout_s=0: True)
    loaded = load_math500(path=tmp_path / "absent.jsonl")
    assert calls == [("HuggingFaceH4/MATH-500", "test")]
    assert loaded.source == "hub:HuggingFaceH4/MATH-500"
    assert [p.answer for p in loaded.problems] == ["2"]


def test_math500_falls_back_to_local_when_the_hub_fails(monkeypatch, tmp_path):
    def broken(name, split):
        raise ConnectionError("hub down")

    local = tmp_path / "m.jsonl"
    local.write_text(json.dumps({"problem": "p", "answer": "3", "unique_id": "a"}) + "\n")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    monkeypatch.setattr(datasets, "hub_reachable", lambda timeout_s=0: True)
    loaded = load_math500(path=local)
    assert loaded.source == str(local)
    assert [p.unique_id for p in loaded.problems] == ["a"]
    with pytest.raises(DatasetError, match="hub down"):
        load_math500(source="hub", path=local)


def test_math500_hub_only_without_datasets_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DatasetError, match="datasets"):
        load_math500(source="hub")


def test_math500_missing_local_file_names_the_path(no_hub, tmp_path):
    missing = tmp_path / "nowhere" / "math500.jsonl"
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_math500(path=missing)


def test_hub_probe_is_quick_and_honours_offline_switches(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert datasets.hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # An address nothing answers on: the probe must give up within its timeout, not hang.
    monkeypatch.setenv("HF_ENDPOINT", "http://10.255.255.1:81")
    started = time.perf_counter()
    assert datasets.hub_reachable(timeout_s=0.3) is False
    assert time.perf_counter() - started < 3


def test_local_jsonl_path(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"problem": "What is 2+3?", "answer": "5", "level": "Level 2"},
            {"problem": "What is 4*4?", "answer": "16", "unique_id": "q2", "subject": "Arithmetic"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = load_dataset(str(path))
    assert loaded.source == str(path)
    assert [(p.unique_id, p.answer, p.level) for p in loaded.problems] == [("mine/1", "5", 2), ("q2", "16", None)]


def test_bad_path_gives_a_clear_error(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(str(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_jsonl(missing)


def test_unknown_name_and_malformed_files(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'gsm8k'"):
        load_dataset("gsm8k")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid JSON"):
        load_jsonl(bad_json)
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text('{"problem": "p"}\n')
    with pytest.raises(DatasetError, match="no_answer.jsonl:1: missing or invalid field.*answer"):
        load_jsonl(no_answer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="holds no problems"):
        load_jsonl(empty)
