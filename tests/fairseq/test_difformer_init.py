"""``--apply-bert-init``: BERT's initialisation of Difformer's denoiser, as the reference code's flag; and
checkpoints saved before a model config field existed (``config_defaults``)."""
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from tests.fairseq.cli_helpers import ROOT


def build(data_bin, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--user-dir", str(ROOT / "fairseq_plugins"), "--task", "text_diffusion",
        "--arch", "difformer_small", "--criterion", "text_diffusion_loss", "--optimizer", "adam", "--cpu", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    return tasks.setup_task(cfg.task).build_model(cfg.model)


def test_bert_init_of_the_denoiser_only(data_bin):
    plain, bert = build(data_bin), build(data_bin, "--apply-bert-init")
    for model, std in ((plain, None), (bert, 0.02)):
        model.requires_grad_(False)
        fc = model.decoder.layers[0].fc1
        if std is None:  # fairseq's xavier uniform: std sqrt(2 / (256 + 1024)) = 0.040
            assert fc.weight.std() > 0.03
        else:
            assert abs(float(fc.weight.std()) - std) < 0.002 and not fc.bias.any()
            assert abs(float(model.z_proj.weight.std()) - std) < 0.004 and not model.out_proj.bias.any()
    for name in ("encoder", "src_proj", "embed"):  # the encoder side keeps its initialisation, as in the reference
        assert all(torch.equal(a, b) for a, b in zip(getattr(plain, name).state_dict().values(),
                                                     getattr(bert, name).state_dict().values())), name


def test_checkpoint_from_before_the_flag_still_loads(difformer_dir, data_bin, tmp_path):
    """A checkpoint whose stored model config predates --apply-bert-init (no such key) decodes as before."""
    import fairseq_plugins  # noqa: F401  (the safe loader's allowlist)

    from tests.fairseq.cli_helpers import generate_args, run_cli

    state = torch.load(difformer_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert "apply_bert_init" in state["cfg"]["model"]
    del state["cfg"]["model"]["apply_bert_init"]
    torch.save(state, tmp_path / "old.pt")
    out = run_cli(generate_args(data_bin, tmp_path / "old.pt", "--decoding-steps", "2")).stdout
    assert out.count("\nH-") > 0 and "BLEU" in out


def test_config_defaults_fill_only_what_is_missing():
    from omegaconf import OmegaConf

    from fairseq_plugins.models.layers import config_defaults
    from fairseq_plugins.models.masked_diffusion import MaskedLMConfig

    cfg = OmegaConf.create({"position_encoding": "learned", "max_target_positions": 64})
    OmegaConf.set_struct(cfg, True)
    out = config_defaults(cfg, MaskedLMConfig)
    assert out is cfg and cfg.position_encoding == "learned" and cfg.max_target_positions == 64  # kept
    assert cfg.no_antithetic_time is False and cfg.time_conditioning == "none"  # filled with the defaults
    assert isinstance(cfg.time_conditioning, str)


def test_checkpoint_with_the_old_positive_option_names_keeps_what_it_was_trained_with(difformer_dir, tmp_path):
    """Before the ``no_*`` flags a checkpoint stored ``pred_length_offset`` (etc.): it loads with the same setting."""
    import fairseq_plugins  # noqa: F401  (the safe loader, which upgrades the config)
    from fairseq import checkpoint_utils

    state = torch.load(difformer_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    model_cfg = state["cfg"]["model"]
    assert model_cfg["no_pred_length_offset"] is False
    del model_cfg["no_pred_length_offset"]
    model_cfg["pred_length_offset"] = False  # trained without the offset, under the old name
    torch.save(state, tmp_path / "old.pt")
    models, cfg = checkpoint_utils.load_model_ensemble([str(tmp_path / "old.pt")])
    assert models[0].length.offset is False and cfg.model.no_pred_length_offset is True
    assert "pred_length_offset" not in cfg.model
    current, _ = checkpoint_utils.load_model_ensemble([str(difformer_dir / "checkpoint_last.pt")])
    assert current[0].length.offset is True
