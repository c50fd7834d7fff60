"""Fine-tune DistilBertForSequenceClassification on a training snapshot with the transformers Trainer.

Texts are tokenised once through `datasets` and padded per batch (support messages are short, so
dynamic padding is most of the speed on a CPU). The label map is the sorted set of training intents, which
`splits.py` has checked against the intent catalogue before any compute is spent.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from supportflow.classifier.artifacts import EMBEDDING_POOLING
from supportflow.classifier.predict import pooled_embedding
from supportflow.classifier.splits import LabelledSplits
from supportflow.errors import BaseModelError, TrainingDeviceError
from supportflow.progress import Step
from supportflow.settings import TrainingProfile


@dataclass(frozen=True)
class FineTuned:
    model_dir: Path
    train_seconds: float
    train_loss: float


def load_base(location: str, labels: list[str]) -> tuple[DistilBertForSequenceClassification, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, model_input_names=["input_ids", "attention_mask"])
        model = DistilBertForSequenceClassification.from_pretrained(
            location,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except Exception as error:  # transformers raises OSError, ValueError, safetensors errors, ...
        raise BaseModelError(
            f"the base model {location} cannot be loaded ({type(error).__name__}: {error}); it is missing or corrupt"
        ) from error
    return model, tokenizer


def tokenized(frame: pd.DataFrame, label_ids: list[int], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    dataset = Dataset.from_dict({"text": frame["text"].tolist(), "labels": label_ids})
    encoded = dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    )
    return encoded.map(lambda row: {"length": len(row["input_ids"])})


def layerwise_optimizer(model: DistilBertForSequenceClassification, profile: TrainingProfile) -> torch.optim.Optimizer:
    """AdamW where each lower encoder layer learns a bit slower: the pretrained bottom moves least."""
    n_layers = model.config.n_layers
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("distilbert.embeddings"):
            depth = n_layers + 1
        elif name.startswith("distilbert.transformer.layer."):
            depth = n_layers - int(name.split(".")[3])
        else:
            depth = 0  # the classification head
        decay = 0.0 if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else profile.weight_decay
        groups.setdefault((profile.learning_rate * profile.layer_lr_decay**depth, decay), []).append(parameter)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()], lr=profile.learning_rate)


# The supervised contrastive loss's temperature (Zhou et al. 2021's setting for intent-sized batches).
CONTRASTIVE_TEMPERATURE = 0.3


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each message, how unlikely its same-intent batch mates are among all its batch mates by cosine similarity
    (Khosla et al., NeurIPS 2020; for unknown-intent detection, Zeng et al. 2021 and Zhou et al., EMNLP 2021).
    Cross-entropy alone only needs the intents linearly separable; the unknown-intent detector measures distances in
    this space, and tight, well-apart intents leave room between them for the unknown ones. The other intents in the
    denominator keep the space from collapsing, which a pull-and-margin loss allows. A message without a same-intent
    batch mate adds nothing."""
    unit = F.normalize(embeddings, dim=-1)
    others = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    similarity = (unit @ unit.T / CONTRASTIVE_TEMPERATURE).masked_fill(~others, float("-inf"))
    log_share = similarity - torch.logsumexp(similarity, dim=-1, keepdim=True)
    positive = ((labels.unsqueeze(1) == labels.unsqueeze(0)) & others).float()
    return -((log_share.masked_fill(~others, 0.0) * positive).sum(-1) / positive.sum(-1).clamp(min=1.0)).mean()


def log_shares(label_ids: list[int], n_labels: int) -> torch.Tensor:
    """Each intent's log share of the training messages: what the logit-adjusted loss adds to the logits (Menon et
    al., "Long-tail learning via logit adjustment", ICLR 2021). A rare intent's logit is pushed down in training, so
    the head must score its messages higher to get them right, and learns them as if every intent were as common;
    the served logits are the plain ones."""
    counts = torch.bincount(torch.tensor(label_ids, dtype=torch.long), minlength=n_labels).clamp(min=1).double()
    return (counts / counts.sum()).log().float()


