"""The clamp's nearest-row search: exact against brute force, and pruned between close steps."""
import time

import pytest
import torch

from difftext.samplers.continuous import NearestEmbedding, _Int8Table, nearest_embedding, row_top

MEASURED_FAST = _Int8Table.fast  # whether the int8 matmul is fast on this CPU, as the decoder measures it


@pytest.fixture(autouse=True)
def int8_screen_everywhere(monkeypatch):
    """The screen's maths is tested on every CPU, whether or not its int8 matmul is fast enough to be used."""
    monkeypatch.setattr(_Int8Table, "fast", classmethod(lambda cls, dim: True))


def brute(z, table):
    return torch.cdist(z.double(), table.double()).argmin(-1)


def walk(table, points, steps, step_size, seed=0):
    """Points near table rows moving by ``step_size`` per step (as a reverse process's z0_hat does)."""
    g = torch.Generator().manual_seed(seed)
    z = table[torch.randint(0, table.size(0), (points,), generator=g)] + torch.randn(points, table.size(1), generator=g)
    for _ in range(steps):
        yield z
        z = z + step_size * torch.randn(z.shape, generator=g)


@pytest.mark.parametrize("vocab", [7, 300, 2000, 2100])  # small (plain topk), whole blocks, a tail past them
@pytest.mark.parametrize("candidates", [0, 1, 4, 12])  # 12: more kept rows than the int8 screen scores
def test_search_is_exact_over_a_walk(vocab, candidates):
    g = torch.Generator().manual_seed(vocab)
    table = torch.randn(vocab, 16, generator=g) * (1 + torch.rand(vocab, 1, generator=g))  # unequal norms
    search = NearestEmbedding(table, candidates)
    for z in walk(table, 200, 12, 0.05):
        assert torch.equal(search(z), brute(z, table))


def test_small_moves_skip_most_full_searches_large_moves_do_not():
    """The point of the cache: close steps reuse the kept rows; a jump sends points back to the full search."""
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(1)), (32,))
    small = NearestEmbedding(table, 4)
    for z in walk(table, 300, 10, 0.01):
        small(z)
    assert small.full_searches < 0.25 * small.searches  # 300 on the first step, then few
    jumpy = NearestEmbedding(table, 4)
    for z in walk(table, 300, 10, 2.0):
        assert torch.equal(jumpy(z), brute(z, table))
    assert jumpy.full_searches > 0.9 * jumpy.searches


@pytest.mark.parametrize("equal_norms", [True, False])
def test_points_growing_along_themselves_reuse_their_rows(equal_norms):
    """A reverse process's z0_hat grows along itself as the noise falls: the scaled bound keeps those points off
    the full search, where the moving bound (2 R ||z - z_ref||) alone sends most of them back; still exact.
    (Points between three rows, so that the kept rows' lead is small against R ||z - z_ref||.)"""
    g = torch.Generator().manual_seed(4)
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=g), (32,))
    if not equal_norms:
        table = table * (1 + 0.01 * torch.rand(2048, 1, generator=g))

    def walk_outwards(search):  # the same points and moves for every search
        g = torch.Generator().manual_seed(5)
        rows = torch.randint(0, 2048, (300, 3), generator=g)
        z = 0.2 * table[rows].mean(1) + 0.05 * torch.randn(300, 32, generator=g)
        for _ in range(10):
            assert torch.equal(search(z), brute(z, table))
            z = z * 1.15 + 0.002 * torch.randn(z.shape, generator=g)
        return search.full_searches

    assert walk_outwards(NearestEmbedding(table, 4)) < 1.5 * 300  # the first step, then few
    only = NearestEmbedding(table, 4)
    only._bound = lambda z, ref, next_score: next_score + 2 * only.radius * (z - ref).norm(dim=-1)  # the moving bound
    assert walk_outwards(only) > 3 * 300


def test_int8_screen_settles_points_near_one_row():
    """On a CPU a full search screens the table with an int8 product and scores its best rows in float32: points
    near one row (as a trained model's z0_hat are) are settled there, exactly."""
    table = torch.nn.functional.layer_norm(torch.randn(4096, 32, generator=torch.Generator().manual_seed(8)), (32,))
    search = NearestEmbedding(table, 4)
    for z in walk(table, 300, 6, 0.3, seed=8):
        assert torch.equal(search(z), brute(z, table))
    assert search.int8 and search.full_searches >= 300 and search.unscreened < 0.05 * search.full_searches


