"""The logit-adjusted loss: what it changes for a rare intent, that it changes nothing where the intents are equally
common, and that fine-tuning with it learns."""

from pathlib import Path

import pandas as pd
import torch

from supportflow.classifier.fine_tune import adjusted_cross_entropy, fine_tune, log_shares
from supportflow.classifier.predict import predict_outputs
from supportflow.classifier.splits import check_training_data
from supportflow.settings import TrainingProfile
from tests.classifier.conftest import TINY_PROFILE, tiny_rows


def test_log_shares_are_each_intents_share_of_the_training_messages() -> None:
    shares = log_shares([0, 0, 0, 1, 2, 2, 2, 2], 4).exp()
    counts = torch.tensor([3, 1, 4, 1])  # an intent with no message counts one: no log of 0
    assert torch.allclose(shares, counts / counts.sum())


def test_with_equally_common_intents_it_is_plain_cross_entropy() -> None:
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    shift = log_shares(labels.tolist(), 3)
    plain = adjusted_cross_entropy(logits, labels, None, 0.1)
    assert torch.isclose(adjusted_cross_entropy(logits, labels, shift, 0.1), plain)


def test_a_rare_intents_message_pushes_its_logit_harder() -> None:
    shift = log_shares([0] * 50 + [1] * 2, 2)  # intent 1 is rare
    logits = torch.tensor([[0.0, 2.0]], requires_grad=True)  # a rare intent's message, already ranked first
    adjusted_cross_entropy(logits, torch.tensor([1]), shift, 0.0).backward()
    adjusted = -logits.grad[0, 1].item()
    logits.grad = None
    adjusted_cross_entropy(logits, torch.tensor([1]), None, 0.0).backward()
    plain = -logits.grad[0, 1].item()
    assert adjusted > 3 * plain > 0  # plain cross-entropy has almost nothing left to learn from it


def test_fine_tuning_with_the_logit_adjusted_loss_learns_the_intents(tiny_base: Path, tmp_path: Path) -> None:
    rows = tiny_rows().rename(columns={"category": "intent"})[["text", "intent"]]
    intents = sorted(rows["intent"].unique())
    counts = {intent: 6 if i == 0 else 40 for i, intent in enumerate(intents)}  # the first intent is rare
    train = pd.concat(rows[rows["intent"] == intent].sample(n=n, random_state=0) for intent, n in counts.items())
    held_out = rows.drop(index=train.index).groupby("intent", group_keys=False).sample(n=10, random_state=0)
    splits = check_training_data(train, held_out, held_out, tuple(intents), 2, "tiny desk")
    tuned = fine_tune(str(tiny_base), splits, TrainingProfile(**TINY_PROFILE, logit_adjustment=1.0), 1, tmp_path / "model")
    from transformers import AutoTokenizer, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification.from_pretrained(str(tuned.model_dir))
    outputs = predict_outputs(model, AutoTokenizer.from_pretrained(str(tuned.model_dir)), held_out["text"].tolist(), 32)
    predicted = pd.Series(outputs.logits.argmax(axis=1)).map(dict(enumerate(splits.labels))).values
    assert (predicted == held_out["intent"].values).mean() > 1.5 / len(intents)  # well above chance on unseen messages
    assert tuned.train_loss > 0
