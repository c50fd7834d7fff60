"""The model benchmarks read any labelled data, not only BANKING77: how a train and test set is found, read and
refused, how the long tail is cut from it, and which result files the README's table renders."""

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import bench.report
from bench.labelled_data import DataError, add_data_arguments, load_data
from bench.long_tail import long_tail

ROOT = Path(__file__).resolve().parents[2]


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(list(argv))


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_without_data_the_benchmarks_read_banking77_as_the_project_keeps_it() -> None:
    data = load_data(parsed())
    raw = pd.read_csv(ROOT / "examples" / "banking77" / "data" / "train.csv")
    assert (data.name, data.title, len(data.intents)) == ("banking77", "BANKING77", 77)
    assert data.train["text"].tolist() == raw["text"].tolist() and data.train["intent"].tolist() == raw["category"].tolist()
    assert data.result_file("intent") == ROOT / "bench" / "results" / "intent_banking77.json"
    assert data.describe()["source"] == "examples/banking77/data/train.csv and examples/banking77/data/test.csv"


def test_a_folder_of_json_lines_with_its_own_label_column_names_the_results_after_the_desk(tmp_path: Path) -> None:
    folder = tmp_path / "Help Desk" / "data"
    write(
        folder / "train.jsonl",
        [
            {"text": "I can't log in", "label": "Account/Login"},
            {"text": "   ", "label": "Billing"},  # no text: left out, counted
            {"text": "refund please", "label": "Billing"},
            {"text": "where is my invoice", "label": None},  # no label
        ],
    )
    write(folder / "test.jsonl", [{"text": "login fails", "label": "Account/Login"}])
    data = load_data(parsed("--data", str(folder)))
    assert data.name == "help-desk" and data.title == "Help Desk"  # a folder called data names nothing: its parent does
    assert data.intents == ["Account - Login", "Billing"]  # as `supportflow init` names a category path
    assert data.test["intent"].tolist() == ["Account - Login"]
    assert data.dropped == 2 and len(data.train) == 2
    assert data.result_file("long_tail").name == "long_tail_help-desk.json"


def test_a_desk_s_data_folder_keeps_its_training_export_as_tickets() -> None:
    data = load_data(parsed("--data", str(ROOT / "examples" / "saas" / "data")))
    assert data.name == "saas" and data.describe()["source"] == "examples/saas/data/tickets.csv and examples/saas/data/test.csv"


def test_named_files_and_columns(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", [{"Message": "hi", "Topic": "greet"}, {"Message": "bye", "Topic": "leave"}])
    test = write(tmp_path / "b.csv", [{"Message": "hello", "Topic": "greet"}])
    columns = ("--text-column", "Message", "--intent-column", "Topic")
    data = load_data(parsed("--train", str(train), "--test", str(test), *columns, "--name", "My desk"))
    assert (data.name, data.title, data.intents, len(data.test)) == ("my-desk", "My desk", ["greet", "leave"], 1)


SAME_INTENT = [{"text": "a", "intent": "Card arrival"}, {"text": "b", "intent": "card_arrival"}]


@pytest.mark.parametrize(
    ("train_rows", "test_rows", "says"),
    [
        ([{"text": "a", "intent": "x"}], [{"text": "b", "intent": "y"}], "labels no training message carries (y)"),
        (SAME_INTENT, [{"text": "c", "intent": "card_arrival"}], "differ only in case"),
        ([{"message": "a", "intent": "x"}], [{"message": "b", "intent": "x"}], "no text column 'text'; its columns are message, intent"),
        ([{"text": "a", "topic": "x"}], [{"text": "b", "topic": "x"}], "no label column (intent or category or label)"),
    ],
)
def test_data_a_benchmark_cannot_measure_is_refused_with_the_reason(
    tmp_path: Path, train_rows: list[dict], test_rows: list[dict], says: str
) -> None:
    write(tmp_path / "train.csv", train_rows)
    write(tmp_path / "test.csv", test_rows)
    with pytest.raises(DataError, match=re.escape(says)):
        load_data(parsed("--data", str(tmp_path)))


def test_the_command_line_names_one_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="go together"):
        load_data(parsed("--train", "a.csv"))
    with pytest.raises(DataError, match="either --data"):
        load_data(parsed("--data", str(tmp_path), "--train", "a.csv", "--test", "b.csv"))
    with pytest.raises(DataError, match=re.escape("no train.csv or train.jsonl or tickets.csv or tickets.jsonl")):
        load_data(parsed("--data", str(tmp_path)))


def test_the_long_tail_cuts_a_third_of_the_intents_to_ten_a_third_to_five_and_keeps_smaller_ones_whole() -> None:
    sizes = {"a": 40, "b": 40, "c": 7, "d": 3, "e": 40, "f": 40}
    train = pd.DataFrame([{"text": f"{intent} {n}", "intent": intent} for intent, size in sizes.items() for n in range(size)])
    cut, buckets = long_tail(train, seed=13)
    assert sorted(len(intents) for intents in buckets.values()) == [2, 2, 2]
    kept = cut["intent"].value_counts().to_dict()
    for intent in buckets["10"]:
        assert kept[intent] == min(sizes[intent], 10)
    for intent in buckets["5"]:
        assert kept[intent] == min(sizes[intent], 5)
    for intent in buckets["untouched"]:
        assert kept[intent] == sizes[intent]
    assert long_tail(train, seed=13)[0].equals(cut)  # seeded: the same rows every run


def test_the_table_renders_each_data_set_s_own_result_and_not_the_copies_kept_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("long_tail_banking77.json", "long_tail_banking77_logit_adjusted.json"):
        (tmp_path / name).write_text((ROOT / "bench" / "results" / "long_tail_banking77.json").read_text())
    other = json.loads((tmp_path / "long_tail_banking77.json").read_text()) | {"dataset": {"name": "desk", "title": "A desk"}}
    (tmp_path / "long_tail_desk.json").write_text(json.dumps(other))
    monkeypatch.setattr(bench.report, "RESULTS", tmp_path)
    assert [path.name for path, _ in bench.report._per_data("long_tail")] == ["long_tail_banking77.json", "long_tail_desk.json"]
    rows = [row for row in bench.report.table().splitlines() if "Long-tail" in row]
    assert len(rows) == 2 and "Long-tail BANKING77 (" in rows[0] and "Long-tail A desk (" in rows[1]