def test_int8_screen_leaves_rows_it_cannot_rank_to_float32():
    """Forty rows closer to each other than the table's int8 step, and points amid them: the int8 products cannot
    rank those rows, so the screen's error bound must send every point on to the float32 product (without the
    bound, the screen's pick is wrong for ~10% of them)."""
    g = torch.Generator().manual_seed(7)
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=g), (32,))
    step = float(table.abs().max() / 127)
    table[:40] = torch.nn.functional.layer_norm(table[0] + 2 * step * torch.randn(40, 32, generator=g), (32,))
    z = table[0] + 2 * step * torch.randn(300, 32, generator=g)
    search = NearestEmbedding(table, 4)
    assert torch.equal(search(z), brute(z, table)) and search.int8 and search.unscreened == 300


def test_screened_search_bounds_every_row_it_does_not_keep():
    """The reuse between steps rests on one invariant: every row a point does not keep scores at most its recorded
    bound. Points clearly nearest one row, with a hundred rows the int8 products cannot rank next: the screen
    settles the points, and its bound must cover the rows it never scored in float32 (the (K+1)-th score among
    the rows it did score is too low here)."""
    g = torch.Generator().manual_seed(7)
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=g), (32,))
    step = float(table.abs().max() / 127)
    table[1:101] = torch.nn.functional.layer_norm(table[0] + 0.5 * step * torch.randn(100, 32, generator=g), (32,))
    z = 0.6 * table[200] + 0.4 * table[0] + 0.2 * step * torch.randn(300, 32, generator=g)
    search = NearestEmbedding(table, 4)
    assert torch.equal(search(z), torch.full((300,), 200)) and search.unscreened == 0
    scores = 2 * z.double() @ table.double().t() - table.double().pow(2).sum(-1)
    not_kept = scores.scatter(1, search.cand, float("-inf")).amax(-1)
    assert (not_kept <= search.next_score.double() + 1e-4).all()


@pytest.mark.parametrize("step, rechecks_settle", [(0.1, True), (0.5, False)])
def test_a_recheck_keeps_the_rows_that_are_still_nearest(step, rechecks_settle):
    """A point whose kept rows fail the bound is rechecked by the screen's product: where its best kept row beats
    every row it does not keep, it keeps its rows and takes a new bound, with no top-k over the table; where the
    nearest row has moved outside them (large steps), it is ranked in full. Exact throughout, and every row a
    point does not keep scores at most its bound at z_ref."""
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(21)), (32,))
    search = NearestEmbedding(table, 4)
    for z in walk(table, 300, 8, step, seed=21):
        assert torch.equal(search(z), brute(z, table))
    scores = 2 * search.z_ref.double() @ table.double().t() - table.double().pow(2).sum(-1)
    not_kept = scores.scatter(1, search.cand, float("-inf")).amax(-1)
    assert (not_kept <= search.next_score.double() + 1e-4).all()
    again = search.full_searches - 300  # full searches after the first step's
    assert search.int8 and again > 250 and search.unscreened == 0
    if rechecks_settle:
        assert search.rechecked >= 0.95 * again
    else:
        assert 0.5 * again < search.rechecked < 0.9 * again


def test_int8_screen_is_for_tables_of_near_equal_norms():
    """The screen ranks rows by their products alone; with unequal norms its bound would rarely settle a point."""
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(13)), (32,))
    z = table[:20] + 0.3 * torch.randn(20, 32, generator=torch.Generator().manual_seed(14))
    for spread, screened in [(0.0, True), (0.004, True), (0.02, False)]:
        scaled = table * (1 + spread * torch.linspace(0, 1, 2048)).unsqueeze(1)  # ||e||^2 up to (1 + spread)^2
        search = NearestEmbedding(scaled, 4)
        assert torch.equal(search(z), brute(z, scaled)) and bool(search.int8) == screened


def test_a_search_takes_over_the_int8_table_of_an_earlier_one_only_for_the_same_table():
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(11)), (32,))
    z = table[:50] + 0.3 * torch.randn(50, 32, generator=torch.Generator().manual_seed(12))
    first = NearestEmbedding(table, 4)
    first(z)
    same = NearestEmbedding(table.clone(), 4, reuse=first)
    other = table.clone()
    other[7, 3] += 1e-3
    changed = NearestEmbedding(other, 4, reuse=first)
    assert same.int8 is first.int8 and changed.int8 is None
    assert same.neg_sq_norms is first.neg_sq_norms  # and the row norms
    assert changed.neg_sq_norms[7] == -(other[7] * other[7]).sum() != first.neg_sq_norms[7]
    assert torch.equal(same(z), brute(z, table)) and torch.equal(changed(z), brute(z, other))
    assert changed.int8 is not first.int8


