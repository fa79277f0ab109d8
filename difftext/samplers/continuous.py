"""Reverse-process loop of continuous embedding diffusion (DiffuSeq / Difformer decoding).

The model is reached only through a closure (RDM style)::

    denoise_fn(z_t: (B, L, D), t: LongTensor (B,), z0_self_cond: (B, L, D) or None) -> z0_hat (B, L, D)

The loop runs N <= T respaced steps ``t_0 = T-1 > t_1 > ... > t_{N-1}`` (evenly spaced, DDIM style),
predicts z0_hat at each, optionally clamps it to the nearest embedding row (Li et al. 2022), then moves
to the next step with a DDIM (deterministic) or DDPM (ancestral) update. After the last step the
(clamped) z0_hat is returned. Partial noising resets ``keep_mask`` positions to ``z0_fixed`` each step.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from difftext.processes.gaussian import GaussianDiffusion, reset_clean

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def respaced_steps(num_steps: int, decoding_steps: int) -> list:
    """N evenly spaced integer steps from T-1 down to 0 (N <= T), descending, without repeats."""
    if not 1 <= decoding_steps <= num_steps:
        raise ValueError(
            f"decoding steps must be between 1 and the model's diffusion steps T={num_steps} "
            f"(got {decoding_steps}); pass --decoding-steps N with 1 <= N <= {num_steps}"
        )
    if decoding_steps == 1:
        return [num_steps - 1]
    grid = torch.linspace(num_steps - 1, 0, decoding_steps, dtype=torch.float64)
    return [int(round(float(x))) for x in grid]


def decoding_schedule(num_steps: int, decoding_steps: int, early_stop: int = 0) -> list:
    """The steps a reverse process runs: :func:`respaced_steps` without its last ``early_stop`` (Difformer's early
    stop: its reference generator runs ``range(early_stopping, steps)[::-1]``, so 20 steps with early stop 5 are 15
    network calls, ending at the 6th least noisy step)."""
    steps = respaced_steps(num_steps, decoding_steps)
    if not 0 <= early_stop < len(steps):
        raise ValueError(
            f"--decoding-early-stop {early_stop} leaves no step of {len(steps)}: it leaves out the last S of the N "
            f"steps, so use 0 <= S < --decoding-steps (Difformer: 20 steps, early stop 5)"
        )
    return steps[: len(steps) - early_stop]


# Rows per product in a full search. On the 2-core Xeon of the benchmark (one thread, V = 8000, D = 128), 1231
# real clamp points took 26.5 ms in chunks of 256 or 512 rows, 28 ms in 128, 32 ms in 1024: the (chunk, V) scores
# of a smaller chunk are read back from cache rather than from memory when their best rows are taken.
SEARCH_CHUNK = 512


def nearest_embedding(z: torch.Tensor, embeddings: torch.Tensor, neg_sq_norms: Optional[torch.Tensor] = None,
                      chunk: Optional[int] = None) -> torch.Tensor:
    """Indices of the nearest rows of ``embeddings`` (V, D) to each vector of z (..., D): one search, in full.

    argmin_v ||z - e_v||^2 = argmax_v (2 z.e_v - ||e_v||^2), one fused ``addmm`` per ``chunk`` rows (default
    :data:`SEARCH_CHUNK`; on a CPU an int8 screen first); float32 for half inputs. neg_sq_norms: -||e_v||^2 (V,)
    in float32. Repeated searches of slowly moving points (the steps of one reverse process) are cheaper with
    :class:`NearestEmbedding`.
    """
    search = NearestEmbedding(embeddings, candidates=0, neg_sq_norms=neg_sq_norms, chunk=chunk)
    return search(z.reshape(-1, z.size(-1))).view(z.shape[:-1])


class NearestEmbedding:
    """Exact nearest-row search against one table (V, D), for the same M points at every step of a reverse process.

    Score s_v(z) = 2 z.e_v - ||e_v||^2, so the nearest row is argmax_v s_v(z). A full search costs a (V, D)
    product per point. Between steps the points move little (measured on a trained Difformer: the nearest row
    changes for < 1% of points per step), so each point keeps the K best rows of its last full search at z_ref and
    the (K+1)-th best score there. For every other row, Cauchy-Schwarz gives
    ``s_v(z) <= s_v(z_ref) + 2 ||z - z_ref|| max_u ||e_u|| <= s_(K+1)(z_ref) + 2 R ||z - z_ref||``, and a tighter
    bound where z grew along z_ref (:meth:`_bound`); when the best of the K kept rows, scored exactly at z, is above
    the bound, it is the nearest row of the whole table, found with K dot products instead of V (the 45-minute
    Difformer, 10 steps at batch 128: 26% of the clamp's points searched in full, 32% with the first bound alone).
    The other points are searched in full and their cache renewed. The result is the full search's (up to ties
    within float rounding: a margin of 1e-4 of the score scale guards the test).

    On a CPU whose int8 matmul is fast (the benchmark's Xeon: 4x cheaper than the float32 product; not an AMD EPYC
    with AVX2 alone: :meth:`_Int8Table.fast`) a full search first screens the table with an int8 product (exact in
    int32) and scores only its ``SCREEN`` best rows in float32; a bound on the int8 rounding error proves the best
    of them nearest, or sends the point on to the float32 product (:meth:`_screen`). On the
    45-minute Difformer every point was settled by the screen. A point whose kept rows failed the bound is first
    rechecked against the same product: its best kept row is the nearest when it beats every row it does not keep
    (one row maximum, no ranking); on the self-conditioned Difformer 98% of the rechecks settled.

    candidates: K (0: every search in full, nothing kept). reuse: an earlier search whose table equals this one
    (a decoder's previous batch): its int8 table and row norms are taken over rather than built again (~3 ms for
    8000 x 128).
    """

    MARGIN = 1e-4
    SCREEN = 8  # rows scored exactly after the int8 screen

    def __init__(self, embeddings: torch.Tensor, candidates: int = 4, *, neg_sq_norms: Optional[torch.Tensor] = None,
                 chunk: Optional[int] = None, reuse: Optional["NearestEmbedding"] = None):
        self.table = embeddings.float()
        vocab = self.table.size(0)
        same = reuse is not None and (reuse.table is self.table or reuse.table.shape == self.table.shape
                                      and torch.equal(reuse.table, self.table))
        if neg_sq_norms is None and same:
            neg_sq_norms = reuse.neg_sq_norms
        elif neg_sq_norms is None:
            neg_sq_norms = -(self.table * self.table).sum(-1)
        self.neg_sq_norms = neg_sq_norms.float()
        self.k = max(0, min(candidates, vocab - 1))
        sq_norms = self.neg_sq_norms.neg()
        self.radius = float(sq_norms.max().clamp_min(0).sqrt()) if vocab else 0.0  # max ||e_v||
        self.sq_norm_range = (float(sq_norms.min()), float(sq_norms.max())) if vocab else (0.0, 0.0)
        low, high = self.sq_norm_range
        self.equal_norms = high - low <= 0.01 * high  # layer-normed rows (Difformer's: within 0.12%)
        self.chunk = chunk or SEARCH_CHUNK
        self.cand = self.next_score = self.z_ref = self.int8 = self.products_top = None
        if same:
            self.int8 = reuse.int8
        self.full_searches = self.searches = 0  # points searched in full / all points searched
        self.unscreened = 0  # of those searched in full, points the int8 screen could not settle
        self.rechecked = 0  # of those searched in full, points whose kept rows the screen proved nearest again

    def __call__(self, z: torch.Tensor, products: Optional[torch.Tensor] = None, last: bool = False,
                 points: Optional[slice] = None) -> torch.Tensor:
        """Nearest row indices (M,) of the points z (M, D); with candidates > 0, the same M points each call.

        products: z's products with every row, z E^T (M, V) in float32, where the caller has made them anyway
        (the rounding's logits): a point that needs a full search reads its scores from them, no new product.
        last: no search of these points follows (a reverse process's last z0_hat), so a full search finds the
        nearest row alone and keeps nothing: a top-1 of its scores instead of a top-(K+1) (~2x cheaper for K = 4).
        A last search from products of a table with :attr:`equal_norms` reads every point from its best products
        (:meth:`_from_products`) and leaves them in :attr:`products_top` for the caller: one pass over the (M, V)
        products, whose maxima the caller's log-softmax needs, instead of the kept rows' bound and a copy of the
        rows that fail it (the 45-minute self-conditioned Difformer: 568 of 1252).
        points: a last search in parts (the caller's products made a chunk at a time): the rows of the M points of
        the searches before that z holds, ``slice(start, start + len(z))``.
        """
        if points is not None and not last:
            raise ValueError("NearestEmbedding: a search of part of the points (points=) must be the last one")
        z = z.float()
        m = z.size(0)
        self.searches += m
        keep = 0 if last else self.k
        self.products_top = None
        if last and products is not None and self._products_ready(products, keep):
            self.full_searches += m
            self.products_top = row_top(products, keep + 3)
            return self._from_products(z, products, keep, self.products_top)[0]
        cached = None if self.cand is None else [x if points is None else x[points] for x in self._cache()]
        if self.k == 0 or cached is None or cached[0].size(0) != m:
            self.full_searches += m
            out, cand, next_score = self._full(z, products, keep)
            if keep:
                self.cand, self.next_score, self.z_ref = cand, next_score, z.clone()
                self.kept_rows, self.kept_neg_sq = take(self.table, cand), take(self.neg_sq_norms, cand)  # (M,K,D)
            return out
        cand, next_score, z_ref, kept_rows, kept_neg_sq = cached
        kept = torch.baddbmm(kept_neg_sq.unsqueeze(1), z.unsqueeze(1), kept_rows.transpose(1, 2),
                             alpha=2.0).squeeze(1)  # (M, K) exact scores
        best, which = kept.max(-1)
        out = cand.gather(1, which.unsqueeze(1)).squeeze(1)
        redo = (best < self._bound(z, z_ref, next_score)).nonzero().squeeze(1)
        if redo.numel():
            self.full_searches += redo.numel()
            moved = take(z, redo)
            held = (take(cand, redo), take(best, redo), take(out, redo)) if keep and products is None else None
            found, rows, score = self._full(moved, None if products is None else take(products, redo), keep, held)
            out.index_copy_(0, redo, found)  # index_copy_, not out[redo] = ...: on a CPU 2-4x faster (see take)
            if keep:  # (not last, so every point: cached is the cache itself)
                renewed = (rows, score, moved, take(self.table, rows), take(self.neg_sq_norms, rows))
                for kept, new in zip(cached, renewed):
                    kept.index_copy_(0, redo, new)
        return out

    def _cache(self):
        """What each point keeps from its last full search: its K best rows, the (K+1)-th best score, z_ref, and
        the kept rows' vectors (M, K, D) and negated squared norms."""
        return self.cand, self.next_score, self.z_ref, self.kept_rows, self.kept_neg_sq

    def _bound(self, z, ref, next_score):
        """An upper bound (M,) on the score at z of every row outside each point's kept rows, float slack included;
        ref: z_ref of the points, next_score: their s_(K+1)(z_ref).

        Two bounds, the smaller taken. Moving: s_v(z) <= s_(K+1)(z_ref) + 2 R ||z - z_ref||. Scaled: with
        z = a z_ref + w (w orthogonal to z_ref) and a >= 0, s_v(z) = a s_v(z_ref) + (a - 1) ||e_v||^2 + 2 w.e_v
        <= a s_(K+1)(z_ref) + (a - 1) ||e||^2_(max if a >= 1 else min) + 2 R ||w||. A reverse process's z0_hat
        moves mostly along itself (its norm grows as the noise falls), so ||w|| is much smaller than
        ||z - z_ref||; for a table of equal row norms (layer-normed embeddings) the middle term is exact.
        ||z - z_ref||^2 = (1 - a)^2 ||z_ref||^2 + ||w||^2 and ||z||^2 = a^2 ||z_ref||^2 + ||w||^2 give the other
        norms from w's: it runs at every step on every point, and each pass over (M, D) costs more than the
        arithmetic on (M,).
        """
        radius, (low, high) = self.radius, self.sq_norm_range
        ref_sq = ref.norm(dim=-1).square_()
        a = (z * ref).sum(-1).div_(ref_sq.clamp_min(1e-30))
        w_sq = torch.addcmul(z, a.unsqueeze(-1), ref, value=-1.0).norm(dim=-1).square_()  # w = z - a z_ref
        moving = (1 - a).square_().mul_(ref_sq).add_(w_sq).sqrt_().mul_(2 * radius).add_(next_score)
        scaled = (a - 1).mul_(torch.where(a >= 1, high, low)).addcmul_(a, next_score)
        scaled.add_(w_sq.sqrt().mul_(2 * radius))
        bound = torch.where((a >= 0) & (ref_sq > 0), torch.minimum(moving, scaled), moving)
        z_norm = a.square().mul_(ref_sq).add_(w_sq).sqrt_()
        return bound.add_(self._margin(z, z_norm))

    def _full(self, z, products, k, held=None):
        """Full search: nearest rows (M,), the k best rows (M, k) and the (k+1)-th best score (M,).

        Without ``products``, on a CPU, through the int8 screen first (:meth:`_screen`); the points it cannot
        settle, and every point elsewhere, by the float32 product. held: for points whose kept rows failed the
        bound, (their k kept rows (M, k), the best kept row's exact score at z (M,), that row (M,)), for the
        screen's recheck."""
        m = z.size(0)
        out = torch.empty(m, dtype=torch.long, device=z.device)
        cand = torch.empty(m, k, dtype=torch.long, device=z.device)
        next_score = z.new_empty(m)
        for i in range(0, m, self.chunk):
            part = slice(i, i + self.chunk)
            if products is None and self._screen_ready(z):
                settled = self._screen(z[part], out[part], cand[part], next_score[part], k,
                                       None if held is None else [x[part] for x in held])
                redo = (~settled).nonzero().squeeze(1)
                if redo.numel():
                    self.unscreened += redo.numel()
                    rows = redo + i
                    out[rows], cand[rows], next_score[rows] = self._exact(take(z, rows), None, k)
                continue
            out[part], cand[part], next_score[part] = self._exact(
                z[part], None if products is None else products[part], k)
        return out, cand, next_score

    def _exact(self, z, products, k):
        """The float32 search of one chunk: nearest rows, k best rows, (k+1)-th best score."""
        if products is not None and self._products_ready(products, k):
            return self._from_products(z, products, k)
        return self._every_row(z, products, k)

    def _products_ready(self, products, k):
        """Whether :meth:`_from_products` applies: rows of nearly equal norms, and more than k + 2 of them."""
        return self.equal_norms and products.size(1) > k + 2

    def _every_row(self, z, products, k):
        """:meth:`_exact` by scoring every row: from the table's product with z, or from the caller's products."""
        if products is None:
            scores = torch.addmm(self.neg_sq_norms, z, self.table.t(), alpha=2.0)
        else:
            scores = torch.add(self.neg_sq_norms, products, alpha=2.0)
        values, rows = row_top(scores, k + 1)
        return rows[:, 0], rows[:, :k], values[:, k]

    def _from_products(self, z, products, k, best=None):
        """:meth:`_exact` from the caller's products p_v = z.e_v (m, V), without scoring every row. best: their
        k + 3 best (values, columns), where already taken.

        The k + 2 rows of highest product are scored exactly; every other row scores at most 2 p - min_v ||e_v||^2,
        with p the next highest product. Where the best exact score is above that bound it is the nearest row, and
        the bound joins the (k+1)-th exact score as the bound on the rows not kept; elsewhere every row is scored.
        For tables of nearly equal row norms only (:attr:`equal_norms`; Difformer's layer-normed rows: within
        0.12%): there the ranks of the products are those of the scores but for near-ties, so the bound holds for
        almost every point and the (m, V) scores are never made; on free embeddings (DiffuSeq) it would mostly
        fail.
        """
        n = k + 2
        top, cols = row_top(products, n + 1) if best is None else best
        exact = torch.add(take(self.neg_sq_norms, cols[:, :n]), top[:, :n], alpha=2.0)  # as the full scores are
        values, order = exact.topk(k + 1, -1)
        rows = cols.gather(1, order)
        bound = 2 * top[:, n] - self.sq_norm_range[0] + self._margin(z)
        out, cand, next_score = rows[:, 0].clone(), rows[:, :k].clone(), torch.maximum(values[:, k], bound)
        redo = (values[:, 0] <= bound).nonzero().squeeze(1)
        if redo.numel():
            out[redo], cand[redo], next_score[redo] = self._every_row(None, take(products, redo), k)
        return out, cand, next_score

    def _margin(self, z, z_norm=None):
        """Slack (M,) added to every bound, against float rounding in the scores of z (1e-4 of their scale).
        z_norm: ||z|| (M,) where the caller has it."""
        z_norm = z.norm(dim=-1) if z_norm is None else z_norm
        return self.MARGIN * self.radius * (self.radius + 2 * z_norm)

    def _screen_ready(self, z):
        """Whether the int8 screen applies: a table of V >= 1024 rows on a CPU with torch's int8 matmul, where that
        matmul is fast (:meth:`_Int8Table.fast`), whose squared row norms lie within 1% of the largest (layer-normed
        embeddings, as Difformer's): the screen ranks rows by their products alone, and its bound pays the spread of
        ||e_v||^2 (DiffuSeq's free embeddings left 67% of its points to the float32 product)."""
        if self.int8 is None:
            self.int8 = (z.is_cpu and self.table.is_cpu and self.table.size(0) >= 1024 and self.equal_norms
                         and hasattr(torch, "_int_mm") and _Int8Table.works(self.table)
                         and _Int8Table.fast(self.table.size(1)))
            if self.int8:
                self.int8 = _Int8Table(self.table)
        return bool(self.int8)

    def _screen(self, z, out, cand, next_score, k, held=None):
        """Settle the full search of points z (m, D) from an int8 product; False where it cannot (those points
        need the float32 search). Fills out, cand and next_score where settled.

        With z = s_z q_z + r_z and e_v = s_e q_v + r_v (int8 q, one scale s_e for the table), z.e_v differs from
        s_z s_e q_z.q_v by at most delta = s_z ||q_z|| max_v ||r_v|| + ||r_z|| R, and q_z.q_v is exact (int32).
        The ``SCREEN`` rows of highest q_z.q_v are scored exactly in float32; every other row scores at most
        U = 2 s_z s_e p + 2 delta - min_v ||e_v||^2, with p the highest q_z.q_v among them. The point is settled
        when the best exact score beats U: that row is the nearest. The kept rows are the best k of the screened
        ones, and the bound for all others is max((k+1)-th exact score, U), so the reuse between steps stays exact.

        held: (rows (m, k), best score (m,), best row (m,)) of points whose kept rows failed :meth:`_bound`. Their
        nearest row has mostly stayed among the kept ones, and only the bound was too loose (its Cauchy-Schwarz
        term). So the screen first rechecks them: U over the rows not kept, from the largest product outside them
        (one row maximum, no top-k), settles a point whose best kept row scores above it; the point keeps its rows,
        with U as its new bound. The others are ranked as above. (The 45-minute self-conditioned Difformer: 98% of the
        rechecks settled, at ~7.5 us a point against ~18 us for a ranked search.)
        """
        table = self.int8
        scale = z.abs().amax(-1).clamp_min(torch.finfo(torch.float32).tiny) / 127  # s_z (m,)
        q = torch.round(z / scale.unsqueeze(-1)).clamp_(-127, 127)
        residual = (z - scale.unsqueeze(-1) * q).norm(dim=-1)
        delta = scale * q.norm(dim=-1) * table.residual + residual * self.radius
        products = torch._int_mm(q.to(torch.int8), table.rows_t)  # (m, V) int32, exact
        unit = 2 * scale * table.scale  # U = unit * p + slack
        slack = 2 * delta - self.sq_norm_range[0] + self._margin(z)
        if held is None:
            found, rows, bound, settled = self._rank(z, products, unit, slack, k)
            out.copy_(found)
            cand.copy_(rows)
            next_score.copy_(bound)
            return settled
        rows, best, row = held
        saved = products.gather(1, rows)
        products.scatter_(1, rows, torch.iinfo(torch.int32).min)
        other = products.amax(-1).float().mul_(unit).add_(slack)  # U over the rows not kept
        products.scatter_(1, rows, saved)
        settled = best > other
        out.copy_(row)
        cand.copy_(rows)
        next_score.copy_(other)
        index = (~settled).nonzero().squeeze(1)
        self.rechecked += settled.numel() - index.numel()
        if index.numel():
            found, rows, bound, ranked = self._rank(*(take(x, index) for x in (z, products, unit, slack)), k)
            for x, new in ((out, found), (cand, rows), (next_score, bound), (settled, ranked)):
                x.index_copy_(0, index, new)
        return settled

    def _rank(self, z, products, unit, slack, k):
        """The screen's ranked search of points z (m, D) from their int8 products (m, V): the nearest row, the k
        kept rows, the bound on all others and whether the point is settled (see :meth:`_screen`)."""
        screen = max(self.SCREEN, k + 1)
        top, rows = row_top(products, screen + 1)
        rows, rest = rows[:, :screen], top[:, screen]
        exact = torch.baddbmm(take(self.neg_sq_norms, rows).unsqueeze(1), z.unsqueeze(1),
                              take(self.table, rows).transpose(1, 2), alpha=2.0).squeeze(1)  # (m, screen)
        rest_bound = rest.float().mul_(unit).add_(slack)
        values, order = exact.topk(k + 1, -1)
        best = rows.gather(1, order)
        return best[:, 0], best[:, :k], torch.maximum(values[:, k], rest_bound), values[:, 0] > rest_bound


class _Int8Table:
    """A table (V, D) as int8 rows with one scale, for the screen of :meth:`NearestEmbedding._screen`."""

    def __init__(self, table):
        low, high = torch.aminmax(table)
        self.scale = float(torch.maximum(-low, high).clamp_min(torch.finfo(torch.float32).tiny) / 127)  # s_e
        rows = table.mul(1 / self.scale).round_().clamp_(-127, 127)  # |table| / s_e <= 127 up to rounding
        self.residual = float(torch.add(table, rows, alpha=-self.scale).norm(dim=-1).max())  # max_v ||r_v||
        self.rows_t = rows.to(torch.int8).t()  # (D, V), the layout torch's CPU int8 matmul is fastest with

    FASTER = 2.0  # the screen runs where the int8 product takes at most 1/FASTER of the float32 product's time
    _fast = {}  # width D -> whether it does, measured once per process

    @classmethod
    def fast(cls, dim: int, rows: int = 128, cols: int = 1024) -> bool:
        """Whether torch's int8 matmul of (rows, dim) by (dim, cols) beats the float32 one by :attr:`FASTER` here
        (best of 3 each, once per process and width; a first int8 call over 10x the float32 time ends it early).
        Its CPU kernel's speed depends on the instruction set: on the benchmark's 2-core Xeon it took a quarter of
        the float32 product's time; on a 2-core AMD EPYC whose torch reports AVX2 as its best, 19-26x that time
        (1252 x 128 by 128 x 8000: 2.78 s against 0.12 s), which made the screen the decoder's largest cost."""
        if dim not in cls._fast:
            q, table_q = torch.ones(rows, dim, dtype=torch.int8), torch.ones(cols, dim, dtype=torch.int8).t()
            z, table = torch.ones(rows, dim), torch.ones(cols, dim)
            float32 = _best_seconds(lambda: torch.mm(z, table.t()))
            start = time.perf_counter()
            torch._int_mm(q, table_q)
            slow = time.perf_counter() - start > 10 * float32
            cls._fast[dim] = not slow and _best_seconds(lambda: torch._int_mm(q, table_q)) * cls.FASTER <= float32
        return cls._fast[dim]

    @staticmethod
    def works(table):
        """torch's int8 matmul runs here (it is a private op; a build without it falls back to float32)."""
        try:
            return torch._int_mm(torch.ones(32, table.size(1), dtype=torch.int8),
                                 torch.ones(table.size(1), 32, dtype=torch.int8)).eq(table.size(1)).all().item()
        except (RuntimeError, NotImplementedError):
            return False


def _best_seconds(fn, repeats: int = 3) -> float:
    """The shortest wall time of ``repeats`` calls of fn, after one call to warm it up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` for a LongTensor ``index`` of any shape into x's first dimension, through ``index_select``: on a
    CPU torch's advanced indexing copies rows 2.5-4x slower (the clamp's (M, 8) table rows: 0.85 against 0.30 ms;
    843 rows of an (M, 8000) product: 9.7 against 3.6 ms)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def row_top(scores: torch.Tensor, n: int, block: int = 64):
    """The n best (values, columns) of each row of scores (R, C), best first, as ``scores.topk(n)``.

    The n best scores of a row lie in the n ``block``-wide column blocks with the highest maxima, so the top-n runs
    over n blocks instead of C columns (torch's CPU ``topk``/``argmax`` over 8k columns cost a third of the
    product that made the scores; this is ~5x faster for n = 1). Columns past the last whole block are added.
    Blocks of 64 columns: on the benchmark's Xeon (512 rows x 8000 columns, one thread) 1.2 / 2.4 / 2.8 ms for
    n = 1 / 5 / 9 (int32), against 1.5 / 3.0 / 4.1 ms with 128 and 1.8 / 3.3 / 3.4 ms with 32 (measured with a
    gather of the blocks; with the index_select below, 15-20% less for n = 5 and 9, and 64 still the best).
    """
    rows, cols = scores.shape
    whole = cols - cols % block
    if whole < 4 * block * n:
        return scores.topk(min(n, cols), -1)
    per_row = whole // block
    blocks = scores[:, :whole].view(rows, per_row, block)
    top_blocks = blocks.amax(-1).topk(n, -1).indices  # (R, n)
    if whole == cols and scores.is_contiguous():
        # the chosen blocks as rows of a (R * per_row, block) view: index_select copies whole 64-column runs, where a
        # gather with an expanded index reads an index per element (512 x 8000, n = 9: 0.2 against 1.0 ms here)
        picked = (torch.arange(rows, device=scores.device).unsqueeze(1) * per_row + top_blocks).view(-1)
        inside = scores.view(rows * per_row, block).index_select(0, picked).view(rows, n * block)
    else:
        inside = blocks.gather(1, top_blocks.unsqueeze(-1).expand(-1, -1, block)).view(rows, n * block)
    values, pos = inside.topk(n, -1)
    columns = top_blocks.gather(1, torch.div(pos, block, rounding_mode="floor")) * block + pos % block
    if whole < cols:  # the tail's best compete with the blocks'
        tail_values, tail_columns = scores[:, whole:].topk(min(n, cols - whole), -1)
        values, pick = torch.cat([values, tail_values], 1).topk(n, -1)
        columns = torch.cat([columns, tail_columns + whole], 1).gather(1, pick)
    return values, columns


UNSHIFTED = 60.0  # row_logsumexp exponentiates a block unshifted where its rows' maxima lie within +-UNSHIFTED


def row_logsumexp(x: torch.Tensor, rows: int = 32, maxima: Optional[torch.Tensor] = None) -> torch.Tensor:
    """log sum_c exp(x[r, c]) of each row of x (R, C), as ``torch.logsumexp(x, -1)`` up to float rounding.

    On a CPU, ``rows`` rows at a time, so that each block's exponentials are summed while still in cache: for 8k
    columns, torch's ``logsumexp`` and ``log_softmax`` make full passes to memory and cost ~3x more. A block whose
    row maxima m all lie within +-``UNSHIFTED`` is exponentiated as it is, into one buffer: no exp(x) overflows,
    the largest term of each sum is a normal float32 (>= e^-60) and a sum of up to e^28 columns stays finite, so
    the shift by m saves nothing there but costs a pass (a rounding's logits, 1252 x 8000: 7.0 against 9.9 ms).
    Other blocks are shifted by m. Rows that are all -inf give -inf. maxima: each row's maximum (R,), where the
    caller has it, so that no pass finds them (one more here: ~3 ms).
    """
    if not x.is_cpu:
        return torch.logsumexp(x, -1)
    out = x.new_empty(x.shape[:-1])
    buffer = x.new_empty(min(rows, x.size(0)), x.size(-1))
    for i in range(0, x.size(0), rows):
        block = x[i : i + rows]
        top = block.amax(-1) if maxima is None else maxima[i : i + rows]
        low, high = torch.aminmax(top)
        if -UNSHIFTED <= float(low) and float(high) <= UNSHIFTED:
            terms = torch.exp(block, out=buffer[: block.size(0)])
            out[i : i + rows] = terms.sum(-1).log_()
            continue
        top = torch.where(top.isfinite(), top, torch.zeros_like(top)).unsqueeze(-1)
        out[i : i + rows] = (block - top).exp_().sum(-1).log_().add_(top.squeeze(-1))
    return out


def sample(
    denoise_fn: DenoiseFn,
    diffusion: GaussianDiffusion,
    z_T: torch.Tensor,
    decoding_steps: int,
    *,
    method: str = "ddim",
    clamp_embeddings: Optional[torch.Tensor] = None,
    clamp_mask: Optional[torch.Tensor] = None,
    self_condition: bool = False,
    keep_mask: Optional[torch.Tensor] = None,
    z0_fixed: Optional[torch.Tensor] = None,
    early_stop: int = 0,
    generator: Optional[torch.Generator] = None,
    return_unclamped: bool = False,
    return_indices: bool = False,
    clamp_final: bool = True,
    search: Optional[NearestEmbedding] = None,
) -> torch.Tensor:
    """Run the reverse process from z_T (B, L, D); return the final z0_hat (B, L, D).

    return_unclamped: also return the denoiser's last output before clamping (B, L, D), whose
    rounding log-probabilities score the candidates (a clamped z0_hat is an embedding row exactly).
    return_indices: also return the rows (B, L) of ``clamp_embeddings`` the last step clamped to (the
    rounded tokens; needs clamping), -1 where ``clamp_mask`` is False.
    clamp_embeddings: (V, D) rows to clamp z0_hat onto each step (None: no clamping).
    clamp_mask: (B, L) positions to clamp (None: all). Leave out those the output never reads, such as
    padding past a candidate's length or a fixed source: a position's search may cost a (V, D) product.
    early_stop: if > 0, leave out the last ``early_stop`` steps of the schedule (:func:`decoding_schedule`):
    N - early_stop network calls, and the z0_hat of the last one is the output.
    clamp_final: False leaves the last z0_hat unclamped, for a caller that rounds it itself from the product it
    needs for its scores anyway (the generator). Each clamp searches the table with :class:`NearestEmbedding`,
    which reuses the previous step's nearest rows where it can prove them still nearest.
    search: that :class:`NearestEmbedding` of ``clamp_embeddings`` (default: a new one), for a caller that
    searches the last z0_hat itself with the rows the clamps kept (the generator, with clamp_final False).
    """
    if method not in STEPS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {sorted(STEPS)}")
    steps = decoding_schedule(diffusion.num_steps, decoding_steps, early_stop)
    z_t = reset_clean(z_T, z0_fixed, keep_mask)
    if return_indices and (clamp_embeddings is None or not clamp_final):
        raise ValueError("return_indices needs clamp_embeddings and clamp_final (the indices are the clamped rows)")
    z0_hat = indices = None
    batch = z_T.shape[0]
    if clamp_embeddings is None:
        search = None
    elif search is None:
        search = NearestEmbedding(clamp_embeddings)
    for k, step in enumerate(steps):
        t = torch.full((batch,), step, dtype=torch.long, device=z_T.device)
        z0_hat = unclamped = denoise_fn(z_t, t, z0_hat if self_condition else None)
        if search is not None and (clamp_final or k + 1 < len(steps)):
            z0_hat, indices = _clamp(z0_hat, clamp_embeddings, search, clamp_mask, last=k + 1 == len(steps))
        z0_hat = reset_clean(z0_hat, z0_fixed, keep_mask)
        if k + 1 < len(steps):
            s = torch.full_like(t, steps[k + 1])
            z_t = reset_clean(STEPS[method](diffusion, z0_hat, z_t, t, s, generator), z0_fixed, keep_mask)
    out = (z0_hat,) + ((reset_clean(unclamped, z0_fixed, keep_mask),) if return_unclamped else ())
    out += (indices,) if return_indices else ()
    return out if len(out) > 1 else z0_hat


def _clamp(z0_hat, table, search, mask, last=False):
    """z0_hat (B, L, D) with the rows at mask (all when None) replaced by their nearest table row; the
    table rows (B, L), -1 where not clamped."""
    if mask is None:
        indices = search(z0_hat.reshape(-1, z0_hat.size(-1)), last=last).view(z0_hat.shape[:-1])
        return take(table, indices).to(z0_hat.dtype), indices
    at = mask.reshape(-1).nonzero().squeeze(1)  # the clamped positions, in z0_hat[mask]'s order
    flat = z0_hat.reshape(-1, z0_hat.size(-1))
    rows = search(flat.index_select(0, at), last=last)  # (M,)
    indices = torch.full((mask.numel(),), -1, dtype=torch.long, device=mask.device).index_copy_(0, at, rows)
    clamped = flat.index_copy(0, at, take(table, rows).to(z0_hat.dtype))  # not masked_scatter: 2x slower on a CPU
    return clamped.view(z0_hat.shape), indices.view(mask.shape)


STEPS = {
    "ddim": lambda d, z0_hat, z_t, t, s, g: d.ddim_step(z0_hat, z_t, t, s, generator=g),
    "ddpm": lambda d, z0_hat, z_t, t, s, g: d.ddpm_step(z0_hat, z_t, t, s, generator=g),
}
