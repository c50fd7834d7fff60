"""Shared fixtures for the classifier tests: a tiny DistilBERT, a tiny BANKING77 lake, MLflow in a temp dir.

The tiny base model is built from a config with a WordPiece tokenizer trained here on BANKING77 rows,
so the tests train a real DistilBertForSequenceClassification in seconds and never need the hub.
"""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

# Before any Hugging Face library is imported: nothing may wait on a network.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / "examples" / "banking77" / "data"
# Eight intents that a tiny model can tell apart after a few seconds of training.
TINY_INTENTS = [
    "age_limit",
    "apple_pay_or_google_pay",
    "atm_support",
    "card_arrival",
    "change_pin",
    "exchange_rate",
    "lost_or_stolen_phone",
    "terminate_account",
]
TINY_PROFILE = {"epochs": 12, "learning_rate": 3e-3, "batch_size": 32, "max_length": 32, "warmup_ratio": 0.1, "seed": 13}


def tiny_rows() -> pd.DataFrame:
    frame = pd.concat([pd.read_csv(BANKING77 / "train.csv"), pd.read_csv(BANKING77 / "test.csv")], ignore_index=True)
    return frame[frame["category"].isin(TINY_INTENTS)].reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide DistilBERT with a WordPiece vocabulary learnt from a few hundred BANKING77 rows."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny-distilbert"), tiny_rows().sample(n=600, random_state=0)["text"].tolist())


def build_tiny_base(folder: Path, texts: list[str]) -> Path:
    """An untrained tiny DistilBERT whose WordPiece vocabulary is learnt from `texts` (a desk's own words)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DistilBertConfig, DistilBertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )
    config = DistilBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=64,
        dim=64,
        n_layers=2,
        n_heads=2,
        hidden_dim=128,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
    )
    DistilBertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_tiny_classifier(folder: Path, base: Path, target_precision: float = 0.9) -> tuple[object, object]:
    """A trained, calibrated and ONNX-exported tiny classifier of TINY_INTENTS in `folder`, without lake or MLflow;
    returns (BuiltClassifier, LabelledSplits). 15 test and 15 validation messages per intent."""
    from supportflow.classifier.base_weights import BaseModelChoice
    from supportflow.classifier.build import evaluate_classifier
    from supportflow.classifier.fine_tune import fine_tune
    from supportflow.classifier.onnx_export import export_onnx
    from supportflow.classifier.splits import check_training_data
    from supportflow.settings import TrainingProfile

    rows = tiny_rows().rename(columns={"category": "intent"}).sample(frac=1.0, random_state=0)
    test = rows.groupby("intent", group_keys=False).head(15)
    validation = rows.drop(test.index).groupby("intent", group_keys=False).head(15)
    train = rows.drop(test.index).drop(validation.index)
    splits = check_training_data(train, validation, test, tuple(TINY_INTENTS), 2, "tiny")
    choice = BaseModelChoice(name="tiny", location=str(base), source="local")
    profile = TrainingProfile(**TINY_PROFILE)
    tuned = fine_tune(str(base), splits, profile, 1, folder)
    built = evaluate_classifier(tuned, splits, choice, profile, target_precision, "snap-tiny", ood_quantile=0.95)
    export_onnx(folder)
    return built, splits


@contextmanager
def classifier_settings(folder: Path, base: Path) -> Iterator[Path]:
    """Settings for a test: its own lake, models folder and MLflow store; the tiny base; a tiny profile."""
    from supportflow.settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTFLOW_LAKE_URL", str(folder / "lake"))
        patch.setenv("SUPPORTFLOW_GX_ROOT", str(folder / "gx"))
        patch.setenv("SUPPORTFLOW_CONTRACTS_DIR", str(ROOT / "data_contracts"))
        patch.setenv("SUPPORTFLOW_MODELS_DIR", str(folder / "models"))
        patch.setenv("SUPPORTFLOW_MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv("SUPPORTFLOW_MLFLOW_ARTIFACT_ROOT", str(folder / "mlartifacts"))
        patch.setenv("SUPPORTFLOW_BASE_MODEL", str(base))
        patch.setenv("SUPPORTFLOW_QUICK_PROFILE", json.dumps(TINY_PROFILE))
        # A tiny model reaches no 97% promise: at 90% it still routes some messages, which the serving tests need.
        patch.setenv("SUPPORTFLOW_TARGET_PRECISION", "0.9")
        patch.setenv("SUPPORTFLOW_MAX_WRONG_ANSWERS", "1")  # ...and it answers a tenth wrongly: no budget either
        patch.setenv("SUPPORTFLOW_PRECISION_CONFIDENCE", "0")  # ...and its few validation messages vouch for no 90%
        # One thread: a tiny model's many small ops stall on thread hand-offs when the cores are shared.
        patch.setenv("SUPPORTFLOW_TRAIN_THREADS", "1")
        get_settings.cache_clear()
        try:
            yield folder
        finally:
            get_settings.cache_clear()


@pytest.fixture
def classifier_env(tmp_path: Path, tiny_base: Path) -> Iterator[Path]:
    with classifier_settings(tmp_path, tiny_base) as folder:
        yield folder