def adjusted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy on the logits plus `shift` (`logit_adjustment` times `log_shares`; None: plain)."""
    return F.cross_entropy(logits if shift is None else logits + shift.to(logits.device), labels, label_smoothing=label_smoothing)


class ProfileLossTrainer(Trainer):
    """The Trainer with the loss the profile asks for: cross-entropy (label-smoothed), on logits shifted by the intents'
    log shares where `logit_adjustment` is set, plus the supervised contrastive loss on the pooled embedding the
    detector reads where `contrastive_weight` is; `Trainer.compute_loss` is its documented extension point."""

    def __init__(
        self, *args: object, contrastive_weight: float, label_smoothing: float, logit_shift: torch.Tensor | None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)
        self.contrastive_weight = contrastive_weight
        self.label_smoothing = label_smoothing
        self.logit_shift = logit_shift

    def compute_loss(
        self, model: torch.nn.Module, inputs: dict, return_outputs: bool = False, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, object]:
        labels = inputs.pop("labels")
        outputs = model(**inputs, output_hidden_states=self.contrastive_weight > 0)
        loss = adjusted_cross_entropy(outputs.logits, labels, self.logit_shift, self.label_smoothing)
        if self.contrastive_weight > 0:
            loss = loss + self.contrastive_weight * supervised_contrastive_loss(
                pooled_embedding(outputs.hidden_states, inputs["attention_mask"], EMBEDDING_POOLING), labels
            )
        return (loss, outputs) if return_outputs else loss


class TrainingProgress(TrainerCallback):
    """Every optimiser step moves the bar; every logged loss shows beside it with the epoch, so a person sees
    that training learns, and how long it has left, while it runs."""

    def __init__(self) -> None:
        self.step: Step | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        self.step = Step("fine-tune", total=state.max_steps)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        if self.step is not None:
            self.step.advance(detail=f"epoch {state.epoch or 0:.2f}/{args.num_train_epochs:g}")

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict | None = None, **kwargs: object
    ) -> None:
        if self.step is not None and logs and "loss" in logs:
            self.step.describe(f"epoch {state.epoch or 0:.2f}/{args.num_train_epochs:g}, loss {logs['loss']:.3f}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        if self.step is not None:
            self.step.close()


def fine_tune(
    base_location: str, splits: LabelledSplits, profile: TrainingProfile, threads: int, output_dir: Path, device: str = "cpu"
) -> FineTuned:
    """Train, then save model and tokenizer to `output_dir` (replaced whole, never half-written). `device` "cuda"
    trains on the GPU; asked for on a machine without one, it is refused before any work rather than run on the CPU
    for hours unannounced."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingDeviceError("SUPPORTFLOW_TRAIN_DEVICE is cuda, but torch sees no CUDA GPU on this machine; set it to cpu")
    torch.set_num_threads(threads)
    torch.manual_seed(profile.seed)
    model, tokenizer = load_base(base_location, splits.labels)
    if profile.freeze_word_embeddings:
        model.distilbert.embeddings.word_embeddings.weight.requires_grad_(False)
    train_set = tokenized(splits.train, splits.label_ids("train"), tokenizer, profile.max_length)
    work = output_dir.with_name(output_dir.name + ".work")
    arguments = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=profile.epochs,
        learning_rate=profile.learning_rate,
        per_device_train_batch_size=profile.batch_size,
        warmup_steps=profile.warmup_ratio,
        weight_decay=profile.weight_decay,
        label_smoothing_factor=profile.label_smoothing,
        lr_scheduler_type="linear",
        # Batches of similar length: a random batch pads to ~47 tokens where the median message has 13.
        train_sampling_strategy="group_by_length",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        use_cpu=device == "cpu",
        seed=profile.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    parts = {
        "model": model,
        "args": arguments,
        "train_dataset": train_set,
        "data_collator": DataCollatorWithPadding(tokenizer),
        "processing_class": tokenizer,
        "optimizers": (layerwise_optimizer(model, profile), None),
        "callbacks": [TrainingProgress()],
    }
    if profile.contrastive_weight > 0 or profile.logit_adjustment > 0:
        shift = (
            profile.logit_adjustment * log_shares(splits.label_ids("train"), len(splits.labels)) if profile.logit_adjustment > 0 else None
        )
        trainer: Trainer = ProfileLossTrainer(
            **parts, contrastive_weight=profile.contrastive_weight, label_smoothing=profile.label_smoothing, logit_shift=shift
        )
    else:
        trainer = Trainer(**parts)
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    shutil.rmtree(work, ignore_errors=True)
    return FineTuned(model_dir=output_dir, train_seconds=seconds, train_loss=float(result.training_loss))
