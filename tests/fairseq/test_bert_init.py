"""DiffusionBERT's BERT initialisation from a local Hugging Face directory (a tiny random BertConfig; no download)."""
import pytest
import torch
from fairseq.data import Dictionary

import fairseq_plugins  # noqa: F401
from fairseq_plugins.errors import DifftextError
from fairseq_plugins.models.bert_init import bert_model_class
from fairseq_plugins.models.masked_diffusion import (
    MaskedDiffusionLM,
    MaskedDiffusionSeq2Seq,
    MaskedLMConfig,
    MaskedSeq2SeqConfig,
)

WORDS = [f"w{i}" for i in range(20)]
SIZE = dict(model_dim=32, ffn_dim=64, attention_heads=2, dropout=0.0)


def save_tiny_bert(path, *, layers=2, hidden=32, positions=160):
    from transformers import BertConfig

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS[::-1] + ["only_in_bert"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=positions, hidden_act="gelu")
    bert = bert_model_class()(config).eval()
    bert.save_pretrained(str(path))
    return bert, vocab


@pytest.fixture(scope="module")
def dictionary():
    d = Dictionary()
    for w in WORDS + ["only_in_data"]:
        d.add_symbol(w, n=5)
    return d


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    model, vocab = save_tiny_bert(path)
    return path, model, vocab


def ids(dictionary, vocab, words):
    return torch.tensor([[dictionary.index(w) for w in words]]), torch.tensor([[vocab.index(w) for w in words]])


def test_language_model_computes_what_bert_computes(dictionary, bert):
    path, model, vocab = bert
    lm = MaskedDiffusionLM(MaskedLMConfig(layers=2, max_target_positions=128, bert_init=str(path), **SIZE), dictionary)
    lm.initialise_from_bert([lm.stack])
    lm.eval()
    ours, theirs = ids(dictionary, vocab, ["w3", "w7", "w1", "w19", "w0", "w7"])
    hidden = lm.stack(lm.embed(ours), ours.eq(dictionary.pad()))
    assert torch.allclose(hidden, model(theirs).last_hidden_state, atol=1e-4)  # LayerNorm eps 1e-5 vs 1e-12
    # every symbol BERT knows, and [M] <- [MASK]; a symbol BERT lacks keeps its random row
    assert torch.equal(lm.embed.weight[lm.mask_id], model.embeddings.word_embeddings.weight[vocab.index("[MASK]")])
    assert not torch.equal(lm.embed.weight[dictionary.index("only_in_data")], torch.zeros(32))


def test_seq2seq_encoder_and_denoiser_self_attention_come_from_bert(dictionary, bert):
    path, model, vocab = bert
    cfg = MaskedSeq2SeqConfig(encoder_layers=2, decoder_layers=2, max_source_positions=128, max_target_positions=128,
                              bert_init=str(path), **SIZE)
    s2s = MaskedDiffusionSeq2Seq(cfg, dictionary)
    s2s.initialise_from_bert([s2s.encoder, s2s.decoder])
    s2s.eval()
    ours, theirs = ids(dictionary, vocab, ["w5", "w6", "w2"])
    memory, _, _ = s2s.encode(ours)
    assert torch.allclose(memory.transpose(0, 1), model(theirs).last_hidden_state, atol=1e-4)
    bert_query = model.encoder.layer[1].attention.self.query.weight
    assert torch.equal(s2s.decoder.layers[1].self_attn.q_proj.weight, bert_query)


def test_a_bert_of_another_size_is_a_one_line_error(dictionary, tmp_path):
    save_tiny_bert(tmp_path, layers=3)
    lm = MaskedDiffusionLM(MaskedLMConfig(layers=2, max_target_positions=128, **SIZE), dictionary)
    with pytest.raises(DifftextError, match="num_hidden_layers = 3 but the model has 2"):
        lm.cfg.bert_init = str(tmp_path)
        lm.initialise_from_bert([lm.stack])


def test_a_directory_without_a_bert_is_a_one_line_error(dictionary, tmp_path):
    lm = MaskedDiffusionLM(MaskedLMConfig(layers=2, max_target_positions=128, bert_init=str(tmp_path), **SIZE),
                           dictionary)
    with pytest.raises(DifftextError, match="not a Hugging Face BERT directory"):
        lm.initialise_from_bert([lm.stack])


def test_a_rotary_model_is_a_one_line_error(dictionary, bert):
    path, _, _ = bert
    lm = MaskedDiffusionLM(MaskedLMConfig(layers=2, max_target_positions=128, position_encoding="rotary", **SIZE),
                           dictionary)
    lm.cfg.bert_init = str(path)
    with pytest.raises(DifftextError, match="uses rotary ones"):
        lm.initialise_from_bert([lm.stack])
