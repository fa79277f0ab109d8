"""DiffusionBERT's initialisation: copy a local Hugging Face BERT checkpoint into a difftext transformer.

``--bert-init DIR`` (a directory saved by ``BertModel.save_pretrained`` / downloaded from the hub, with
its ``config.json`` and, for the token embeddings, ``vocab.txt``). Requires ``transformers``
(``pip install difftext[bert]``); nothing is downloaded.

What is copied, for each :class:`~fairseq_plugins.models.layers.Stack` given (the LM's stack; the
encoder and the denoiser of a seq2seq model):

- embedding LayerNorm -> ``input_norm``; position embeddings (+ the token-type-0 embedding, which BERT
  adds to every position) -> the learned positions (ours are 1-based, 0 is padding);
- per layer: query/key/value/output projections -> self-attention, its LayerNorm, intermediate and
  output dense layers -> fc1/fc2, output LayerNorm -> final LayerNorm (both are post-norm);
- token embeddings of every dictionary symbol found verbatim in BERT's ``vocab.txt``, and [MASK] ->
  the mask row. Cross-attention and time embeddings stay randomly initialised.

The transformer must match BERT's size: --model-dim = hidden_size, --ffn-dim = intermediate_size,
--attention-heads, the number of layers, --activation-fn gelu, post-norm.
"""
import logging
import os

import torch

from fairseq_plugins.errors import DifftextError

logger = logging.getLogger(__name__)


def bert_model_class():
    """transformers' BertModel (one-line error when transformers is missing).

    fairseq depends on torchaudio, and pip may install a torchaudio built for another torch whose native
    library fails to load; transformers imports torchaudio whenever it is installed. BERT needs no audio,
    so when torchaudio does not import, transformers is told it is absent.
    """
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001  (OSError from a mismatched native library, or ImportError)
        try:
            import transformers.utils as utils
            import transformers.utils.import_utils as import_utils
        except ImportError:
            utils = None
        if utils is not None:
            utils.is_torchaudio_available = import_utils.is_torchaudio_available = lambda: False
    try:
        from transformers import BertModel
    except ImportError:
        raise DifftextError("--bert-init needs the transformers package: pip install 'difftext[bert]'") from None
    return BertModel


def load_bert(path: str):
    """BertModel from a local directory (one-line errors for a missing package or directory)."""
    BertModel = bert_model_class()
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DifftextError(
            f"--bert-init {path!r} is not a Hugging Face BERT directory (no config.json); pass the directory "
            "written by save_pretrained"
        )
    return BertModel.from_pretrained(path, local_files_only=True).eval()


def check_sizes(bert_cfg, stack) -> None:
    if stack.positions is None:
        raise DifftextError("--bert-init: BERT has learned absolute positions but this model uses rotary ones "
                            "(--position-encoding rotary, or an mdlm/md4/genmd4 LM preset); use a diffusionbert_* "
                            "arch or --position-encoding learned")
    layer = stack.layers[0]
    ours = {
        "hidden_size (--model-dim)": stack.positions.embedding_dim,
        "intermediate_size (--ffn-dim)": layer.fc1.out_features,
        "num_attention_heads (--attention-heads)": layer.self_attn.num_heads,
        "num_hidden_layers (layers)": len(stack.layers),
        "max_position_embeddings (max positions)": stack.positions.num_embeddings - 1,
    }
    theirs = {
        "hidden_size (--model-dim)": bert_cfg.hidden_size,
        "intermediate_size (--ffn-dim)": bert_cfg.intermediate_size,
        "num_attention_heads (--attention-heads)": bert_cfg.num_attention_heads,
        "num_hidden_layers (layers)": bert_cfg.num_hidden_layers,
        "max_position_embeddings (max positions)": bert_cfg.max_position_embeddings,
    }
    for name, value in ours.items():
        too_long = name.startswith("max_position") and value > theirs[name]
        if (value != theirs[name] and not name.startswith("max_position")) or too_long:
            raise DifftextError(
                f"--bert-init: BERT has {name.split(' ')[0]} = {theirs[name]} but the model has {value}; "
                f"set {name.split('(')[1].rstrip(')')} to match BERT"
            )
    if stack.final_norm is not None:
        raise DifftextError("--bert-init: BERT is post-norm but this model is pre-norm (--normalize-before, or an "
                            "mdlm/md4/genmd4 LM preset); use a diffusionbert_* arch or drop --normalize-before")


def _copy_linear(dst, src) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def _copy_layer(ours, theirs) -> None:
    attn = theirs.attention
    _copy_linear(ours.self_attn.q_proj, attn.self.query)
    _copy_linear(ours.self_attn.k_proj, attn.self.key)
    _copy_linear(ours.self_attn.v_proj, attn.self.value)
    _copy_linear(ours.self_attn.out_proj, attn.output.dense)
    _copy_linear(ours.self_attn_layer_norm, attn.output.LayerNorm)
    _copy_linear(ours.fc1, theirs.intermediate.dense)
    _copy_linear(ours.fc2, theirs.output.dense)
    _copy_linear(ours.final_layer_norm, theirs.output.LayerNorm)


def _copy_stack(stack, bert) -> None:
    emb = bert.embeddings
    _copy_linear(stack.input_norm, emb.LayerNorm)
    n = stack.positions.num_embeddings - 1
    stack.positions.weight[1:].copy_(emb.position_embeddings.weight[:n] + emb.token_type_embeddings.weight[0])
    for ours, theirs in zip(stack.layers, bert.encoder.layer):
        _copy_layer(ours, theirs)


def _copy_token_embeddings(path: str, embed, dictionary, mask_id: int, bert) -> int:
    vocab_file = os.path.join(path, "vocab.txt")
    if not os.path.isfile(vocab_file):
        logger.warning("--bert-init: no vocab.txt in %s; token embeddings stay randomly initialised", path)
        return 0
    with open(vocab_file, encoding="utf-8") as f:
        bert_ids = {line.rstrip("\n"): i for i, line in enumerate(f)}
    table = bert.embeddings.word_embeddings.weight
    pairs = [(i, bert_ids[sym]) for i, sym in enumerate(dictionary.symbols) if sym in bert_ids]
    if "[MASK]" in bert_ids:
        pairs.append((mask_id, bert_ids["[MASK]"]))
    for ours, theirs in pairs:
        embed.weight[ours].copy_(table[theirs])
    return len(pairs)


@torch.no_grad()
def initialise_from_bert(path: str, stacks, embed, dictionary, mask_id: int) -> None:
    """Copy BERT at ``path`` into each of ``stacks`` and the shared token embedding ``embed``."""
    bert = load_bert(path)
    for stack in stacks:
        check_sizes(bert.config, stack)
        _copy_stack(stack, bert)
    copied = _copy_token_embeddings(path, embed, dictionary, mask_id, bert)
    logger.info(
        "initialised %d transformer stack(s) and %d of %d token embeddings from BERT at %s",
        len(stacks), copied, embed.num_embeddings, path,
    )
