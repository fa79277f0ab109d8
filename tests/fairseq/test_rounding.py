"""The generator's last clamp, taken from the rounding's logits instead of a second (V, D) product."""
import torch

from difftext.samplers.continuous import nearest_embedding
from fairseq_plugins.generator import DiffusionGenerator


def test_nearest_from_logits_is_the_nearest_row():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(3000, 32, generator=g) * (1 + torch.rand(3000, 1, generator=g))
    z0 = table[torch.randint(0, 3000, (400,), generator=g)] + 0.7 * torch.randn(400, 32, generator=g)
    assert torch.equal(DiffusionGenerator._nearest(z0, z0 @ table.t(), table), nearest_embedding(z0, table))


def test_nearest_from_half_precision_logits_searches_in_float32():
    table = torch.randn(500, 16, generator=torch.Generator().manual_seed(1)).half()
    z0 = table[[3, 99, 400]].float().add(0.01).half()
    assert DiffusionGenerator._nearest(z0, (z0 @ table.t()).float(), table).tolist() == [3, 99, 400]