def test_without_torch_int8_matmul_the_search_is_float32(monkeypatch):
    def missing(*args):
        raise RuntimeError("int_mm is not built for this backend")

    monkeypatch.setattr(torch, "_int_mm", missing)
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(9)), (32,))
    z = table[:100] + 0.3 * torch.randn(100, 32, generator=torch.Generator().manual_seed(10))
    search = NearestEmbedding(table, 4)
    assert torch.equal(search(z), brute(z, table)) and search.int8 is False and search.full_searches == 100


def test_the_screen_runs_only_where_the_int8_matmul_is_fast(monkeypatch):
    """Where torch's int8 matmul is slower than FASTER times under the float32 one (an AVX2 AMD EPYC: ~20x slower),
    the search skips the screen; the result is exact either way. Slowed here by a sleep in one product or the other."""
    monkeypatch.setattr(_Int8Table, "fast", MEASURED_FAST)
    int_mm, mm = torch._int_mm, torch.mm
    table = torch.nn.functional.layer_norm(torch.randn(2048, 32, generator=torch.Generator().manual_seed(9)), (32,))
    z = table[:100] + 0.3 * torch.randn(100, 32, generator=torch.Generator().manual_seed(10))

    def slowed(op, seconds):
        def run(*args):
            time.sleep(seconds)
            return op(*args)
        return run

    # 0.05 s: more than twice an int8 product of 128 x 32 by 32 x 1024 on that EPYC (~4 ms)
    for slow_op, screened in (("_int_mm", False), ("mm", True)):
        monkeypatch.setattr(_Int8Table, "_fast", {})  # measured again
        monkeypatch.setattr(torch, "_int_mm", slowed(int_mm, 0.005) if slow_op == "_int_mm" else int_mm)
        monkeypatch.setattr(torch, "mm", slowed(mm, 0.05) if slow_op == "mm" else mm)
        search = NearestEmbedding(table, 4)
        assert _Int8Table.fast(32) is screened and _Int8Table._fast == {32: screened}
        assert torch.equal(search(z), brute(z, table)) and bool(search.int8) is screened


def test_new_points_are_searched_in_full():
    table = torch.randn(500, 8, generator=torch.Generator().manual_seed(2))
    search = NearestEmbedding(table, 4)
    a, b = torch.randn(40, 8), torch.randn(25, 8)
    assert torch.equal(search(a), brute(a, table))
    assert torch.equal(search(b), brute(b, table)) and search.full_searches == 65  # other points: no reuse


def test_half_precision_points_are_searched_in_float32():
    table = torch.randn(3000, 16, generator=torch.Generator().manual_seed(3)) * 100  # ||e||^2 > fp16 max
    z = table[[5, 700, 2999]] + 0.5
    assert NearestEmbedding(table.half(), 4)(z.half()).tolist() == [5, 700, 2999]
    assert nearest_embedding(z.half().view(1, 3, 16), table.half()).tolist() == [[5, 700, 2999]]


@pytest.mark.parametrize("cols", [5, 600, 2048, 2100])
@pytest.mark.parametrize("n", [1, 3])
def test_row_top_is_topk(cols, n):
    scores = torch.randn(33, cols, generator=torch.Generator().manual_seed(cols))
    values, columns = row_top(scores, n, block=64)
    expect = scores.topk(min(n, cols), -1)
    assert torch.equal(values, expect.values) and torch.equal(columns, expect.indices)


@pytest.mark.parametrize("n", [1, 9])
def test_row_top_is_topk_on_int_products_and_views(n):
    """The int32 products of the int8 screen, with ties, and a non-contiguous view (the other block path)."""
    g = torch.Generator().manual_seed(n)
    scores = torch.randint(-50, 50, (40, 2 * 64 * 10), generator=g, dtype=torch.int32)
    for view in (scores, scores.t().contiguous().t(), scores[::2]):
        values, columns = row_top(view, n, block=64)
        assert torch.equal(values, view.topk(n, -1).values)
        assert torch.equal(view.gather(1, columns), values)  # ties may pick other columns of the same value


