"""DiffuSeq's rounding loss covers the target region only; it is computed on those columns alone."""
import torch

from difftext.losses.continuous import token_nll
from tests.fairseq.cli_helpers import build_in_process


def test_rounding_loss_on_the_region_columns_equals_the_masked_loss_over_every_column(data_bin):
    task, model = build_in_process(data_bin, "diffuseq_tiny", "--label-smoothing", "0.1")
    model.eval()
    task.load_dataset("valid")
    batch = next(task.get_batch_iterator(task.dataset("valid"), max_tokens=512, seed=1).next_epoch_itr(shuffle=False))
    src, tgt = batch["net_input"]["src_tokens"], batch["target"]
    assert src.size(1) > 1 and src.eq(task.source_dictionary.pad()).any()  # padded sources: columns to leave out
    torch.manual_seed(0)
    out = model(**batch["net_input"], tgt_tokens=tgt)
    tokens, is_src, _ = model.layout(src, tgt)
    full = token_nll(model.output_logits(model.embed_latent(tokens)), tokens, ~is_src, 0.1)  # every column, masked
    assert full.tokens.sum() == src.size(0) * model.cfg.max_target_positions
    torch.testing.assert_close(out["rounding"]["loss"], full.mean_per_token(), rtol=1e-6, atol=1e-6)
