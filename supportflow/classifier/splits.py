"""The labelled texts a classifier is made from, checked before any compute is spent on them.

Kept apart from fine-tuning, so that what only reads or checks a snapshot's splits (a resumed training, the
benchmarks' bookkeeping) needs pandas, not torch.
"""

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from supportflow.errors import TrainingDataError


@dataclass(frozen=True)
class LabelledSplits:
    """Texts and intents per split, and the label map the model is trained with."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    left_out: dict[str, int] = field(default_factory=dict)  # intent -> its training examples, too few to learn

    def label_ids(self, split: str) -> list[int]:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[intent] for intent in getattr(self, split)["intent"]]


def check_training_data(
    train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame, catalogue: tuple[str, ...], min_examples: int, where: str
) -> LabelledSplits:
    """Refuse, with the reason, any snapshot that cannot give a trustworthy classifier.

    An intent with fewer than `min_examples` training examples is left out (from every split, so it is neither learned nor
    scored) rather than refused: one rare intent must not stop a desk's model. The validation report has already named it.
    """
    splits = {"train": train, "validation": validation, "test": test}
    for name, frame in splits.items():
        if frame["intent"].isna().any() or frame["text"].isna().any():
            raise TrainingDataError(f"{where}: the {name} split has rows without text or intent; re-run validate")
    known = set(catalogue)
    for name, frame in splits.items():
        unknown = sorted(set(frame["intent"]) - known)
        if unknown:
            raise TrainingDataError(
                f"{where}: the {name} split has intents outside the catalogue: {', '.join(unknown[:10])}"
                f"{' ...' if len(unknown) > 10 else ''}; add them to the workspace's intent catalogue (intents.yaml) or fix the labels"
            )
    left_out = {intent: n for intent, n in sorted(Counter(train["intent"]).items()) if n < min_examples}
    thin = f" (left out with fewer than {min_examples} training examples: {_named(left_out)})" if left_out else ""
    splits = {name: frame[~frame["intent"].isin(left_out)] for name, frame in splits.items()}
    for name, frame in splits.items():
        if frame.empty:
            raise TrainingDataError(f"{where}: the {name} split is empty{thin}; the snapshot has nothing to train or measure on")
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    counts = Counter(train["intent"])
    if len(counts) < 2:
        single = next(iter(counts))
        raise TrainingDataError(f"{where}: the training split has a single intent ({single}){thin}; a classifier needs at least two")
    for name in ("validation", "test"):
        unseen = sorted(set(splits[name]["intent"]) - set(counts))
        if unseen:
            raise TrainingDataError(
                f"{where}: intents in the {name} split with no training example: {', '.join(unseen[:10])}; "
                "each needs more labelled tickets so that every split holds some"
            )
    return LabelledSplits(
        train=train[["text", "intent"]].reset_index(drop=True),
        validation=validation[["text", "intent"]].reset_index(drop=True),
        test=test[["text", "intent"]].reset_index(drop=True),
        labels=sorted(counts),
        left_out=left_out,
    )


def _named(counts: dict[str, int], limit: int = 10) -> str:
    named = ", ".join(f"{intent} ({n})" for intent, n in list(counts.items())[:limit])
    return named + (f" and {len(counts) - limit} more" if len(counts) > limit else "")