@pytest.mark.parametrize("spread", [0.0, 0.05, 1.0])  # equal norms (layer norm), nearly equal, unequal
def test_full_searches_read_the_products_the_caller_made(spread):
    """The rounding's logits z E^T stand in for the search's own product: same rows as brute force, at the first
    call and after a step, and the rows do come from the products given (those of other points give theirs)."""
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.layer_norm(torch.randn(3000, 32, generator=g), (32,))
    table = table * (1 + spread * torch.rand(3000, 1, generator=g))
    z = table[torch.randint(0, 3000, (400,), generator=g)] + 0.7 * torch.randn(400, 32, generator=g)
    search = NearestEmbedding(table, 4)
    assert torch.equal(search(z, products=z @ table.t()), brute(z, table))
    z = z + 0.3 * torch.randn(z.shape, generator=g)  # a step: some points reuse their rows, others search in full
    assert torch.equal(search(z, products=z @ table.t()), brute(z, table)) and search.full_searches > 400
    other = z.flip(0)
    assert torch.equal(NearestEmbedding(table, 4)(z, products=other @ table.t()), brute(other, table))


@pytest.mark.parametrize("given", [False, True])  # the int8 screen / the caller's products
def test_last_search_finds_the_nearest_rows_and_keeps_nothing(given):
    """``last=True`` (no search of these points follows): brute force's rows, a top-1 without any kept rows, and
    the rows kept by the steps before it stay as they were, still exact for a search after it."""
    g = torch.Generator().manual_seed(4)
    table = torch.nn.functional.layer_norm(torch.randn(3000, 32, generator=g), (32,))
    z = table[torch.randint(0, 3000, (300,), generator=g)] + 0.7 * torch.randn(300, 32, generator=g)

    def products(x):
        return x @ table.t() if given else None

    first = NearestEmbedding(table, 4)
    assert torch.equal(first(z, products(z), last=True), brute(z, table)) and first.cand is None
    search = NearestEmbedding(table, 4)
    search(z, products(z))
    kept = [search.cand.clone(), search.next_score.clone(), search.z_ref.clone(), search.kept_rows.clone()]
    moved = z + 0.5 * torch.randn(z.shape, generator=g)
    full = search.full_searches
    assert torch.equal(search(moved, products(moved), last=True), brute(moved, table))
    assert search.full_searches > full  # some points were searched in full, and kept nothing
    after = [search.cand, search.next_score, search.z_ref, search.kept_rows]
    assert all(torch.equal(a, b) for a, b in zip(kept, after))
    again = z + 0.3 * torch.randn(z.shape, generator=g)
    assert torch.equal(search(again, products(again)), brute(again, table))


@pytest.mark.parametrize("given", [False, True])  # the int8 screen / the caller's products
def test_last_search_in_parts_reads_each_points_own_rows(given):
    """A last search a chunk at a time (``points``: the rows of the points it holds) goes on from each point's own
    kept rows: brute force's rows and the same number of full searches as one call over all points. Read from
    other points' rows, most points would fail their bound (a free table: the products do not settle them)."""
    g = torch.Generator().manual_seed(6)
    table = torch.randn(3000, 32, generator=g) * (1 + torch.rand(3000, 1, generator=g))  # unequal norms
    z = table[torch.randint(0, 3000, (300,), generator=g)] + 0.7 * torch.randn(300, 32, generator=g)
    moved = z + 0.05 * torch.randn(z.shape, generator=g)
    searches = [NearestEmbedding(table, 4), NearestEmbedding(table, 4)]
    for search in searches:
        search(z)
    whole, parts = searches
    full = parts.full_searches
    assert torch.equal(whole(moved, moved @ table.t() if given else None, last=True), brute(moved, table))
    found = [parts(moved[i:i + 64], moved[i:i + 64] @ table.t() if given else None, last=True, points=slice(i, i + 64))
             for i in range(0, 300, 64)]
    assert torch.equal(torch.cat(found), brute(moved, table))
    assert parts.full_searches == whole.full_searches < full + 30 and parts.searches == 600
    with pytest.raises(ValueError, match="must be the last one"):
        parts(moved[:64], points=slice(0, 64))


def test_a_search_from_products_scores_every_row_where_their_ranks_mislead():
    """On a table of nearly equal norms a search from the caller's products scores only the rows of highest
    product, unless a bound says another row may score more: here the nearest row is only the third by product."""
    table = torch.nn.functional.layer_norm(torch.randn(2000, 32, generator=torch.Generator().manual_seed(5)), (32,))
    base = table[0].clone()
    table[1], table[2] = base, 0.996 * base  # row 2 is a little shorter than rows 0 and 1 (0.8%)
    z = 0.5 * base.unsqueeze(0)
    products = z @ table.t()
    assert products[0].topk(3).indices.tolist()[2] == 2 and brute(z, table).tolist() == [2]
    search = NearestEmbedding(table, 4)
    assert search.equal_norms
    assert search(z, products=products, last=True).tolist() == [2]  # the top 2 products' rows are not it
    assert search(z, products=products).tolist() == [2] and search.cand[0, 0] == 2
