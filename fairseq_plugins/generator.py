"""fairseq generator for diffusion models: one batched reverse process over all K x M candidates.

Per batch: the model encodes each source once and returns a decoding problem whose denoiser closure
reuses the (expanded) encoder output. Continuous models: ``difftext.samplers.continuous.sample`` runs
N steps over all candidates together and z0_hat is rounded through the tied output layer. Masked
models: a ``difftext.samplers.masked`` sampler (confidence / ddpm / ddpm_cache) fills the [M]
positions, each token scored by its log-probability when it was drawn. Each candidate is cut at its
first eos/pad (or, when the length was predicted, drops eos/pad inside it); candidates are ranked by
mean token log-probability or by MBR (sentence BLEU or ROUGE-L).
The result follows fairseq's generator contract: per input, a list of hypothesis dicts with
``tokens`` (ending in eos), ``score``, ``positional_scores`` and ``alignment``.
"""
import logging
from typing import Dict, List

import torch

from difftext.mbr import bleu_utility, mbr_rank, rouge_utility
from difftext.samplers.continuous import (NearestEmbedding, decoding_schedule, nearest_embedding, row_logsumexp,
                                          row_top, sample)
from difftext.samplers.masked import SAMPLERS, get_sampler
from fairseq_plugins.errors import DifftextError, in_range

CONTINUOUS_ONLY = {"clamping": False, "decoding_method": "ddim", "decoding_noise_factor": None, "decoding_early_stop": 0}
MASKED_ONLY = {"sampler": None, "token_temperature": None, "token_topk": 0, "token_topp": 1.0}
# fairseq's autoregressive sampling flags, and the difftext flags that do the same for masked models
FAIRSEQ_SAMPLING = {"sampling": (False, "--sampler ddpm"), "temperature": (1.0, "--token-temperature"),
                    "sampling_topk": (-1, "--token-topk"), "sampling_topp": (-1.0, "--token-topp")}
MBR_UTILITIES = {"mbr-bleu": bleu_utility, "mbr-rouge": rouge_utility}  # --candidate-selection -> utility
DEFAULT_SAMPLER = "confidence"  # mask-predict: the strong choice for translation
logger = logging.getLogger(__name__)


def masked_sampler(cfg):
    """The sampler function named by --sampler (default: confidence)."""
    return get_sampler(getattr(cfg, "sampler", None) or DEFAULT_SAMPLER)


def token_sampling(cfg) -> dict:
    """--token-temperature / --token-topk / --token-topp as sampler keyword arguments.

    Unset temperature: the sampler's default (greedy for confidence, 1 for ddpm and ddpm_cache).
    """
    kwargs = {"top_k": getattr(cfg, "token_topk", 0), "top_p": getattr(cfg, "token_topp", 1.0)}
    if getattr(cfg, "token_temperature", None) is not None:
        kwargs["temperature"] = cfg.token_temperature
    return kwargs


