"""The supervised contrastive loss: what it rewards, and that fine-tuning with it still learns the intents."""

from pathlib import Path

import pandas as pd
import torch

from supportflow.classifier.fine_tune import fine_tune, supervised_contrastive_loss
from supportflow.classifier.predict import predict_outputs
from supportflow.classifier.splits import check_training_data
from supportflow.settings import TrainingProfile
from tests.classifier.conftest import TINY_PROFILE, tiny_rows


def test_tight_and_well_apart_intents_cost_less_than_mixed_ones() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.05, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]])
    assert supervised_contrastive_loss(apart, labels).item() < 0.1
    assert supervised_contrastive_loss(mixed, labels).item() > 1.0


def test_only_the_direction_counts_not_the_length() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    embeddings = torch.randn(5, 8)
    assert torch.isclose(supervised_contrastive_loss(embeddings, labels), supervised_contrastive_loss(3 * embeddings, labels))


def test_a_batch_without_a_same_intent_pair_costs_nothing() -> None:
    embeddings = torch.randn(3, 8, requires_grad=True)
    loss = supervised_contrastive_loss(embeddings, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable: the Trainer calls backward on every batch
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


def test_its_gradient_pulls_an_intent_together() -> None:
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    supervised_contrastive_loss(embeddings, torch.tensor([0, 0, 1])).backward()
    step = -embeddings.grad
    assert step[0, 1] > 0 and step[1, 0] > 0  # each of the pair turns towards the other


def test_fine_tuning_with_the_contrastive_loss_learns_the_intents(tiny_base: Path, tmp_path: Path) -> None:
    rows = tiny_rows().rename(columns={"category": "intent"})[["text", "intent"]]
    train = rows.groupby("intent", group_keys=False).sample(n=40, random_state=0)
    held_out = rows.drop(index=train.index).groupby("intent", group_keys=False).sample(n=10, random_state=0)
    splits = check_training_data(train, held_out, held_out, tuple(sorted(rows["intent"].unique())), 2, "tiny desk")
    profile = TrainingProfile(**TINY_PROFILE, contrastive_weight=2.0)
    tuned = fine_tune(str(tiny_base), splits, profile, 1, tmp_path / "model")
    from transformers import AutoTokenizer, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification.from_pretrained(str(tuned.model_dir))
    outputs = predict_outputs(model, AutoTokenizer.from_pretrained(str(tuned.model_dir)), held_out["text"].tolist(), 32)
    accuracy = (pd.Series(outputs.logits.argmax(axis=1)).map(dict(enumerate(splits.labels))).values == held_out["intent"].values).mean()
    assert accuracy > 1.5 / len(splits.labels)  # well above chance on unseen messages
    assert tuned.train_loss > 0
