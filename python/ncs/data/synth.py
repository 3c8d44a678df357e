"""A synthetic click + play-rate log with a tunable conflict between the two tasks.

Users and videos have latent factors u, v in R^k (videos inherit them from their creator and
category, users from a favourite category). Every impression's

  click logit = a0 + w_int * s  +  conflict * w_bait_click * bait_v  +  position bias
  play rate   = clip(h * sigmoid(c0 + w_int_play * s - conflict * w_bait_play * bait_v
                                 - w_dur * (duration - mean) + noise), 0.01, 1)   (only for clicks)

with s = u.v / scale the shared interest and bait_v >= 0 a per-video clickbait score (seen by
the model only through a noisy "cover quality" field). With conflict = 0 the two tasks agree
(both follow s); the larger the conflict, the more a clickbait video raises clicks and lowers
the play rate. h > 1 pushes about half of the clicked play rates to exactly 1.0, as in the
real log. The intercepts a0, c0 are calibrated once per world (at conflict = 1) so that the
click rate is about 0.39 and the mean play rate among clicks about 0.82.

Rows are generated in fixed blocks of BLOCK rows, each from its own torch.Generator seeded by
(seed, block index): synthetic(rows) equals the concatenation of synthetic_chunks(rows, chunk)
for every chunk size, and 100M rows never need to be in memory at once.
"""
from __future__ import annotations

import hashlib
import math
import operator
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch

from .types import EncodedData, FieldSpec

BLOCK = 1 << 16

# keyword arguments accepted by synthetic()/synthetic_chunks() beyond rows/seed/conflict
DEFAULTS = dict(
    n_users=None,  # default: rows // 10, clamped to [100, 200_000]
    n_videos=None,  # default: rows // 4, clamped to [200, 500_000]
    dim=8,
    n_cat1=20,
    cat2_per_cat1=4,
    n_tags=300,
    max_tags=5,
    max_position=12,
    request_size=7.0,  # mean impressions per request
    w_int=1.0,  # interest weight in the click logit
    w_int_play=1.2,  # interest weight in the play-rate logit
    w_bait_click=0.8,
    w_bait_play=0.9,
    w_dur=0.12,
    position_bias=0.12,  # click logit drop per position
    play_noise=0.6,
    headroom=1.22,  # h: the play rate is clipped at 1 above sigmoid = 1/h
    click_rate=0.39,  # calibration targets (at conflict = 1)
    play_rate=0.82,
)

FIELD_NAMES = ("uid", "age", "ugroup", "ucat", "seed_vid", "seed_creator", "seed_cat1",
               "vid", "creator", "cat1", "cat2", "duration", "position", "cover_quality",
               "recall_alg", "tags")


