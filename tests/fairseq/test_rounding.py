"""The generator's last clamp, taken from the rounding's logits instead of a second (V, D) product."""
import math
from types import SimpleNamespace

import pytest
import torch

from difftext.samplers.continuous import NearestEmbedding, nearest_embedding
from fairseq_plugins.generator import DiffusionGenerator


def test_nearest_from_logits_is_the_nearest_row():
    """The clamps' search goes on from its kept rows (the clamp of the step before, then the rounding)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3000, 32, generator=g) * (1 + torch.rand(3000, 1, generator=g))
    z0 = table[torch.randint(0, 3000, (400,), generator=g)] + 0.7 * torch.randn(400, 32, generator=g)
    search = NearestEmbedding(table)
    search(z0 - 0.1 * torch.randn(400, 32, generator=g))  # the last clamp
    kept = search.cand.clone()
    assert torch.equal(DiffusionGenerator._nearest(z0, z0 @ table.t(), table, search), nearest_embedding(z0, table))
    assert search.searches == 800 and 400 < search.full_searches < 800
    assert torch.equal(search.cand, kept)  # the rounding is the last search: its full searches keep nothing


def test_nearest_from_half_precision_logits_searches_in_float32():
    table = torch.randn(500, 16, generator=torch.Generator().manual_seed(1)).half()
    z0 = table[[3, 99, 400]].float().add(0.01).half()
    assert DiffusionGenerator._nearest(z0, (z0 @ table.t()).float(), table, None).tolist() == [3, 99, 400]


class _Model:
    """The parts of an embedding-diffusion model the continuous decoding reads: a fixed table, an identity process."""

    self_conditioning = False

    def __init__(self, table):
        self.table, self.rounded = table, []  # the points of each output_logits call

    def decoding_diffusion(self, noise_factor):
        from difftext.processes.gaussian import GaussianDiffusion, NoiseFactor
        from difftext.schedules.gaussian import build_schedule

        return GaussianDiffusion(build_schedule("sqrt"), 50, NoiseFactor(1.0, False))

    def latent_table(self):
        return self.table

    def parameters(self):
        return iter(())

    def output_logits(self, z0, table=None):
        self.rounded.append(z0.size(0))
        return z0 @ (self.table if table is None else table).t()


@pytest.mark.parametrize("clamping", [True, False])
@pytest.mark.parametrize("scale", [1.0, 40.0])
@pytest.mark.parametrize("chunk", [None, 2])  # the rounding's points per output_logits call (None: all at once)
@pytest.mark.parametrize("free", [False, True])  # a layer-normed table (Difformer) or free embeddings (DiffuSeq)
def test_rounding_scores_are_the_picked_tokens_log_softmax(clamping, scale, chunk, free):
    """Tokens: the nearest rows (clamping) or the rounding's argmax, never bos; scores: log_softmax of the rounding
    logits (bos banned) at those tokens, at the output positions only. At scale 40 the logits reach ~640 and bos's
    leads its row by more than exp's range: the log-softmax must shift by the largest logit but bos's. Rounded a
    chunk of points at a time, each chunk's search goes on from its own points' kept rows."""
    from fairseq_plugins.models.embedding_diffusion import DecodingProblem

    g = torch.Generator().manual_seed(3)
    bos, pad, vocab, dim = 0, 1, 700, 16
    table = torch.nn.functional.layer_norm(torch.randn(vocab, dim, generator=g), (dim,))
    if free:
        table = table * (0.5 + torch.rand(vocab, 1, generator=g))
    z0 = 0.3 * table[torch.randint(2, vocab, (3, 5), generator=g)] + 0.2 * torch.randn(3, 5, dim, generator=g)
    z0[0, 1] = table[bos]  # nearest row bos: the rounding's best other token instead
    z0 = z0 * scale
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    problem = DecodingProblem(shape=z0.shape, denoise_fn=lambda z_t, t, sc: z0.clone(), owner=torch.arange(3),
                              output_mask=mask, stop_at_eos=False)
    gen = DiffusionGenerator.__new__(DiffusionGenerator)
    gen.model, gen.bos, gen._table, gen._table_key, gen._search = _Model(table), bos, None, None, None
    gen.cfg = SimpleNamespace(decoding_noise_factor=None, decoding_steps=3, decoding_method="ddim",
                              clamping=clamping, decoding_early_stop=0)
    gen.pad = pad
    if chunk:
        gen.ROUNDING_LOGITS = chunk * vocab + vocab - 1  # chunk points, not chunk + 1
    tokens, scores = gen._sample_continuous(problem, torch.device("cpu"))
    assert gen.model.rounded == ([12] if chunk is None else [2] * 6)

    logits = (z0 @ table.t()).double()
    logits[..., bos] = float("-inf")
    expect = logits.argmax(-1)
    if clamping:
        near = torch.cdist(z0.double(), table.double()).argmin(-1)
        expect = torch.where(near.eq(bos), expect, near)
    assert torch.equal(tokens[mask], expect[mask]) and tokens[~mask].eq(pad).all() and tokens.ne(bos).all()
    expect_scores = torch.log_softmax(logits, -1).gather(-1, expect.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(scores[mask].double(), expect_scores[mask], rtol=0, atol=1e-5 * scale)
    assert scores[~mask].eq(0).all()


@pytest.mark.parametrize("rows", [1, 32, 100])
@pytest.mark.parametrize("offset", [0.0, 500.0, -500.0])
def test_row_logsumexp_is_logsumexp(rows, offset):
    """Both of its paths: blocks within +-60 exponentiated unshifted, the others (an offset of +-500 overflows or
    underflows exp) shifted by their maxima; with the maxima given or found."""
    from difftext.samplers import continuous
    from difftext.samplers.continuous import row_logsumexp

    x = 20 * torch.randn(70, 900, generator=torch.Generator().manual_seed(rows)) + offset
    x[:10] -= offset  # the first blocks within +-60 whatever the offset
    x[3, 5:] = float("-inf")
    x[4] = float("-inf")  # a row with nothing: -inf, not nan
    expect = torch.logsumexp(x.double(), -1)
    for maxima in (None, x.amax(-1)):
        torch.testing.assert_close(row_logsumexp(x, rows=rows, maxima=maxima).double(), expect, rtol=1e-6, atol=1e-5)
    assert row_logsumexp(x[:0]).shape == (0,)
    assert continuous.UNSHIFTED < 88 - math.log(x.size(1))  # no unshifted sum can overflow float32


def test_the_latent_table_is_computed_again_only_when_a_parameter_changes():
    """Batches reuse the table (and with it the clamp search's int8 table) while the model stays the same."""

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.norm, self.calls = torch.nn.Embedding(1500, 16), torch.nn.LayerNorm(16), 0

        def latent_table(self):
            self.calls += 1
            return self.norm(self.embed.weight)

    gen = DiffusionGenerator.__new__(DiffusionGenerator)
    gen.model, gen._table, gen._table_key, gen._search = Embedder(), None, None, None
    with torch.no_grad():
        first = gen._latent_table()
        gen._search = NearestEmbedding(first)
        assert gen._latent_table() is first and gen.model.calls == 1 and gen._search is not None
        gen.model.embed.weight[3].add_(1.0)  # an update in place
        second = gen._latent_table()
        assert gen.model.calls == 2 and gen._search is None and not torch.equal(second, first)
        assert torch.equal(second, gen.model.norm(gen.model.embed.weight))
        gen.model.norm.weight.mul_(2)
        assert gen._latent_table() is not second and gen.model.calls == 3
        gen.model.to(torch.bfloat16)
        assert gen._latent_table().dtype == torch.bfloat16 and gen.model.calls == 4
