"""build_model (a model from a config's `model` section) and parameter_count."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch.nn as nn

from .base import MultiTaskModel
from .competitors import ESMMModel, MMoEModel, PLEModel, SharedBottomModel
from .kinds import MODEL_KINDS, PAPER_NAMES, PRIVATE_EMBED_KINDS, RUN_ORDER
from .paper import LayerShareModel, NCSModel, SingleTaskModel


_KINDS = {"connection": NCSModel, "layer": LayerShareModel, "single": SingleTaskModel,
          "shared_bottom": SharedBottomModel, "mmoe": MMoEModel, "ple": PLEModel, "esmm": ESMMModel}
assert set(_KINDS) == set(MODEL_KINDS) == set(RUN_ORDER) == set(PAPER_NAMES)


def build_model(kind: str, fields, tasks: Sequence[str], model_cfg: dict, backend: str = "auto") -> MultiTaskModel:
    """A model from the `model` section of a resolved config (missing keys take their defaults)."""
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {MODEL_KINDS}, got {kind!r}")
    kw: Dict[str, Any] = dict(
        pooling=model_cfg.get("pooling", "mean"), pad_included=model_cfg.get("pad_included", False),
        embedding_init_std=model_cfg.get("embedding_init_std", 0.05),
    )
    if kind in PRIVATE_EMBED_KINDS:
        kw["task_embed_dim"] = int(model_cfg.get("task_embed_dim", 0) or 0)
    if kind == "mmoe":
        kw["experts"] = model_cfg.get("experts")
    if kind == "ple":
        kw.update(shared_experts=model_cfg.get("shared_experts", 1), task_experts=model_cfg.get("task_experts", 1),
                  levels=model_cfg.get("ple_levels", 1))
    return _KINDS[kind](fields, tasks, model_cfg["embed_dim"], model_cfg["hidden"], backend=backend, **kw)


def parameter_count(model: nn.Module) -> Dict[str, int]:
    """{"embedding": rows x width of every table, "dense": every other parameter, "total"}."""
    emb = sum(p.numel() for p in model.embedding_parameters())
    dense = sum(p.numel() for p in model.dense_parameters())
    return {"embedding": int(emb), "dense": int(dense), "total": int(emb + dense)}
