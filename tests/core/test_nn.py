"""Small modules: time embedding and the uniform-copy decoder input."""
import torch

from difftext.nn import TimeEmbedding, timestep_embedding, uniform_copy


def test_timestep_embedding_shape_and_distinct_times():
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 500.0]), 9)
    assert emb.shape == (3, 9)
    assert torch.allclose(emb[0, :4], torch.ones(4)) and torch.allclose(emb[0, 4:8], torch.zeros(4))
    assert not torch.allclose(emb[1], emb[2])
    assert TimeEmbedding(8)(torch.rand(5)).shape == (5, 8)
    assert TimeEmbedding(8).to(torch.bfloat16)(torch.rand(5)).dtype == torch.bfloat16


def test_uniform_copy_left_and_right_padding():
    src = torch.arange(1, 6, dtype=torch.float).view(1, 5, 1).repeat(2, 1, 1)  # values 1..5
    left = torch.tensor([[True, True, False, False, False]])  # tokens 3, 4, 5
    right = torch.tensor([[False, False, False, True, True]])  # tokens 1, 2, 3
    mask = torch.cat([left, right])
    out = uniform_copy(src, mask, torch.tensor([6, 3]), 6).squeeze(-1)
    assert out[0].tolist() == [3, 3, 4, 4, 5, 5]
    assert out[1, :3].tolist() == [1, 2, 3], "equal lengths copy one to one"
    assert set(out[1, 3:].tolist()) <= {1.0, 2.0, 3.0}, "positions past the target length stay inside the source"


def test_uniform_copy_shorter_target_spans_the_source():
    src = torch.arange(10, dtype=torch.float).view(1, 10, 1)
    out = uniform_copy(src, torch.zeros(1, 10, dtype=torch.bool), torch.tensor([5]), 5).squeeze()
    assert out.tolist() == [0, 2, 4, 6, 8]
