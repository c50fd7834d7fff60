"""The labelled messages a model benchmark trains and scores on: BANKING77 by default, or any other set.

The model benchmarks (`intent.py`, `long_tail.py`, `open_intent.py`) check claims about desks the project has not
seen, so each reads any labelled train and test set the same way: `--data DIR` (a `train` and a `test` file in it,
CSV or JSON Lines) or `--train FILE --test FILE`, a text column and a label column, and names its result file after
the data (`intent_<name>.json`). Labels are made intent names the way `supportflow init` makes them (a category path
"Account/Login" becomes "Account - Login"), so the pipeline's path accepts them as a catalogue would.
"""

import argparse
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from supportflow.validate.catalogue import intent_key, usable_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT / "examples" / "banking77" / "data"
DEFAULT_TITLE = "BANKING77"
DEFAULT_NAME = DEFAULT_TITLE.lower()
LABEL_COLUMNS = ("intent", "category", "label")  # the first one a file has is its label, unless --intent-column says
READERS = {".csv": pd.read_csv, ".jsonl": lambda path: pd.read_json(path, lines=True)}


class DataError(SystemExit):
    """A data set the benchmark cannot read as labelled messages: the message says which file and why."""


@dataclass(frozen=True)
class LabelledData:
    name: str  # in the result file's name: [a-z0-9_-]
    title: str  # in the README's table
    train: pd.DataFrame  # text, intent
    test: pd.DataFrame  # text, intent
    source: str  # where it was read from
    dropped: int  # rows without a text or a label

    @property
    def intents(self) -> list[str]:
        return sorted(self.train["intent"].unique())

    def describe(self) -> dict[str, str | int]:
        """What a result file records about its data."""
        return {
            "name": self.name,
            "title": self.title,
            "source": self.source,
            "train": len(self.train),
            "test": len(self.test),
            "intents": len(self.intents),
            "rows_without_text_or_label": self.dropped,
        }

    def result_file(self, benchmark: str) -> Path:
        return RESULTS / f"{benchmark}_{self.name}.json"


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: BANKING77, examples/banking77/data)")
    group.add_argument("--data", type=Path, help="a folder with train.csv (or tickets.csv) and test.csv, or .jsonl")
    group.add_argument("--train", type=Path, help="the training messages, CSV or JSON Lines (with --test)")
    group.add_argument("--test", type=Path, help="the held-out messages the figures are measured on (with --train)")
    group.add_argument("--text-column", default="text")
    group.add_argument("--intent-column", help=f"the label column (default: the first of {', '.join(LABEL_COLUMNS)})")
    group.add_argument("--name", help="the data's name in the result file and the README (default: the folder's)")


def load_data(args: argparse.Namespace) -> LabelledData:
    """The data the command line names, or BANKING77."""
    if (args.train is None) != (args.test is None):
        raise DataError("--train and --test go together: the messages to learn from and the ones to measure on")
    if args.train is not None and args.data is not None:
        raise DataError("give either --data DIR or --train FILE --test FILE")
    if args.train is None and args.data is None:
        return banking77() if args.name is None else replace(banking77(), name=_slug(args.name), title=args.name)
    if args.train is not None:
        train_file, test_file = args.train, args.test
    else:
        train_file, test_file = (_split_file(args.data, split) for split in ("train", "test"))
    name = args.name or _folder_name(train_file)
    return load_files(train_file, test_file, name, args.text_column, args.intent_column)


def banking77() -> LabelledData:
    """BANKING77's official training and test files, as the project keeps them."""
    return load_files(DEFAULT_DATA / "train.csv", DEFAULT_DATA / "test.csv", DEFAULT_TITLE)


def load_files(train_file: Path, test_file: Path, name: str, text_column: str = "text", intent_column: str | None = None) -> LabelledData:
    """Every test label must be one some training message carries: a model cannot learn an intent it never saw, and
    scoring its messages would measure nothing about the model."""
    train, dropped_train = read_messages(train_file, text_column, intent_column)
    test, dropped_test = read_messages(test_file, text_column, intent_column)
    unseen = sorted(set(test["intent"]) - set(train["intent"]))
    if unseen:
        raise DataError(
            f"{test_file}: {len(unseen)} labels no training message carries ({', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''}); "
            "drop their messages or add training examples"
        )
    source = " and ".join(_shown(path) for path in (train_file, test_file))
    return LabelledData(_slug(name), name, train, test, source, dropped_train + dropped_test)


def read_messages(path: Path, text_column: str, intent_column: str | None) -> tuple[pd.DataFrame, int]:
    """`path`'s messages as text and intent, and how many rows had no text or no label (left out)."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: not a CSV or JSON Lines file (by its suffix: {', '.join(READERS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame = reader(path)
    label = intent_column or next((column for column in LABEL_COLUMNS if column in frame.columns), None)
    columns = ", ".join(map(str, frame.columns))
    if text_column not in frame.columns:
        raise DataError(f"{path}: no text column {text_column!r}; its columns are {columns} (--text-column)")
    if label is None or label not in frame.columns:
        wanted = intent_column or " or ".join(LABEL_COLUMNS)
        raise DataError(f"{path}: no label column ({wanted}); its columns are {columns} (--intent-column)")
    messages = pd.DataFrame({"text": frame[text_column], "intent": frame[label]}).dropna()
    messages = messages.assign(text=messages["text"].astype(str), intent=messages["intent"].astype(str).str.strip())
    messages = messages[(messages["text"].str.strip() != "") & (messages["intent"] != "")]
    messages = messages.assign(intent=messages["intent"].map(usable_name)).reset_index(drop=True)
    _refuse_labels_one_catalogue_would_merge(path, messages["intent"].unique())
    return messages, len(frame) - len(messages)


def _refuse_labels_one_catalogue_would_merge(path: Path, intents: list[str]) -> None:
    """A catalogue reads "Card arrival" and `card_arrival` as one intent; a benchmark that kept them apart would
    measure a model the pipeline never trains."""
    seen: dict[str, str] = {}
    for intent in sorted(intents):
        other = seen.setdefault(intent_key(intent), intent)
        if other != intent:
            raise DataError(
                f"{path}: labels {other!r} and {intent!r} differ only in case, spacing, '_' or '-'; a desk's catalogue makes them one"
            )


SPLIT_FILES = {"train": ("train", "tickets"), "test": ("test",)}  # a desk's data folder keeps its export as tickets


def _split_file(folder: Path, split: str) -> Path:
    for stem in SPLIT_FILES[split]:
        for suffix in READERS:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    names = " or ".join(f"{stem}{suffix}" for stem in SPLIT_FILES[split] for suffix in READERS)
    raise DataError(f"{folder}: no {names} (or name the files: --train FILE --test FILE)")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "data"


def _shown(path: Path) -> str:
    """A path inside the project as the project sees it (the result file is committed), any other as given."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def _folder_name(path: Path) -> str:
    """`examples/saas/data/tickets.csv` is the data of `saas`: a folder called data names nothing."""
    folder = path.resolve().parent
    return folder.parent.name if folder.name == "data" else folder.name
