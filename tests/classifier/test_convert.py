"""The MiniLM -> DistilBERT conversion is exact, and a bad base model fails with a message that names it."""

import json
import shutil
from pathlib import Path

import pytest

from supportflow.errors import BaseModelError
from supportflow.settings import Settings


def test_offline_base_is_converted_minilm_with_identical_hidden_states(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel, DistilBertModel

    from supportflow.classifier.base_weights import MINILM_NAME, packaged_minilm, resolve_base_model

    choice = resolve_base_model(Settings(models_dir=tmp_path, base_model="distilbert-base-uncased"))
    assert choice.source == "converted" and choice.name == MINILM_NAME  # the hub is unreachable (HF_HUB_OFFLINE)
    converted = DistilBertModel.from_pretrained(choice.location).eval()
    config = converted.config
    assert (config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (384, 6, 12, 1536)
    assert (config.activation, config.max_position_embeddings, config.vocab_size) == ("gelu", 512, 30522)

    original = BertModel.from_pretrained(str(packaged_minilm())).eval()
    tokenizer = AutoTokenizer.from_pretrained(choice.location)
    texts = ["I am still waiting on my card?", "Why was I charged a fee for a transfer from abroad, it never said so"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}  # DistilBERT takes no token types
    with torch.inference_mode():
        expected = original(**batch).last_hidden_state
        actual = converted(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert torch.allclose(actual[mask], expected[mask], atol=1e-4)
    # A second resolution reuses the converted folder instead of converting again.
    assert resolve_base_model(Settings(models_dir=tmp_path)).location == choice.location


def test_trainings_starting_together_both_get_the_converted_base(tmp_path: Path) -> None:
    """Two processes converting the same checkpoint into the same folder (two benchmarks started together) used to
    share one staging folder, and one emptied it while the other was writing."""
    from concurrent.futures import ThreadPoolExecutor

    from supportflow.classifier.base_weights import packaged_minilm
    from supportflow.classifier.convert import convert_bert_to_distilbert

    target = tmp_path / "base" / "minilm-distilbert"
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(lambda _: convert_bert_to_distilbert(packaged_minilm(), target), range(3)))
    assert done == [target] * 3
    assert (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    assert [path.name for path in target.parent.iterdir()] == [target.name]  # no staging folder left behind


def _minilm_copy(tmp_path: Path) -> Path:
    from supportflow.classifier.base_weights import packaged_minilm

    source = packaged_minilm()
    copy = tmp_path / "bert"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, copy / name)
    return copy


def test_corrupt_base_model_weights_name_the_file(tmp_path: Path) -> None:
    from supportflow.classifier.base_weights import resolve_base_model

    bert = _minilm_copy(tmp_path)
    (bert / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(BaseModelError, match=r"model\.safetensors: cannot be read .*corrupt"):
        resolve_base_model(Settings(models_dir=tmp_path / "models", base_model=str(bert)))


def test_missing_base_model_weights_and_folder(tmp_path: Path) -> None:
    from supportflow.classifier.base_weights import resolve_base_model

    bert = _minilm_copy(tmp_path)
    with pytest.raises(BaseModelError, match=r"model\.safetensors: missing"):
        resolve_base_model(Settings(models_dir=tmp_path / "models", base_model=str(bert)))
    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base_model(Settings(models_dir=tmp_path / "models", base_model=str(tmp_path / "nowhere")))
    (bert / "config.json").write_text("{broken")
    with pytest.raises(BaseModelError, match=r"config\.json: not valid JSON"):
        resolve_base_model(Settings(models_dir=tmp_path / "models", base_model=str(bert)))
    (bert / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BaseModelError, match="model_type 'gpt2'"):
        resolve_base_model(Settings(models_dir=tmp_path / "models", base_model=str(bert)))


def test_corrupt_distilbert_checkpoint_fails_when_loaded(tiny_base: Path, tmp_path: Path) -> None:
    from supportflow.classifier.fine_tune import load_base

    broken = tmp_path / "broken"
    shutil.copytree(tiny_base, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BaseModelError, match=r"cannot be loaded .*missing or corrupt"):
        load_base(str(broken), ["a", "b"])