def _generator(seed: int, stream: int) -> torch.Generator:
    digest = hashlib.blake2b(f"ncs-synthetic:{seed}:{stream}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


@dataclass
class _World:
    p: Dict
    # users
    u: torch.Tensor
    u_age: torch.Tensor
    u_group: torch.Tensor
    u_cats: torch.Tensor  # [n_users, 3] cat1 ids (0-based), -1 padding
    u_ncats: torch.Tensor
    # videos (sorted by cat1)
    v: torch.Tensor
    v_creator: torch.Tensor
    v_cat1: torch.Tensor
    v_cat2: torch.Tensor
    v_dur: torch.Tensor  # 1..10
    v_bait: torch.Tensor
    v_cover: torch.Tensor  # 0 (missing) or 1..4
    v_tags: torch.Tensor  # [n_videos, max_tags] tag ids 1.., -1 padding
    cat_start: torch.Tensor
    cat_count: torch.Tensor
    pop_perm: torch.Tensor
    n_creators: int
    s_scale: float = 1.0
    a0: float = 0.0
    c0: float = 0.0


def _resolve(rows: int, kw: Dict) -> Dict:
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"synthetic: unknown keyword arguments {sorted(unknown)}; allowed {sorted(DEFAULTS)}")
    p = dict(DEFAULTS)
    p.update(kw)
    if p["n_users"] is None:
        p["n_users"] = int(min(max(rows // 10, 100), 200_000))
    if p["n_videos"] is None:
        p["n_videos"] = int(min(max(rows // 4, 200), 500_000))
    if p["n_videos"] < p["n_cat1"]:
        raise ValueError(f"n_videos must be >= n_cat1 ({p['n_cat1']}), got {p['n_videos']}")
    for k in ("n_users", "dim", "n_cat1", "cat2_per_cat1", "n_tags", "max_tags", "max_position"):
        if int(p[k]) < 1:
            raise ValueError(f"{k} must be >= 1, got {p[k]}")
    if not 0 < p["click_rate"] < 1 or not 0 < p["play_rate"] < 1:
        raise ValueError("click_rate and play_rate targets must be in (0, 1)")
    return p


def _build_world(seed: int, p: Dict) -> _World:
    g = _generator(seed, -1)
    k, nc1, nc2 = p["dim"], p["n_cat1"], p["n_cat1"] * p["cat2_per_cat1"]
    nu, nv = p["n_users"], p["n_videos"]
    n_creators = max(p["n_cat1"], nv // 8)
    cat_vec = torch.randn(nc1, k, generator=g)
    cat2_off = 0.5 * torch.randn(nc2, k, generator=g)
    creator_cat = torch.randint(0, nc1, (n_creators,), generator=g)
    creator_cat[:nc1] = torch.arange(nc1)  # every category has a creator, hence videos
    creator_vec = cat_vec[creator_cat] + 0.5 * torch.randn(n_creators, k, generator=g)
    # videos: creators with a skewed number of videos; sorted by category for cheap sampling
    v_creator = torch.cat([torch.arange(nc1), (n_creators * torch.rand(nv - nc1, generator=g) ** 2).long()])
    v_cat1 = creator_cat[v_creator]
    order = torch.argsort(v_cat1 * (n_creators + 1) + v_creator, stable=True)
    v_creator, v_cat1 = v_creator[order], v_cat1[order]
    v_cat2 = v_cat1 * p["cat2_per_cat1"] + torch.randint(0, p["cat2_per_cat1"], (nv,), generator=g)
    v = creator_vec[v_creator] + cat2_off[v_cat2] + 0.5 * torch.randn(nv, k, generator=g)
    v_dur = torch.randint(1, 11, (nv,), generator=g)
    v_bait = -torch.log(torch.rand(nv, generator=g).clamp_min(1e-12))  # Exp(1): >= 0
    noisy = v_bait + 0.4 * torch.randn(nv, generator=g)
    q = torch.quantile(noisy, torch.tensor([0.25, 0.5, 0.75]))
    v_cover = 1 + torch.bucketize(noisy, q)
    v_cover[torch.rand(nv, generator=g) < 0.03] = 0
    # tags: mostly from the sub-category's own tag set, sometimes any tag
    cat2_tags = torch.randint(1, p["n_tags"] + 1, (nc2, p["max_tags"]), generator=g)
    pick = torch.randint(0, p["max_tags"], (nv, p["max_tags"]), generator=g)
    tags = cat2_tags[v_cat2.unsqueeze(1).expand(-1, p["max_tags"]), pick]
    rand_tags = torch.randint(1, p["n_tags"] + 1, (nv, p["max_tags"]), generator=g)
    tags = torch.where(torch.rand(nv, p["max_tags"], generator=g) < 0.3, rand_tags, tags)
    n_tags = torch.randint(1, p["max_tags"] + 1, (nv,), generator=g)
    tags[torch.arange(p["max_tags"]).unsqueeze(0) >= n_tags.unsqueeze(1)] = -1
    cat_count = torch.bincount(v_cat1, minlength=nc1)
    cat_start = torch.cumsum(cat_count, 0) - cat_count
    pop_perm = torch.randperm(nv, generator=g)
    # users: a favourite category, up to 2 more interests
    fav = torch.randint(0, nc1, (nu,), generator=g)
    u = 0.9 * cat_vec[fav] + 0.6 * torch.randn(nu, k, generator=g)
    u_age = torch.randint(1, 9, (nu,), generator=g)
    u_age[torch.rand(nu, generator=g) < 0.05] = 0
    u_group = fav * 3 + torch.randint(0, 3, (nu,), generator=g)
    u_cats = torch.stack([fav, torch.randint(0, nc1, (nu,), generator=g), torch.randint(0, nc1, (nu,), generator=g)], 1)
    u_ncats = torch.randint(1, 4, (nu,), generator=g)
    u_cats[torch.arange(3).unsqueeze(0) >= u_ncats.unsqueeze(1)] = -1
    w = _World(p, u, u_age, u_group, u_cats, u_ncats, v, v_creator, v_cat1, v_cat2, v_dur, v_bait,
               v_cover, tags, cat_start, cat_count, pop_perm, n_creators)
    _calibrate(w, seed)
    return w


def _sample_block(w: _World, rows: int, g: torch.Generator) -> Dict[str, torch.Tensor]:
    """Impressions (without labels): request structure, users, seed and candidate videos."""
    p = w.p
    nu, nv = p["n_users"], p["n_videos"]
    # request sizes: 1 + Poisson(mean - 1), capped at max_position
    n_req = rows // 2 + 2
    sizes = (1 + torch.poisson(torch.full((n_req,), p["request_size"] - 1.0), generator=g).long()).clamp(1, p["max_position"])
    ends = torch.cumsum(sizes, 0)
    n_used = int(torch.searchsorted(ends, torch.tensor(rows)).item()) + 1
    req_local = torch.repeat_interleave(torch.arange(n_used), sizes[:n_used])[:rows]
    starts = (ends - sizes)[:n_used]
    position = torch.arange(rows) - starts[req_local] + 1
    req_user = (nu * torch.rand(n_used, generator=g) ** 1.5).long().clamp_max(nu - 1)
    req_seed = w.pop_perm[(nv * torch.rand(n_used, generator=g) ** 2).long().clamp_max(nv - 1)]
    user = req_user[req_local]
    seed_vid = req_seed[req_local]
    # recall algorithm: 1 = user interest, 2 = popular, 3 = similar to the seed video
    alg = 1 + torch.multinomial(torch.tensor([0.4, 0.35, 0.25]), rows, replacement=True, generator=g)
    ucats = w.u_cats[user]
    slot = (torch.rand(rows, generator=g) * w.u_ncats[user]).long()
    cat = torch.where(alg == 1, ucats.gather(1, slot.unsqueeze(1)).squeeze(1), w.v_cat1[seed_vid])
    in_cat = w.cat_start[cat] + (torch.rand(rows, generator=g) * w.cat_count[cat]).long().clamp_max(w.cat_count[cat] - 1)
    popular = w.pop_perm[(nv * torch.rand(rows, generator=g) ** 2).long().clamp_max(nv - 1)]
    vid = torch.where(alg == 2, popular, in_cat)
    return dict(req_local=req_local, position=position, user=user, seed_vid=seed_vid, vid=vid, alg=alg)


def _logits(w: _World, imp: Dict[str, torch.Tensor], conflict: float, noise: torch.Tensor):
    """(click logit without a0, play-rate pre-activation without c0)."""
    p = w.p
    s = (w.u[imp["user"]] * w.v[imp["vid"]]).sum(1) / w.s_scale
    bait = w.v_bait[imp["vid"]]
    click = p["w_int"] * s + conflict * p["w_bait_click"] * bait - p["position_bias"] * (imp["position"] - 1)
    play = (p["w_int_play"] * s - conflict * p["w_bait_play"] * bait
            - p["w_dur"] * (w.v_dur[imp["vid"]].float() - 5.5) + p["play_noise"] * noise)
    return click, play


def _play_rate(w: _World, z: torch.Tensor) -> torch.Tensor:
    return (w.p["headroom"] * torch.sigmoid(z)).clamp(0.01, 1.0)


def _bisect(f, lo: float = -20.0, hi: float = 20.0, iters: int = 36) -> float:
    """Root of an increasing function f on [lo, hi]."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _calibrate(w: _World, seed: int, n: int = 40_000) -> None:
    g = _generator(seed, -2)
    imp = _sample_block(w, n, g)
    s = (w.u[imp["user"]] * w.v[imp["vid"]]).sum(1)
    w.s_scale = float(s.std()) or 1.0
    noise = torch.randn(n, generator=g)
    click, play = _logits(w, imp, 1.0, noise)
    click, play = click.double(), play.double()
    w.a0 = _bisect(lambda a: float(torch.sigmoid(click + a).mean()) - w.p["click_rate"])
    pc = torch.sigmoid(click + w.a0)
    w.c0 = _bisect(lambda c: float((pc * _play_rate(w, play + c)).sum() / pc.sum()) - w.p["play_rate"])


_WORLD_CACHE: Dict[tuple, _World] = {}


def _world(seed: int, p: Dict) -> _World:
    key = (seed, tuple(sorted(p.items())))
    if key not in _WORLD_CACHE:
        if len(_WORLD_CACHE) > 4:
            _WORLD_CACHE.pop(next(iter(_WORLD_CACHE)))
        _WORLD_CACHE[key] = _build_world(seed, p)
    return _WORLD_CACHE[key]


def _fields(w: _World) -> List[FieldSpec]:
    p = w.p
    nu, nv, nc1 = p["n_users"], p["n_videos"], p["n_cat1"]
    sizes = [nu + 1, 9, nc1 * 3 + 1, nc1 + 1, nv + 1, w.n_creators + 1, nc1 + 1, nv + 1, w.n_creators + 1,
             nc1 + 1, nc1 * p["cat2_per_cat1"] + 1, 11, p["max_position"] + 1, 5, 4, p["n_tags"] + 1]
    lens = [1] * 16
    lens[3], lens[15] = 3, p["max_tags"]
    return [FieldSpec(n, s, l) for n, s, l in zip(FIELD_NAMES, sizes, lens)]


def _block(w: _World, seed: int, block: int, rows: int, conflict: float,
           out: Optional[EncodedData] = None) -> EncodedData:
    """One block of rows; written into ``out`` (views of a preallocated whole) when given."""
    g = _generator(seed, block)
    imp = _sample_block(w, rows, g)
    noise = torch.randn(rows, generator=g)
    click_logit, play = _logits(w, imp, conflict, noise)
    click = (torch.rand(rows, generator=g) < torch.sigmoid(click_logit + w.a0)).float()
    conversion = torch.where(click > 0, _play_rate(w, play + w.c0), torch.zeros(()))
    user, vid, seed_vid = imp["user"], imp["vid"], imp["seed_vid"]
    L = max(3, w.p["max_tags"])
    if out is None:
        out = EncodedData(_fields(w), torch.empty((rows, 16, L), dtype=torch.int64),
                          {"click": torch.empty(rows), "conversion": torch.empty(rows)},
                          {"request": torch.empty(rows, dtype=torch.int64), "user": torch.empty(rows, dtype=torch.int64)})
    ids = out.ids
    ids.fill_(-1)
    single = [user + 1, w.u_age[user], w.u_group[user] + 1, None,
              seed_vid + 1, w.v_creator[seed_vid] + 1, w.v_cat1[seed_vid] + 1,
              vid + 1, w.v_creator[vid] + 1, w.v_cat1[vid] + 1, w.v_cat2[vid] + 1,
              w.v_dur[vid], imp["position"], w.v_cover[vid], imp["alg"], None]
    for f, col in enumerate(single):
        if col is not None:
            ids[:, f, 0] = col
    uc = w.u_cats[user]
    ids[:, 3, :3] = torch.where(uc >= 0, uc + 1, uc)
    ids[:, 15, : w.p["max_tags"]] = w.v_tags[vid]
    out.labels["click"].copy_(click)
    out.labels["conversion"].copy_(conversion)
    out.groups["request"].copy_(block * BLOCK + imp["req_local"])
    out.groups["user"].copy_(user + 1)
    return out


def _concat(parts: List[EncodedData]) -> EncodedData:
    if len(parts) == 1:
        return parts[0]
    return EncodedData(parts[0].fields, torch.cat([p.ids for p in parts]),
                       {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels},
                       {k: torch.cat([p.groups[k] for p in parts]) for k in parts[0].groups})


def _slice(d: EncodedData, a: int, b: int) -> EncodedData:
    return EncodedData(d.fields, d.ids[a:b], {k: v[a:b] for k, v in d.labels.items()},
                       {k: v[a:b] for k, v in d.groups.items()})


def _check(rows, conflict) -> int:
    try:
        n = operator.index(rows)
    except TypeError:
        raise ValueError(f"rows must be an int >= 0, got {rows!r}") from None
    if n < 0:
        raise ValueError(f"rows must be an int >= 0, got {rows!r}")
    if not isinstance(conflict, (int, float)) or not math.isfinite(conflict) or conflict < 0:
        raise ValueError(f"conflict must be a finite number >= 0, got {conflict!r}")
    return n


def _blocks(rows: int, seed: int, conflict: float, kw: Dict) -> Iterator[EncodedData]:
    rows = _check(rows, conflict)
    p = _resolve(rows, kw)  # the world's size follows rows: synthetic(n) is not a prefix of synthetic(2n)
    w = _world(int(seed), p)
    for b in range((rows + BLOCK - 1) // BLOCK):
        yield _block(w, int(seed), b, min(BLOCK, rows - b * BLOCK), float(conflict))


def synthetic_chunks(rows: int = 100_000, chunk: int = BLOCK, seed: int = 0, conflict: float = 1.0,
                     **kw) -> Iterator[EncodedData]:
    """Yield ``rows`` synthetic rows as EncodedData parts of ``chunk`` rows (the last may be
    shorter); the concatenation equals synthetic(rows, seed, conflict, **kw)."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    pending: List[EncodedData] = []
    have = 0
    for blk in _blocks(rows, seed, conflict, kw):
        pending.append(blk)
        have += len(blk)
        if have < chunk:
            continue
        joined = _concat(pending)
        start = 0
        while have - start >= chunk:
            yield _slice(joined, start, start + chunk)
            start += chunk
        pending = [_slice(joined, start, have)] if have > start else []
        have -= start
    if have:
        yield _concat(pending)


def synthetic(rows: int = 100_000, seed: int = 0, conflict: float = 1.0, **kw) -> EncodedData:
    """``rows`` synthetic impressions, deterministic by ``seed``; see the module docstring.

    Labels: "click" (0/1) and "conversion" (play rate, > 0 exactly for clicks); groups:
    "request" (about ``request_size`` impressions each) and "user". Keyword arguments: DEFAULTS."""
    # Preallocate the whole and let each block write into its slice: no concatenation copy.
    n = _check(rows, conflict)
    w = _world(int(seed), _resolve(n, kw))
    fields = _fields(w)
    L = max(f.max_len for f in fields)
    whole = EncodedData(fields, torch.empty((n, len(fields), L), dtype=torch.int64),
                        {"click": torch.empty(n), "conversion": torch.empty(n)},
                        {"request": torch.empty(n, dtype=torch.int64), "user": torch.empty(n, dtype=torch.int64)})
    for b in range((n + BLOCK - 1) // BLOCK):
        a, e = b * BLOCK, min(n, (b + 1) * BLOCK)
        _block(w, int(seed), b, e - a, float(conflict), _slice(whole, a, e))
    return whole
