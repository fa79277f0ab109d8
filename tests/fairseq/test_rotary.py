"""Rotary position embeddings in the transformer stack (``--position-encoding rotary``).

The reference below writes RoFormer's rotation with complex numbers (each pair of features (i, i + d/2) is one
complex number, rotated by position * theta_i), independently of the stack's real-valued rotate-half form.
"""
import math

import pytest
import torch
from fairseq.modules.multihead_attention import MultiheadAttention

from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.layers import RotarySelfAttention, Stack, StackConfig

DIM, HEADS = 16, 2


def rotary(seed=0):
    torch.manual_seed(seed)
    return RotarySelfAttention(MultiheadAttention(DIM, HEADS, dropout=0.0, self_attention=True)).eval()


def reference(attn, x):
    """x (L, C), no padding, positions 1..L -> (L, C) attention output."""
    length, dh = x.size(0), DIM // HEADS
    theta = 10000.0 ** (-torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    phase = torch.exp(1j * torch.arange(1, length + 1, dtype=torch.float64)[:, None] * theta)  # (L, dh/2)
    q, k, v = (proj(x).double().view(length, HEADS, dh) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    outs = []
    for h in range(HEADS):
        qc = torch.complex(q[:, h, : dh // 2], q[:, h, dh // 2:]) * phase
        kc = torch.complex(k[:, h, : dh // 2], k[:, h, dh // 2:]) * phase
        scores = (qc @ kc.conj().t()).real / math.sqrt(dh)  # Re <q_m e^{im theta}, k_n e^{in theta}>
        outs.append(scores.softmax(-1) @ v[:, h])
    return attn.out_proj(torch.cat(outs, -1).float())


def test_rotary_attention_matches_the_complex_form_of_roformer():
    attn, x = rotary(), torch.randn(7, 1, DIM)
    with torch.no_grad():
        ours, _ = attn(x, x, x, key_padding_mask=torch.zeros(1, 7, dtype=torch.bool))
        assert torch.allclose(ours[:, 0], reference(attn, x[:, 0]), atol=1e-5)


def test_scores_depend_on_relative_positions_only_so_padding_moves_nothing():
    attn, x = rotary(), torch.randn(5, 1, DIM)
    pad = torch.randn(3, 1, DIM)
    with torch.no_grad():
        plain, _ = attn(x, x, x, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool))
        left = torch.cat([pad, x])
        padded, _ = attn(left, left, left, key_padding_mask=torch.tensor([[True] * 3 + [False] * 5]))
    assert torch.allclose(padded[3:], plain, atol=1e-6)


def test_rotary_attention_sees_order_where_plain_attention_does_not():
    attn, x = rotary(), torch.randn(6, 1, DIM)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        out, _ = attn(x, x, x)
        y = x[order]
        permuted, _ = attn(y, y, y)
    assert not torch.allclose(permuted, out[order], atol=1e-3)  # plain attention is permutation-equivariant


def stack(position_encoding, **extra):
    cfg = StackConfig(model_dim=DIM, ffn_dim=32, attention_heads=HEADS, dropout=0.0,
                      position_encoding=position_encoding, normalize_before=True)
    torch.manual_seed(0)
    return Stack(cfg, layers=2, max_positions=64, **extra).eval()


def test_a_rotary_stack_keeps_the_parameter_names_and_drops_the_position_table():
    learned, rotary_stack = stack("learned", cross_attention=False), stack("rotary", cross_attention=False)
    assert rotary_stack.positions is None
    assert set(rotary_stack.state_dict()) == set(learned.state_dict()) - {"positions.weight"}


@pytest.mark.parametrize("cross_attention", [False, True])
def test_a_rotary_stack_runs_with_and_without_cross_attention(cross_attention):
    s = stack("rotary", cross_attention=cross_attention)
    x, padding = torch.randn(2, 5, DIM), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    memory = dict(memory=torch.randn(4, 2, DIM), memory_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with torch.no_grad():
        out = s(x, padding, **(memory if cross_attention else {}))
        alone = s(x[1:, :3], padding[1:, :3], **({k: v[:, 1:] if k == "memory" else v[1:]
                                                   for k, v in memory.items()} if cross_attention else {}))
    assert out.shape == x.shape
    assert torch.allclose(out[1, :3], alone[0], atol=1e-5)  # right padding changes nothing for the real tokens


def test_rotary_attention_refuses_what_it_does_not_implement():
    attn, x = rotary(), torch.randn(3, 1, DIM)
    with pytest.raises(DifftextError, match="full bidirectional self-attention only"):
        attn(x, torch.randn(3, 1, DIM), torch.randn(3, 1, DIM))
