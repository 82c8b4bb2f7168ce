"""DMD's fine-tuned text encoder (`method.text_encoder=bert`, the paper's DMD* rows): BERT on the MMSA pickles'
`text_bert` token rows.

As the official code (docs/fidelity.md#dmd-bert): BERT (`method.bert_path`, default bert-base-uncased) runs
on (input ids, attention mask, segment ids) and its last hidden states [B, L, H] are the text features that
the text dropout and the text Conv1d projection then take, exactly where the frozen features go otherwise;
BERT is trained with the rest (its own optimizer group: `method.bert_lr`, `method.bert_weight_decay`).

Weights come only from disk: a local folder (save_pretrained / a downloaded snapshot) or the user's Hugging
Face cache. Nothing is downloaded at run time (`local_files_only`); a missing model is a one-line error that
says how to get it. `transformers` is the optional extra `pip install 'pkd-harness[bert]'`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from harness.schema import ConfigError

TOKEN_ROWS = ("input_ids", "attention_mask", "segment_ids")  # text_bert's rows, in the pickles' order
TOKEN_DIM = len(TOKEN_ROWS)  # the text modality's feature dim when the task delivers tokens ([N, L, 3])


def _transformers():
    # transformers imports torchvision when it is installed (its image utilities, even for BertModel), and PyPI's
    # torchvision does not import beside the CPU build of torch that setup.sh installs: import it the way
    # `harness extract` does first (harness/extract/backbones.py), a no-op where the pair matches or it is absent
    try:
        from harness.extract.backbones import import_torchvision
        import_torchvision()
    except ImportError:
        pass  # no torchvision: transformers does not try it either
    try:
        import transformers
    except ImportError:
        raise ConfigError("method.text_encoder=bert needs the `transformers` package: pip install "
                          "'pkd-harness[bert]' (or pip install transformers)") from None
    return transformers


def missing_model_message(path: str) -> str:
    return (f"method.bert_path={path!r}: no BERT model there (neither a local folder with config.json and weights "
            f"nor a model in the Hugging Face cache; the harness never downloads). Get it once with "
            f"`hf download {path}` (older huggingface_hub: `huggingface-cli download {path}`), or set "
            f"method.bert_path to a local folder written by save_pretrained")


def bert_config(path: str):
    """The model's config, from the folder or the HF cache only; ConfigError naming the path and the fix."""
    transformers = _transformers()
    local = Path(path).expanduser()
    source = str(local) if local.exists() else path
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        raise ConfigError(missing_model_message(path)) from None
    if getattr(config, "model_type", None) != "bert":
        raise ConfigError(f"method.bert_path={path!r} holds a {getattr(config, 'model_type', '?')!r} model; "
                          f"method.text_encoder=bert needs a BERT (the official DMD uses bert-base-uncased)")
    return config


class BertTextEncoder(nn.Module):
    """tokens [B, L, 3] (ids, mask, segments per step, as float32 like every task input) -> BERT's last hidden
    states [B, L, H]. No pooler: the official code reads the hidden states only."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.hidden_size = int(bert.config.hidden_size)
        self.vocab_size = int(bert.config.vocab_size)

    @classmethod
    def from_path(cls, path: str) -> "BertTextEncoder":
        transformers = _transformers()
        config = bert_config(path)
        local = Path(path).expanduser()
        source = str(local) if local.exists() else path
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # "pooler weights not used": we build no pooler on purpose
        try:
            bert = transformers.BertModel.from_pretrained(source, config=config, add_pooling_layer=False,
                                                          local_files_only=True, dtype=torch.float32)
        except OSError:
            raise ConfigError(missing_model_message(path)) from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        return cls(bert)

    @classmethod
    def tiny_random(cls) -> "BertTextEncoder":
        """method.bert_init=random_tiny: a 1-layer, 16-wide BERT with bert-base's vocabulary and random weights,
        built in code (nothing read or downloaded): the recipes' smoke runs of the DMD* arm, never a result."""
        transformers = _transformers()
        config = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=512)
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config) -> "BertTextEncoder":
        """A randomly initialised BERT of this config (tests and the step-time benchmark: nothing on disk)."""
        return cls(_transformers().BertModel(config, add_pooling_layer=False))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask, segments = tokens.unbind(-1)
        out = self.bert(input_ids=ids.long(), attention_mask=mask.long(), token_type_ids=segments.long())
        return out.last_hidden_state
