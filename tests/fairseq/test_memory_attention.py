"""The stacks' attention modules: cross-attention that projects the memory once per reverse process
(MemoryAttention), and bidirectional self-attention through scaled_dot_product_attention (SelfAttention)."""
import copy

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention

from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.layers import MemoryAttention, SelfAttention, Stack, StackConfig

DIM, HEADS = 16, 4


def pair(seed=0):
    """fairseq's cross-attention and a MemoryAttention that took over a copy of its projections."""
    torch.manual_seed(seed)
    fairseq_attn = MultiheadAttention(DIM, HEADS, kdim=DIM, vdim=DIM, dropout=0.0, encoder_decoder_attention=True)
    return fairseq_attn.eval(), MemoryAttention(copy.deepcopy(fairseq_attn)).eval()


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    query, memory = torch.randn(5, 3, DIM, generator=g), torch.randn(7, 3, DIM, generator=g)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:], padding[2, 2:] = True, True
    return query, memory, padding


def test_matches_fairseq_cross_attention_with_padding():
    fairseq_attn, attn = pair()
    query, memory, padding = inputs()
    with torch.no_grad():
        expect, _ = fairseq_attn(query, memory, memory, key_padding_mask=padding, static_kv=True)
        got, _ = attn(query, memory, memory, key_padding_mask=padding, static_kv=True)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)
    assert sorted(attn.state_dict()) == sorted(fairseq_attn.state_dict())


def calls(module):
    count = []
    module.register_forward_hook(lambda *unused: count.append(1))
    return count


def counted():
    """A MemoryAttention, the list its key projection appends to on every call, and inputs."""
    attn = pair()[1]
    return attn, calls(attn.k_proj), inputs()


def test_memory_projected_once_per_memory_without_gradients():
    attn, k_calls, (query, memory, padding) = counted()
    with torch.no_grad():
        first, _ = attn(query, memory, memory, key_padding_mask=padding)
        for _ in range(3):  # the steps of a reverse process: new queries, the same memory
            again, _ = attn(query, memory, memory, key_padding_mask=padding)
        assert len(k_calls) == 1 and torch.equal(again, first)
        attn(query, memory.clone(), memory.clone(), key_padding_mask=padding)  # another memory
        assert len(k_calls) == 2
        other = memory.clone()
        attn(query, other, other, key_padding_mask=padding)
        other.mul_(2.0)  # the same tensor, changed in place: projected again, and the result follows it
        changed, _ = attn(query, other, other, key_padding_mask=padding)
        assert len(k_calls) == 4
        fresh, _ = pair()[1](query, other.clone(), other.clone(), key_padding_mask=padding)
        torch.testing.assert_close(changed, fresh)


def test_training_projects_at_every_call_and_gradients_reach_the_projections():
    _, attn = pair()
    attn.train()
    k_calls = calls(attn.k_proj)
    query, memory, padding = inputs()
    memory.requires_grad_(True)
    for _ in range(2):
        out, _ = attn(query, memory, memory, key_padding_mask=padding)
        out.sum().backward()
    assert len(k_calls) == 2 and attn.k_proj.weight.grad is not None and memory.grad is not None


def test_refuses_an_attention_mask_and_incremental_state():
    _, attn = pair()
    query, memory, padding = inputs()
    with pytest.raises(DifftextError, match="no attention mask"):
        attn(query, memory, memory, attn_mask=torch.zeros(5, 7))
    with pytest.raises(DifftextError, match="incremental"):
        attn(query, memory, memory, incremental_state={"x": {}})


def test_decoder_stack_uses_it_and_keeps_state_dict_names():
    args = StackConfig()
    for name, value in dict(model_dim=DIM, ffn_dim=32, attention_heads=HEADS, dropout=0.0,
                            normalize_before=False).items():
        setattr(args, name, value)
    stack = Stack(args, layers=2, max_positions=16, cross_attention=True).eval()
    assert all(isinstance(layer.encoder_attn, MemoryAttention) for layer in stack.layers)
    assert "layers.0.encoder_attn.k_proj.weight" in stack.state_dict()
    query, memory, padding = inputs()
    x, self_padding = query.transpose(0, 1), torch.zeros(3, 5, dtype=torch.bool)
    with torch.no_grad():
        got = stack(x, self_padding, memory=memory, memory_padding_mask=padding)
        for layer in stack.layers:  # the same weights through fairseq's own attention
            fairseq_attn = MultiheadAttention(DIM, HEADS, kdim=DIM, vdim=DIM, encoder_decoder_attention=True)
            fairseq_attn.load_state_dict(layer.encoder_attn.state_dict())
            layer.encoder_attn = fairseq_attn.eval()
        expect = stack(x, self_padding, memory=memory, memory_padding_mask=padding)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_self_attention_matches_fairseq_with_padding_and_the_stacks_use_it():
    torch.manual_seed(3)
    fairseq_attn = MultiheadAttention(DIM, HEADS, dropout=0.0, self_attention=True).eval()
    attn = SelfAttention(copy.deepcopy(fairseq_attn)).eval()
    x, _, _ = inputs()
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:], padding[2, 1:] = True, True
    with torch.no_grad():
        expect, _ = fairseq_attn(x, x, x, key_padding_mask=padding, need_weights=False)
        got, _ = attn(x, x, x, key_padding_mask=padding, need_weights=False)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)
    assert sorted(attn.state_dict()) == sorted(fairseq_attn.state_dict())
    with pytest.raises(DifftextError, match="bidirectional"):
        attn(x, x, x, attn_mask=torch.zeros(5, 5))
    args = StackConfig()
    for name, value in dict(model_dim=DIM, ffn_dim=32, attention_heads=HEADS, dropout=0.0,
                            normalize_before=False).items():
        setattr(args, name, value)
    for cross in (False, True):
        stack = Stack(args, layers=2, max_positions=16, cross_attention=cross)
        assert all(isinstance(layer.self_attn, SelfAttention) for layer in stack.layers)


def test_inference_mode_works_and_projects_afresh():
    """Inference tensors keep no version counter, so an in-place change could not be detected: no reuse."""
    attn, k_calls, (query, memory, padding) = counted()
    with torch.no_grad():
        expect, _ = attn(query, memory, memory, key_padding_mask=padding)
    with torch.inference_mode():
        memory = memory.clone()
        for _ in range(2):
            got, _ = attn(query, memory, memory, key_padding_mask=padding)
            torch.testing.assert_close(got, expect)
    assert len(k_calls) == 3
