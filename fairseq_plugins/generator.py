"""fairseq generator for diffusion models: one batched reverse process over all K x M candidates.

Per batch: the model encodes each source once and returns a :class:`DecodingProblem` whose denoiser
closure reuses the (expanded) encoder output; ``difftext.samplers.continuous.sample`` runs N steps
over all candidates together; z0_hat is rounded through the tied output layer; each candidate is cut
at its first eos/pad; candidates are ranked by mean token log-probability or by MBR (sentence BLEU).
The result follows fairseq's generator contract: per input, a list of hypothesis dicts with
``tokens`` (ending in eos), ``score``, ``positional_scores`` and ``alignment``.
"""
from typing import Dict, List

import torch

from difftext.mbr import mbr_rank
from difftext.samplers.continuous import respaced_steps, sample
from fairseq_plugins.errors import DifftextError


class DiffusionGenerator:
    def __init__(self, models, tgt_dict, cfg):
        if len(models) != 1:
            raise DifftextError(f"diffusion decoding takes one model, got an ensemble of {len(models)}; pass one --path")
        self.model, self.tgt_dict, self.cfg = models[0], tgt_dict, cfg
        self.pad, self.eos, self.bos = tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()
        self._validate()

    def _validate(self):
        cfg, model = self.cfg, self.model
        try:
            respaced_steps(model.diffusion.num_steps, cfg.decoding_steps)
        except ValueError as err:
            raise DifftextError(str(err)) from None
        for name in ("length_beam", "noise_beam"):
            if getattr(cfg, name) < 1:
                raise DifftextError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
        if cfg.length_beam > 1 and not hasattr(model, "length"):
            raise DifftextError(
                f"{type(model).__name__} has no length predictor (its length is where the first eos is generated); "
                "use --noise-beam for several candidates and leave --length-beam at 1"
            )
        if cfg.candidate_selection == "mbr-bleu" and cfg.length_beam * cfg.noise_beam < 2:
            raise DifftextError(
                "--candidate-selection mbr-bleu needs several candidates per input; set --noise-beam and/or "
                "--length-beam so that their product is at least 2"
            )

    @torch.no_grad()
    def generate(self, models, sample_, prefix_tokens=None, constraints=None, **unused) -> List[List[Dict]]:
        model = self.model
        net_input = sample_["net_input"]
        src_tokens = net_input["src_tokens"]
        problem = model.decoding_problem(
            src_tokens, net_input["src_lengths"], length_beam=self.cfg.length_beam, noise_beam=self.cfg.noise_beam
        )
        diffusion = model.decoding_diffusion(self.cfg.decoding_noise_factor)
        table = model.latent_table()
        z_T = diffusion.prior_sample(problem.shape, device=src_tokens.device, dtype=table.dtype)
        z0_hat = sample(
            problem.denoise_fn,
            diffusion,
            z_T,
            self.cfg.decoding_steps,
            method=self.cfg.decoding_method,
            clamp_embeddings=table if self.cfg.clamping else None,
            self_condition=model.self_conditioning,
            keep_mask=problem.keep_mask,
            z0_fixed=problem.z0_fixed,
            early_stop=self.cfg.decoding_early_stop,
        )
        candidates = self._round(model.output_logits(z0_hat), problem.output_mask, problem.stop_at_eos)
        return self._select(candidates, problem.owner, src_tokens.size(0))

    def _round(self, logits, output_mask, stop_at_eos: bool) -> List[Dict]:
        """Argmax tokens of each candidate's output positions; eos appended.

        stop_at_eos: cut at the first generated eos/pad (the length is generated); otherwise the length
        is given and eos/pad generated inside it are dropped.
        """
        logits = logits.float()
        logits[..., self.bos] = float("-inf")
        lprobs = torch.log_softmax(logits, dim=-1)
        scores, tokens = lprobs.max(dim=-1)  # (N, L)
        out = []
        for n in range(tokens.size(0)):
            toks, sc = tokens[n][output_mask[n]], scores[n][output_mask[n]]
            special = toks.eq(self.eos) | toks.eq(self.pad)
            if stop_at_eos:
                stop = special.nonzero()
                end = int(stop[0]) if len(stop) else toks.numel()
                keep = torch.arange(toks.numel(), device=toks.device) < end
            else:
                keep = ~special
            positional = torch.cat([sc[keep], sc[special][:1] if special.any() else sc.new_zeros(1)])
            out.append(
                {
                    "tokens": torch.cat([toks[keep], toks.new_full((1,), self.eos)]),
                    "score": positional.mean(),
                    "positional_scores": positional,
                    "alignment": None,
                }
            )
        return out

    def _select(self, candidates: List[Dict], owner: torch.Tensor, bsz: int) -> List[List[Dict]]:
        groups: List[List[Dict]] = [[] for _ in range(bsz)]
        for cand, b in zip(candidates, owner.tolist()):
            groups[b].append(cand)
        if self.cfg.candidate_selection == "mbr-bleu":
            ranked = []
            for group in groups:
                texts = [self.tgt_dict.string(c["tokens"]) for c in group]
                ranked.append([group[i] for i in mbr_rank(texts)])
            return ranked
        return [sorted(group, key=lambda c: -float(c["score"])) for group in groups]
