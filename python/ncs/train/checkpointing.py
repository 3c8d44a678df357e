"""A trainer's checkpoints: save, restore, the warmup snapshot (init) and rewind to it.

    ck = TrainerCheckpoints(kind, ckpt_dir, model, opt, balancer, device, rewind_scope, log)
    ck.save(pos, mask_hist)             # <kind>.safetensors (the previous one kept as .prev)
    pos, mask_hist = ck.restore()       # or None when there is no checkpoint
    ck.save_init()                      # <kind>_init.safetensors: every parameter + optimizer state
    ck.rewind()                         # back to init, bit for bit (stages.rewind: all | mlp)

The file format is checkpoint.py's (safetensors + one JSON document, CRC-checked).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .checkpoint import has_checkpoint, load_latest, load_tensors, rng_state, save_tensors, set_rng_state
from .position import Position

MaskHistory = Dict[str, List[Dict[str, torch.Tensor]]]   # task -> [M_0, M_1, ...], {layer: packed}


class TrainerCheckpoints:
    def __init__(self, kind: str, ckpt_dir: str, model: torch.nn.Module, opt, balancer, device: torch.device,
                 rewind_scope: str, log: Callable[[str], None]):
        self.kind, self.ckpt_dir = kind, ckpt_dir
        self.model, self.opt, self.balancer, self.device = model, opt, balancer, device
        self.rewind_scope = rewind_scope   # stages.rewind
        self.log = log
        self.init: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None

    @property
    def path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}.safetensors")

    @property
    def init_path(self) -> str:
        return os.path.join(self.ckpt_dir, f"{self.kind}_init.safetensors")

    def model_tensors(self) -> Dict[str, torch.Tensor]:
        return {f"model/{k}": v for k, v in self.model.state_dict().items()}

    def save(self, pos: Position, mask_hist: MaskHistory) -> None:
        tensors = self.model_tensors()
        ot, od = self.opt.flatten()
        tensors.update(ot)
        bt, bd = self.balancer.state_tensors()
        tensors.update(bt)
        for task, hist in mask_hist.items():
            for k, masks in enumerate(hist):
                for layer, packed in masks.items():
                    tensors[f"maskhist/{task}/{k}/{layer}"] = packed
        save_tensors(self.path, tensors, {"kind": self.kind, "pos": pos.to_json(), "optim": od, "rng": rng_state(),
                                          "balance": bd}, keep_previous=True)

    def restore(self) -> Optional[Tuple[Position, MaskHistory]]:
        """Load the last checkpoint into the model, optimizers, balancer and the RNG; returns
        (position, mask history), or None when there is no checkpoint."""
        if not has_checkpoint(self.path):
            return None
        # loaded on the CPU: load_state_dict copies weights to the model's device, and the torch
        # optimizers move their state to each parameter's device themselves, except MaskedAdam's
        # "step" counters, which stay on the CPU as in a fresh run (no device sync per step)
        tensors, doc = load_latest(self.path, log=self.log)  # damaged: the previous one
        if doc.get("kind") != self.kind:
            raise RuntimeError(f"{self.path}: checkpoint of model {doc.get('kind')!r}, expected {self.kind!r}")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        self.opt.load(tensors, doc["optim"])
        self.balancer.load(tensors, doc.get("balance"), self.device)
        pos = Position.from_json(doc["pos"])
        hist: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
        for key, v in tensors.items():
            if key.startswith("maskhist/"):
                _, task, k, layer = key.split("/", 3)
                hist.setdefault(task, {}).setdefault(int(k), {})[layer] = v.to(self.device)
        mask_hist = {t: [h[k] for k in sorted(h)] for t, h in hist.items()}
        set_rng_state(doc["rng"])
        if os.path.isfile(self.init_path):
            self.init = load_tensors(self.init_path)
        return pos, mask_hist

    def save_init(self) -> None:
        """Snapshot every parameter and both optimizers' state: the rewind target (sNET_init)."""
        tensors = {f"model/{k}": v.detach().clone() for k, v in self.model.named_parameters()}
        ot, od = self.opt.flatten()
        tensors.update({k: v.clone() for k, v in ot.items()})
        doc = {"optim": od}
        save_tensors(self.init_path, tensors, doc)
        self.init = (tensors, {"format": "ncs-checkpoint", "version": 1, **doc})

    @torch.no_grad()
    def rewind(self) -> None:
        """Weights and optimizer state back to init, bit for bit; masks are left as they are.
        stages.rewind = mlp: only the dense parameters (MLP, heads) and their optimizer; the
        embeddings and their SparseAdam state go on from where they are."""
        if self.init is None:
            raise RuntimeError("rewind: no init snapshot (warmup has not finished)")
        tensors, doc = self.init
        if self.rewind_scope == "mlp":
            emb = {id(p) for p in self.model.embedding_parameters()}
            for name, p in self.model.named_parameters():
                if id(p) not in emb:
                    p.copy_(tensors[f"model/{name}"])
            self.opt.load_dense(tensors, doc["optim"])
            return
        for name, p in self.model.named_parameters():
            p.copy_(tensors[f"model/{name}"])
        self.opt.load(tensors, doc["optim"])
