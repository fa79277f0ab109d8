"""Sample text from an unconditional masked-diffusion language model (task ``text_diffusion_lm``).

    python -m fairseq_plugins.sample DATA --path CHECKPOINT --num-samples 8 --length 128 \\
        --decoding-steps 128 --sampler ddpm_cache [--block-length 64] [--post-process sentencepiece]

Sequences up to the model's length (the training --tokens-per-sample, which may be shorter than its
--max-target-positions) are sampled in one reverse process; longer ones semi-autoregressively (MDLM):
blocks of --block-length tokens left to right, each conditioned on up to (model length - block length)
previous tokens.
Prints each sample (eos separators as line breaks) and the sampling speed on stderr.
"""
import argparse
import logging
import sys
import time

import torch

from fairseq_plugins.errors import DifftextError

logger = logging.getLogger("fairseq_plugins.sample")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_plugins.sample", description=__doc__.split("\n")[0])
    p.add_argument("data", help="data-bin directory the model was trained on (its dict.txt)")
    p.add_argument("--path", required=True, help="checkpoint of a masked_diffusion_lm model")
    p.add_argument("--num-samples", type=int, default=8, help="sequences to sample")
    p.add_argument("--length", type=int, default=None,
                   help="tokens per sequence (default: the model length, its training --tokens-per-sample)")
    p.add_argument("--decoding-steps", type=int, default=128, help="reverse steps (per block when semi-AR)")
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddpm_cache", "confidence"), help="sampler")
    p.add_argument("--temperature", type=float, default=1.0, help="token temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1: off)")
    p.add_argument("--block-length", type=int, default=None,
                   help="semi-AR block size for sequences longer than the model (default: half the model length)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences sampled together")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--post-process", default=None, help="e.g. sentencepiece: undo the subword segmentation")
    p.add_argument("--cpu", action="store_true", help="sample on CPU even if a GPU is present")
    return p.parse_args(argv)


def load_language_model(path: str, data: str, device):
    from fairseq import checkpoint_utils

    import fairseq_plugins  # noqa: F401  (registration, safe checkpoint loading)

    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    saved = state.get("cfg") or {}
    task_name = (saved.get("task") or {}).get("_name") if hasattr(saved, "get") else None
    if task_name != "text_diffusion_lm":
        raise DifftextError(
            f"{path} holds a model of task {task_name!r}, not a masked-diffusion language model (text_diffusion_lm); "
            "sequence-to-sequence models decode with fairseq-generate"
        )
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data},
                                                                      state=state)
    return models[0].to(device).eval(), task


def check_args(args, model) -> int:
    """-> the semi-AR block length (the model length when no semi-AR is needed)."""
    model_length = model.context_length
    for name in ("num_samples", "length", "decoding_steps", "batch_size", "block_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DifftextError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    if args.sampler == "ddpm_cache" and not model.time_agnostic:
        raise DifftextError("--sampler ddpm_cache needs a time-agnostic model (--time-conditioning none); use ddpm")
    block = args.block_length or (model_length if args.length <= model_length else model_length // 2)
    if block > model_length:
        raise DifftextError(f"--block-length {block} exceeds the model length {model_length}; lower it")
    return block


@torch.no_grad()
def sample(model, args, device) -> torch.Tensor:
    """(num_samples, length) token ids."""
    from difftext.samplers.masked import semi_ar_sample

    block = check_args(args, model)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    kwargs = dict(num_steps=args.decoding_steps, mask_id=model.mask_id, schedule=model.diffusion.sampling_schedule,
                  forbidden_ids=model.forbidden_ids, generator=generator, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p)
    out = []
    for start in range(0, args.num_samples, args.batch_size):
        n = min(args.batch_size, args.num_samples - start)
        prefix = torch.empty(n, 0, dtype=torch.long, device=device)
        out.append(semi_ar_sample(model.denoise, prefix, total_length=args.length, model_length=model.context_length,
                                  block_length=block, sampler=args.sampler, **kwargs))
    return torch.cat(out)


def detokenize(dictionary, tokens: torch.Tensor, post_process) -> str:
    eos = dictionary.eos()
    sentences, current = [], []
    for tok in tokens.tolist() + [eos]:
        if tok == eos:
            sentences.append(dictionary.string(torch.tensor(current), bpe_symbol=post_process))
            current = []
        else:
            current.append(tok)
    return "\n".join(s for s in sentences if s)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model, task = load_language_model(args.path, args.data, device)
    args.length = args.length or model.context_length
    start = time.perf_counter()
    tokens = sample(model, args, device)
    seconds = time.perf_counter() - start
    for i, row in enumerate(tokens):
        print(f"S-{i}\t" + detokenize(task.source_dictionary, row, args.post_process).replace("\n", "\n\t"))
    semi_ar = args.length > model.context_length
    print(
        f"sampled {len(tokens)} sequences of {args.length} tokens in {seconds:.2f} s "
        f"({len(tokens) / seconds:.2f} samples/s, {tokens.numel() / seconds:.0f} tokens/s"
        f"{', semi-autoregressive' if semi_ar else ''})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