def greedy(cfg) -> bool:
    """True when the token choices are deterministic (so several noise samples would be identical)."""
    temperature = getattr(cfg, "token_temperature", None)
    if temperature is None:
        return (getattr(cfg, "sampler", None) or DEFAULT_SAMPLER) == "confidence"
    return temperature == 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_masked_sampling(cfg, gen, model) -> None:
    """One-line errors for masked-diffusion sampling flags that cannot work with ``model``."""
    name = getattr(cfg, "sampler", None) or DEFAULT_SAMPLER
    if name not in SAMPLERS:
        raise DifftextError(f"unknown --sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    if name == "ddpm_cache" and not model.time_agnostic:
        raise DifftextError(
            "--sampler ddpm_cache reuses network outputs across steps, which is exact only for time-agnostic "
            f"models; this one uses --time-conditioning {model.cfg.time_conditioning}: use --sampler ddpm"
        )
    if cfg.decoding_steps < 1:
        raise DifftextError(f"--decoding-steps must be >= 1 (got {cfg.decoding_steps})")
    kwargs = token_sampling(cfg)
    if kwargs.get("temperature", 0.0) < 0 or kwargs["top_k"] < 0 or not 0.0 < kwargs["top_p"] <= 1.0:
        raise DifftextError(
            "token sampling needs --token-temperature >= 0, --token-topk >= 0 and 0 < --token-topp <= 1; got "
            f"{kwargs.get('temperature')}, {kwargs['top_k']}, {kwargs['top_p']}"
        )
    for name, (default, ours) in FAIRSEQ_SAMPLING.items():
        if getattr(gen, name, default) != default:
            raise DifftextError(f"{_flag(name)} is fairseq's autoregressive sampling flag; masked diffusion uses {ours}")


class DiffusionGenerator:
    # The continuous models' rounding makes its (points, V) logits this many floats at a time (16 MB), so its memory
    # does not grow with batch x candidates x length (Difformer's 7 x 3 on 125 Multi30k sentences: 27k points,
    # 0.87 GB of logits at V = 8k made at once), and a chunk this size is reused by the allocator rather than
    # faulted in afresh for every batch. Smaller chunks cost more per point (8 MB: more time outside the product).
    ROUNDING_LOGITS = 1 << 22

    def __init__(self, models, tgt_dict, cfg, gen=None):
        if len(models) != 1:
            raise DifftextError(f"diffusion decoding takes one model, got an ensemble of {len(models)}; pass one --path")
        self.model, self.tgt_dict, self.cfg, self.gen = models[0], tgt_dict, cfg, gen
        self.pad, self.eos, self.bos = tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()
        self._table = self._table_key = self._search = None
        self._repeats_announced = False  # --remove-repeats logs once
        self._validate()

    @property
    def masked(self) -> bool:
        return getattr(self.model, "is_masked_diffusion", False)

    def _validate(self):
        cfg, model = self.cfg, self.model
        for name in ("length_beam", "noise_beam"):
            if getattr(cfg, name) < 1:
                raise DifftextError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")
        if cfg.length_beam > 1 and not hasattr(model, "length"):
            raise DifftextError(
                f"{type(model).__name__} has no length predictor (its length is where the first eos is generated); "
                "use --noise-beam for several candidates and leave --length-beam at 1"
            )
        if not hasattr(model, "decoding_problem"):
            raise DifftextError(
                f"{type(model).__name__} is not a sequence-to-sequence diffusion model; language models sample "
                "with `python -m fairseq_plugins.sample`"
            )
        wrong = CONTINUOUS_ONLY if self.masked else MASKED_ONLY
        for name, default in wrong.items():
            if getattr(cfg, name, default) != default:
                kind = "continuous (embedding)" if self.masked else "masked"
                raise DifftextError(f"{_flag(name)} applies to {kind} diffusion models only; drop it for this model")
        if not self.masked and cfg.decoding_noise_factor is not None:
            in_range("decoding_noise_factor", cfg.decoding_noise_factor, "[1, inf)", "1: no extra noise")
        if self.masked:
            check_masked_sampling(cfg, self.gen, model)
            if cfg.noise_beam > 1 and greedy(cfg):
                raise DifftextError(
                    "--noise-beam > 1 with greedy token choices gives identical candidates; add "
                    "--token-temperature 0.5 (or use --sampler ddpm), or use --length-beam for several candidates"
                )
        else:
            try:
                decoding_schedule(model.diffusion.num_steps, cfg.decoding_steps, cfg.decoding_early_stop)
            except ValueError as err:
                raise DifftextError(str(err)) from None
        selection = cfg.candidate_selection
        if selection in MBR_UTILITIES and cfg.length_beam * cfg.noise_beam < 2:
            raise DifftextError(
                f"--candidate-selection {selection} needs several candidates per input; set --noise-beam and/or "
                "--length-beam so that their product is at least 2"
            )
        if selection == "mbr-rouge":
            try:
                import rouge_score  # noqa: F401
            except ImportError:
                msg = "--candidate-selection mbr-rouge needs rouge-score: pip install rouge-score"
                raise DifftextError(msg) from None

    @torch.no_grad()
    def generate(self, models, sample_, prefix_tokens=None, constraints=None, **unused) -> List[List[Dict]]:
        net_input = sample_["net_input"]
        src_tokens = net_input["src_tokens"]
        problem = self.model.decoding_problem(
            src_tokens, net_input["src_lengths"], length_beam=self.cfg.length_beam, noise_beam=self.cfg.noise_beam
        )
        if self.masked:
            tokens, scores = self._sample_masked(problem)
            candidates = self._candidates(tokens, scores, problem.output_mask, stop_at_eos=False)
        else:
            tokens, scores = self._sample_continuous(problem, src_tokens.device)
            candidates = self._candidates(tokens, scores, problem.output_mask, problem.stop_at_eos)
        return self._select(candidates, problem.owner, src_tokens.size(0))

    def _sample_continuous(self, problem, device):
        """Reverse Gaussian process over all candidates, then rounding: tokens (N, L) and their log-probs."""
        model, cfg = self.model, self.cfg
        diffusion = model.decoding_diffusion(cfg.decoding_noise_factor)
        table = self._latent_table()
        z_T = diffusion.prior_sample(problem.shape, device=device, dtype=table.dtype)
        # the clamps' search, kept for the rounding (a half-precision table is searched again in float32 there)
        search = None
        if cfg.clamping and table.dtype == torch.float32:  # the previous batch's int8 table, for the same table
            search = self._search = NearestEmbedding(table, reuse=self._search)
        z0_hat = sample(
            problem.denoise_fn,
            diffusion,
            z_T,
            cfg.decoding_steps,
            method=cfg.decoding_method,
            clamp_embeddings=table if cfg.clamping else None,
            clamp_mask=problem.output_mask,  # not the source (DiffuSeq) nor past a candidate's length
            self_condition=model.self_conditioning,
            keep_mask=problem.keep_mask,
            z0_fixed=problem.z0_fixed,
            early_stop=cfg.decoding_early_stop,
            clamp_final=False,  # the last clamp comes from the rounding's product below
            search=search,
        )
        # Rounding at the output positions only (DiffuSeq: not the source; Difformer: not past each length).
        out = problem.output_mask
        z0 = z0_hat[out]
        picked = torch.empty(z0.size(0), dtype=torch.long, device=device)
        log_probs = torch.empty(z0.size(0), dtype=torch.float32, device=device)
        rows = max(1, self.ROUNDING_LOGITS // max(1, table.size(0)))
        for start in range(0, z0.size(0), rows):
            part = slice(start, start + rows)
            picked[part], log_probs[part] = self._round(z0[part], table, search, part)
        tokens = out.new_full(out.shape, self.pad, dtype=torch.long).masked_scatter_(out, picked)
        scores = log_probs.new_zeros(out.shape).masked_scatter_(out, log_probs)
        return tokens, scores

    def _round(self, z0, table, search, points):
        """Tokens (m,) and their log-probs for the points z0 (m, D), the rows ``points`` of the M rounded.

        Scores from the denoiser's own prediction (a clamped z0_hat would score every token ~0). Clamped: the
        tokens are the rows the last step clamps to, argmax_v 2 z.e_v - ||e_v||^2, from the same product."""
        logits = self.model.output_logits(z0, table=table).float()  # (m, V)
        nearest = self._nearest(z0, logits, table, search, points) if self.cfg.clamping else None
        maxima = self._maxima_without_bos(search) if nearest is not None else None
        logits[:, self.bos] = float("-inf")  # bos is banned from the output
        if nearest is None:
            maxima, picked = (x.squeeze(1) for x in row_top(logits, 1))
        else:  # the nearest rows, except bos: there the rounding's best token
            picked = nearest
            at_bos = nearest.eq(self.bos).nonzero().squeeze(1)
            if at_bos.numel():
                picked[at_bos] = row_top(logits[at_bos], 1)[1].squeeze(1)
        # the picked tokens' rounding log-probs, log softmax(logits) at picked, without the (m, V) log_softmax
        return picked, logits.gather(-1, picked.unsqueeze(-1)).squeeze(-1) - row_logsumexp(logits, maxima=maxima)

    def _maxima_without_bos(self, search):
        """Each row's largest logit but bos's, from the best products the rounding's search read (None where it
        read none): the log-softmax's maxima, with bos banned."""
        top = None if search is None else search.products_top
        if top is None:
            return None
        values, columns = top
        return torch.where(columns[:, 0].eq(self.bos), values[:, 1], values[:, 0])

    def _latent_table(self):
        """The model's latent table, computed again only when one of its parameters changed (a tensor updated in
        place bumps its ``_version``): at batch 1 its layer norm and the clamp search's int8 table cost ~2 ms a
        sentence (a 5-step decode takes ~30 ms)."""
        key = [(id(p), p.data_ptr(), p.dtype, p._version) for p in self.model.parameters()]
        if key != self._table_key:
            self._table, self._table_key, self._search = self.model.latent_table(), key, None
        return self._table

    @staticmethod
    def _nearest(z0, logits, table, search, points=None):
        """Nearest table rows of z0 (M, D) given its float32 logits z0 E^T (M, V): the clamps' ``search`` goes on
        from the rows it kept, and a point it must search in full reads its scores from the logits. A
        half-precision table (no ``search``) is searched again in float32, as the clamps before were (its product
        decides near-ties differently)."""
        if search is None:
            return nearest_embedding(z0, table)
        return search(z0, products=logits, last=True, points=points)

    def _sample_masked(self, problem):
        """A masked-diffusion sampler over all candidates: tokens (N, L) and each token's log-prob when drawn."""
        return masked_sampler(self.cfg)(
            problem.denoise_fn,
            problem.z_1,
            num_steps=self.cfg.decoding_steps,
            mask_id=problem.mask_id,
            schedule=problem.schedule,
            forbidden_ids=problem.forbidden_ids,
            return_scores=True,
            **token_sampling(self.cfg),
        )

    def _candidates(self, tokens, scores, output_mask, stop_at_eos: bool) -> List[Dict]:
        """Each candidate's output positions as a hypothesis dict; eos appended.

        stop_at_eos: cut at the first generated eos/pad (the length is generated); otherwise the length
        is given and eos/pad generated inside it are dropped. The positional scores are the kept tokens' and
        then the first generated eos/pad's (0 when there is none) for the appended eos. Batched: the loop
        only slices rows.
        """
        special = (tokens.eq(self.eos) | tokens.eq(self.pad)) & output_mask
        if stop_at_eos:
            keep = output_mask & special.long().cumsum(1).eq(0)
        else:
            keep = output_mask & ~special
        if self.cfg.remove_repeats:
            removed = repeats_of_kept(tokens, keep)
            keep = keep & ~removed
            self._announce_repeats(removed, keep)
        lengths = keep.sum(1)  # (N,)
        n = tokens.size(0)
        width = int(lengths.max()) + 1 if n else 1
        rows = torch.arange(n, device=tokens.device)
        first_special = special.long().argmax(1)  # (N,) 0 when there is none (masked out below)
        eos_score = torch.where(special.any(1), scores[rows, first_special], scores.new_zeros(()))
        out_tokens = tokens.new_full((n, width), self.pad)
        out_scores = scores.new_zeros((n, width))
        columns = keep.long().cumsum(1) - 1
        out_tokens[rows.unsqueeze(1).expand_as(keep)[keep], columns[keep]] = tokens[keep]
        out_scores[rows.unsqueeze(1).expand_as(keep)[keep], columns[keep]] = scores[keep]
        out_tokens[rows, lengths] = self.eos
        out_scores[rows, lengths] = eos_score
        mean = out_scores.sum(1) / (lengths + 1)
        return [
            {
                "tokens": out_tokens[i, : length + 1],
                "score": mean[i],
                "positional_scores": out_scores[i, : length + 1],
                "alignment": None,
            }
            for i, length in enumerate(lengths.tolist())
        ]

    def _announce_repeats(self, removed: torch.Tensor, keep: torch.Tensor) -> None:
        if self._repeats_announced:
            return
        count = int(removed.sum())
        if count:
            self._repeats_announced = True
            logger.info(f"--remove-repeats: dropping output tokens equal to the token before them ({count} of "
                        f"{count + int(keep.sum())} in the first batch that had any)")

    def _select(self, candidates: List[Dict], owner: torch.Tensor, bsz: int) -> List[List[Dict]]:
        groups: List[List[Dict]] = [[] for _ in range(bsz)]
        for cand, b in zip(candidates, owner.tolist()):
            groups[b].append(cand)
        utility = MBR_UTILITIES.get(self.cfg.candidate_selection)
        if utility is not None:
            ranked = []
            for group in groups:
                texts = [self.tgt_dict.string(c["tokens"]) for c in group]
                ranked.append([group[i] for i in mbr_rank(texts, utility)])
            return ranked
        return [sorted(group, key=lambda c: -float(c["score"])) for group in groups]


def repeats_of_kept(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(N, L) tokens and the positions kept -> (N, L) True where a kept token equals the kept token before it.

    Positions left out between two kept ones (e.g. an eos generated inside a predicted length) do not separate
    them: the comparison is with the previous *kept* position, found for every position at once by a running
    maximum of the kept indices.
    """
    index = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
    last = torch.where(keep, index, torch.full_like(index, -1)).cummax(1).values  # last kept position <= i
    previous = torch.cat([last.new_full((tokens.size(0), 1), -1), last[:, :-1]], 1)  # last kept position < i
    return keep & previous.ge(0) & tokens.eq(tokens.gather(1, previous.clamp(min=0)))
