"""Cost of the non-finite guard (train.on_nonfinite), docs/RELIABILITY.md: train_epoch with and
without it, and NonFiniteGuard.ok alone, on the demo model (CPU, one thread).

    python scripts/guard_cost.py
"""
import sys, time, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "python"), str(ROOT)]
CKPT = __import__("tempfile").mkdtemp()
from ncs.config import demo_config
from ncs.data import synthetic, split
from ncs.train import batches as B, stages
from ncs.train import epoch, guards

torch.set_num_threads(1)
cfg = demo_config(20000)
data = synthetic(20000, seed=0, conflict=0.5)
tr, va, te = split(data, by="request", fractions=(0.8, 0.1, 0.1), seed=0)
dev = torch.device("cpu")
trs = B.prepare_split(tr, cfg.tasks, "click", dev)
vas = B.prepare_split(va, cfg.tasks, "click", dev)

class NoGuard:
    def __init__(self, t, d): self.skipped = 0
    def ok(self, i, loss): return True
    def finish(self): pass

res = {}
for mode in ["error", "skip_batch", "none"] * 3:
    c = cfg.override({"train": {"on_nonfinite": "error" if mode == "none" else mode}})
    epoch.NonFiniteGuard = NoGuard if mode == "none" else guards.NonFiniteGuard
    t = stages.ModelTrainer("connection", c, data.fields, trs, vas, dev, CKPT)
    bt = B.mixed_batches(trs, c.train.batch_size, 0, "mixed", 0)
    t0 = time.perf_counter(); t.train_epoch(bt, True, "x"); dt = time.perf_counter() - t0
    res.setdefault(mode, []).append(dt / len(bt) * 1e3)
for k, v in res.items():
    print(f"{k:10s} {min(v):.3f} ms/step (best of {len(v)}; {len(bt)} steps of batch {cfg.train.batch_size})")

# the probe alone, on the demo model's gradients after one backward (precise; the epoch timings
# above are noisy on a shared machine)
t = stages.ModelTrainer("connection", cfg, data.fields, trs, vas, dev, CKPT)
ids, tg, sp = trs.batch(bt[0][1])
from ncs.losses import multitask_loss
loss, _ = multitask_loss(t.model(ids), tg, sp, cfg.tasks, 2.0, 0.25)
loss.backward()
g = guards.NonFiniteGuard(t, "x")
for mode in ("error", "skip_batch"):
    g.mode = mode
    t0 = time.perf_counter()
    for i in range(2000):
        g.ok(i, loss)
    print(f"guard.ok ({mode}): {(time.perf_counter() - t0) / 2000 * 1e3:.3f} ms per step")
g.finish()
