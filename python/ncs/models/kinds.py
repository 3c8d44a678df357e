"""The model kinds and their names (no torch import): the one owner of these constants."""
from __future__ import annotations

# The one list of model kinds (config.py imports it). The paper's three come first.
MODEL_KINDS = ("single", "layer", "connection", "shared_bottom", "mmoe", "ple", "esmm")
PAPER_KINDS = ("single", "layer", "connection")
# the order in which a run trains them (and tables print them): the baselines first, the
# paper's model last, so that a demo prints the baselines as they finish
RUN_ORDER = ("single", "layer", "shared_bottom", "mmoe", "ple", "esmm", "connection")
PAPER_NAMES = {"single": "Single_Task", "layer": "Layer_Share", "connection": "Connection_Share",
               "shared_bottom": "Shared_Bottom", "mmoe": "MMoE", "ple": "PLE", "esmm": "ESMM"}
# kinds that accept model.task_embed_dim > 0 (the others ignore it)
PRIVATE_EMBED_KINDS = ("layer", "connection")
