"""The paper's three models and the usual MTL competitors, all on the fused ncs_kernels layers.

Every model embeds the F categorical fields (pooled multi-valued fields), crosses them (the
F x F inner products then the flat embeddings: width F*F + F*d, fused into the first layer by
nk.CrossMaskedLinear) and runs MLP towers with one sigmoid head per task (heads return logits).

    connection  NCSModel: ONE shared tower whose weights carry one bit-packed mask per task
                (neuron-connection level sharing, Algorithm 1); task=None runs every weight.
    layer       LayerShareModel: shared embeddings, a separate tower per task (Layer_Share).
    single      SingleTaskModel: a separate network, embeddings included, per task (Single_Task).
    shared_bottom  SharedBottomModel: shared embeddings and bottom (all hidden layers but the
                last), a tower (the last hidden layer + head) per task (Caruana 1997).
    mmoe        MMoEModel: E experts (each a bottom as above), a softmax gate per task over the
                experts, a tower per task (Ma et al., KDD 2018).
    ple         PLEModel: Progressive Layered Extraction (Tang et al., RecSys 2020): CGC levels of
                shared experts and task-specific experts; each task's gate mixes its own and
                the shared experts, a shared gate (between levels) mixes all of them.
    esmm        ESMMModel: shared embeddings, a tower per task (as layer); trained with the ESMM
                loss over all impressions (losses.esmm_loss): pCTCVR = pCTR * pCVR (Ma et al.,
                SIGIR 2018). The first task is the click task, every later one is post-click.

The first layer of every bottom / expert / tower that sees the embeddings is
nk.CrossMaskedLinear (the F x F inner products and the flat embeddings, width F*F + F*d).
Budgets: every model uses the same widths `model.hidden`: a Layer_Share tower, a Single_Task
tower, the shared-bottom bottom + tower, an MMoE / PLE expert + tower all have exactly these
layer widths; parameter_count() gives the totals (docs/TRAINER.md lists them for the shipped
configs).

Task-specific embeddings (model.task_embed_dim = d_p > 0; layer and connection models only, as
in STEM, Su et al., AAAI 2024): each task also owns a private table of width d_p per field; the
task's forward runs on [shared (d) | private_t (d_p)] per field, i.e. [B, F, d + d_p], so the
cross layer widens to F*F + F*(d + d_p). A private table is only in its task's forward, so it
gets only that task's gradient; the shared table gets every task's.

Common interface:
    model(ids, task)       -> logits [B] of that task (connection: under the task's mask)
    model(ids)             -> {task: logits [B]} (connection: every weight, the warmup network)
    model.predict(ids)     -> {task: logits [B]}, each task as it is served (its mask applied)
    model.embedding_parameters() / model.dense_parameters()   (SparseAdam / MaskedAdam groups)

Modules: kinds (MODEL_KINDS and the names; no torch), layers (FieldEmbeddings, Tower, Stack,
heads, gates, check_ids), base (MultiTaskModel), paper (connection, layer, single), competitors
(shared_bottom, mmoe, ple, esmm), build (build_model, parameter_count). Every name is importable
from ncs.models.
"""
from __future__ import annotations

from .base import MultiTaskModel
from .build import _KINDS, build_model, parameter_count  # noqa: F401  (the private names stay importable)
from .competitors import (ESMMModel, MMoEModel, PLEModel, SharedBottomModel, _chunks, _split_bottom,  # noqa: F401
                          _TowersModel)
from .kinds import MODEL_KINDS, PAPER_KINDS, PAPER_NAMES, PRIVATE_EMBED_KINDS, RUN_ORDER
from .layers import FieldEmbeddings, Stack, Tower, _gate, _head, _vocab_sizes, check_ids  # noqa: F401
from .paper import LayerShareModel, NCSModel, SingleTaskModel

__all__ = [
    "MODEL_KINDS", "PAPER_KINDS", "PAPER_NAMES", "PRIVATE_EMBED_KINDS", "RUN_ORDER",
    "FieldEmbeddings", "Tower", "Stack", "check_ids", "MultiTaskModel",
    "NCSModel", "LayerShareModel", "SingleTaskModel",
    "SharedBottomModel", "MMoEModel", "PLEModel", "ESMMModel",
    "build_model", "parameter_count",
]
