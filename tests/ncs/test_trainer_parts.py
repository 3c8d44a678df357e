"""The parts of the trainer: Position (the checkpointed position) and EarlyStopper."""
import json

import pytest
import torch

from ncs.config import resolve_config
from ncs.train.early import EarlyStopper
from ncs.train.position import Position

# the untyped position dict the trainer checkpointed before Position existed (mid-masks, keys
# that were written only once set are absent)
OLD_POS = {"stage": "masks", "epoch": 1, "task_index": 1, "round": 2, "step": 57,
           "rounds": {"ctr": [{"task": "ctr", "round": 0, "density": 1.0}]}, "selected": {"ctr": 3},
           "curves": [{"stage": "warmup", "epoch": 0, "train_loss": 0.5}], "early": None,
           "seconds": {"warmup": 1.5}}


def test_position_reads_checkpoints_written_before_it_and_round_trips():
    pos = Position.from_json(json.loads(json.dumps(OLD_POS)))
    assert (pos.stage, pos.epoch, pos.task_index, pos.round, pos.step) == ("masks", 1, 1, 2, 57)
    assert pos.batch == 0 and pos.batch_loss == 0.0 and pos.round_losses == [] and pos.skipped_batches == 0
    doc = pos.to_json()
    assert {k: doc[k] for k in OLD_POS} == OLD_POS            # the same keys, the same values
    assert Position.from_json(json.loads(json.dumps(doc))) == pos
    newer = dict(doc, some_future_key=[1, 2])                 # a newer checkpoint: kept, written back
    assert Position.from_json(newer).to_json()["some_future_key"] == [1, 2]
    with pytest.raises(ValueError, match="stage"):
        Position.from_json({"epoch": 3})
    assert Position.start("connection").stage == "warmup" and Position.start("single").stage == "baseline"


def test_position_round_and_task_steps():
    pos = Position.start("connection")
    pos.round_losses.append(0.3)
    pos.epoch = 1
    pos.next_round(2)
    assert (pos.round, pos.epoch, pos.round_losses) == (3, 0, [])
    pos.next_task(0)
    assert (pos.task_index, pos.round, pos.epoch) == (1, 0, 0)
    pos.add_seconds("masks", 1.0)
    pos.add_seconds("masks", 0.5)
    assert pos.seconds == {"masks": 1.5}


@pytest.mark.parametrize("select,patience,want_stop,want_best", [
    ("per_task", 2, [False, False, False, True], {"ctr": 1, "cvr": 0}),
    ("metric", 1, [False, True, True, True], {"ctr": 0, "cvr": 0}),  # one tracker: cvr_mse, lower is better
    ("last", 2, [False, False, False, False], None),
])
def test_early_stopper_tracks_each_task_and_stops_after_patience(tmp_path, select, patience, want_stop, want_best):
    cfg = resolve_config({"stages": {"joint": {"select": select, "patience": patience,
                                               "early_stopping": select != "last", "metric": None}}})
    es = EarlyStopper(cfg, "layer", str(tmp_path))
    pos = Position.start("layer")
    model = torch.nn.Linear(2, 1)
    vals = [{"ctr_auc": 0.60, "cvr_mse": 0.10}, {"ctr_auc": 0.65, "cvr_mse": 0.20},
            {"ctr_auc": 0.64, "cvr_mse": 0.30}, {"ctr_auc": 0.63, "cvr_mse": 0.40}]
    got = []
    for e, v in enumerate(vals):
        got.append(es.update(pos, v, e, lambda: {f"model/{k}": t for k, t in model.state_dict().items()}))
        es.gc(pos)
    assert got == want_stop
    if want_best is None:
        assert pos.early is None and es.finish(pos, model, "cpu") == (None, None)
        return
    assert pos.early["best_epoch"] == want_best
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted({f"layer_best_e{e}.safetensors" for e in want_best.values()})   # the others deleted
