# Shared stages of the dataset recipes (sourced by <dataset>.sh; see README.md in this folder).
#
# A recipe sets, before calling `recipe_main "$@"`:
#   DATASET SRC TGT           names; PREPARE (array): the data_scripts/ command (without --raw-dir/--out-dir)
#   TOKENIZE                  sacreBLEU tokenizer of the target (13a; intl for German)
#   SCORE_FLAGS (array)       extra flags of fairseq_plugins.score (e.g. --compound-split)
#   TEACHER_ARCH TEACHER (array)  the AR teacher of knowledge distillation (fairseq's translation task)
# and, per model (the `case` in the recipe):
#   ARCH TRAIN (array)        --arch and the training flags (optimizer, schedule, regularisation, updates)
#   TOKENS or SENTENCES       batch size of one update, summed over GPUs (as published)
#   MAX_PER_GPU               what fits on one GPU (tokens or sentences); --update-freq makes up the rest
#   PRECISION                 fp16 | bf16 | fp32 (overridable from the environment)
#   KD                        1: train on the distilled data (as the paper), 0: on the original data
#   AVERAGE                   "best N" (average the N best checkpoints by validation metric) or "ema"
#   DECODE (array)            fairseq-generate flags (steps, beams, selection, sampler ...)
#
# Environment: RAW (raw data dir), WORK (outputs, default runs/<dataset>), GPUS (default 1; 0 = CPU),
# PRECISION, DRY_RUN=1 (print the commands, run nothing).

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # python -m fairseq_plugins.* from any directory
PYTHON="${PYTHON:-python}"
GPUS="${GPUS:-1}"
PRECISION_OVERRIDE="${PRECISION:-}"  # the environment wins over a recipe's published precision
MODELS="difformer diffuseq mdlm md4 genmd4 diffusionbert"
STAGES="prepare teacher distill train average generate score"

# --- what each family's paper publishes, whatever the dataset (REFERENCES.md sec. 1-5) ---------------------
# Difformer (Gao et al. 2024; its scripts/<dataset>/train.sh): sqrt schedule, T 2000, noise factor 4, affine
# embedding norm, BERT initialisation of the denoiser, self-conditioning, anchor CE with label smoothing 0.1, length loss 0.1, Adam (0.9, 0.98),
# inverse-sqrt lr with 10k warmup from 1e-7, clip 1, weight decay 0.01; best checkpoints by validation BLEU
# (20 decoding steps), the best 5 kept and averaged.
DIFFORMER=(--noise-schedule sqrt --diffusion-steps 2000 --noise-factor 4 --embed-norm affine --apply-bert-init
    --self-condition-prob 0.5 --label-smoothing 0.1 --length-loss-factor 0.1
    --optimizer adam --adam-betas "(0.9,0.98)" --lr-scheduler inverse_sqrt --warmup-updates 10000
    --warmup-init-lr 1e-07 --clip-norm 1.0 --weight-decay 0.01
    --eval-bleu --eval-bleu-remove-bpe sentencepiece --decoding-steps 20 --best-checkpoint-metric bleu
    --maximize-best-checkpoint-metric --keep-best-checkpoints 5 --keep-last-epochs 10 --fixed-validation-seed 7)
# Difformer decoding (its scripts/<dataset>/evaluate.sh and generator): 20 steps with early stop 5 (steps 19 down to
# 5: 15 network calls), ancestral posterior steps with decoding noise factor 1, length beam x noise beam, MBR (the
# paper's alternative to reranking with an AR model's perplexity).
DIFFORMER_DECODE=(--decoding-steps 20 --decoding-early-stop 5 --decoding-method ddpm --decoding-noise-factor 1
    --candidate-selection mbr-bleu)
# DiffuSeq (Gong et al. 2023; its scripts/train.sh, QQP): sqrt schedule, T 2000, loss-aware time sampling (the
# model's default), lr 1e-4 annealed linearly to 0, no weight decay, dropout 0.1, 2048 sequences per update,
# EMA 0.9999 of the weights; decoding (its sample_seq2seq.py with --step 2000): all 2000 steps ancestral (p_sample),
# every z0_hat rounded to its nearest embedding (denoised_fn_round from clamp_step 0), 10 samples, MBR with
# sentence BLEU.
DIFFUSEQ=(--noise-schedule sqrt --diffusion-steps 2000 --optimizer adam --lr 1e-4 --weight-decay 0
    --lr-scheduler polynomial_decay --end-learning-rate 0 --dropout 0.1 --store-ema --ema-decay 0.9999
    --keep-last-epochs 5)
DIFFUSEQ_DECODE=(--decoding-steps 2000 --decoding-method ddpm --clamping --noise-beam 10 --candidate-selection mbr-bleu)

# Masked diffusion (MDLM, MD4/GenMD4, DiffusionBERT): these papers train language models only, so nothing is
# published for sequence-to-sequence data. The training conventions are MDLM's (configs/config.yaml: Adam
# (0.9, 0.999), lr 3e-4, no weight decay, constant lr after 2500 warmup updates, clip 1, bf16, EMA 0.9999,
# 512 sequences per update, dropout 0.1), shared by MD4 (EMA 0.9999); the decoding follows each paper: MDLM
# ddpm_cache with 128 steps, MD4/GenMD4 ancestral (ddpm, their denoiser is time-conditioned), DiffusionBERT
# 128 steps and MBR over 3 samples for conditional generation. The update count is the dataset's Difformer one.
masked_defaults() {
    ARCH="${1}_base" SENTENCES=512 MAX_PER_GPU=128 PRECISION=bf16 AVERAGE=ema KD=0
    TRAIN=(--optimizer adam --adam-betas "(0.9,0.999)" --adam-eps 1e-08 --lr 3e-4 --weight-decay 0
        --lr-scheduler fixed --warmup-updates 2500 --clip-norm 1.0 --dropout 0.1
        --store-ema --ema-decay 0.9999 --keep-last-epochs 5)
    case "$1" in
        mdlm) DECODE=(--sampler ddpm_cache --decoding-steps 128) ;;
        md4 | genmd4) DECODE=(--sampler ddpm --decoding-steps 128) ;;
        diffusionbert) DECODE=(--sampler ddpm --decoding-steps 128 --noise-beam 3 --candidate-selection mbr-bleu) ;;
    esac
}

# Print a command (shell-quoted), then run it unless DRY_RUN=1.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@"; fi
}

# Like run, with stdout written to the file given first.
run_to() {
    local out="$1"
    shift
    printf '+'
    printf ' %q' "$@"
    printf ' > %q\n' "$out"
    if [[ "${DRY_RUN:-0}" != 1 ]]; then "$@" > "$out"; fi
}

# Hardware flags and the per-GPU batch: the published batch is kept whatever the number of GPUs,
# by splitting it over GPUs and --update-freq.
hardware_flags() {
    local gpus=$((GPUS > 0 ? GPUS : 1)) total per flag
    if [[ -n "${TOKENS:-}" ]]; then total=$TOKENS flag=--max-tokens; else total=$SENTENCES flag=--batch-size; fi
    local freq=$(((total + gpus * MAX_PER_GPU - 1) / (gpus * MAX_PER_GPU)))
    per=$((total / (gpus * freq)))
    HARDWARE=("$flag" "$per" --update-freq "$freq")
    if ((GPUS == 0)); then
        HARDWARE+=(--cpu)
        return
    fi
    ((GPUS > 1)) && HARDWARE+=(--distributed-world-size "$GPUS" --ddp-backend no_c10d)
    case "${PRECISION:-fp32}" in
        fp16) HARDWARE+=(--fp16) ;;
        bf16) HARDWARE+=(--bf16) ;;
        fp32) ;;
        *) echo "PRECISION must be fp16, bf16 or fp32 (got $PRECISION)" >&2 && exit 2 ;;
    esac
}

stage_prepare() {
    run "$PYTHON" "$ROOT/data_scripts/${PREPARE[0]}" "${PREPARE[@]:1}" --raw-dir "$RAW" --out-dir "$DATA"
}

# The AR teacher of sequence-level knowledge distillation: fairseq's own transformer recipe.
stage_teacher() {
    local device=()
    ((GPUS == 0)) && device=(--cpu)
    ((GPUS > 1)) && device=(--distributed-world-size "$GPUS")
    ((GPUS > 0)) && device+=(--fp16)
    run fairseq-train "$DATA" --task translation -s "$SRC" -t "$TGT" --arch "$TEACHER_ARCH" \
        --share-all-embeddings --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
        --optimizer adam --adam-betas "(0.9,0.98)" --lr-scheduler inverse_sqrt --warmup-updates 4000 \
        --eval-bleu --eval-bleu-remove-bpe sentencepiece --eval-bleu-args '{"beam": 5}' \
        --best-checkpoint-metric bleu --maximize-best-checkpoint-metric \
        "${TEACHER[@]}" "${device[@]}" --save-dir "$WORK/teacher" --no-epoch-checkpoints
}

stage_distill() {
    run "$PYTHON" "$ROOT/data_scripts/distill.py" --data "$DATA" --teacher "$WORK/teacher/checkpoint_best.pt" \
        --out-dir "$DATA_KD" --beam 5
}

stage_train() {
    local data="$DATA"
    ((KD)) && data="$DATA_KD"
    hardware_flags
    run fairseq-train "$data" --user-dir "$ROOT/fairseq_plugins" --task text_diffusion -s "$SRC" -t "$TGT" \
        --arch "$ARCH" --criterion text_diffusion_loss "${TRAIN[@]}" "${HARDWARE[@]}" \
        --save-dir "$CKPT" --log-format simple --log-interval 100
}

stage_average() {
    local n
    case "$AVERAGE" in
        best*) n="${AVERAGE#best }"
            run "$PYTHON" -m fairseq_plugins.average_checkpoints --dir "$CKPT" --best "$n" \
                --output "$CKPT/checkpoint_avg.pt" ;;
        ema) run "$PYTHON" -m fairseq_plugins.average_checkpoints --ema --inputs "$CKPT/checkpoint_last.pt" \
                --output "$CKPT/checkpoint_avg.pt" ;;
    esac
}

stage_generate() {
    local device=()
    ((GPUS == 0)) && device=(--cpu)
    run_to "$OUT/generate-test.txt" fairseq-generate "$DATA" --user-dir "$ROOT/fairseq_plugins" \
        --task text_diffusion -s "$SRC" -t "$TGT" --path "$CKPT/checkpoint_avg.pt" --gen-subset test \
        --batch-size 100 --post-process sentencepiece --seed 1 "${DECODE[@]}" "${device[@]}"
}

stage_score() {
    run "$PYTHON" -m fairseq_plugins.score --generate "$OUT/generate-test.txt" --ref "$DATA/raw/test.$TGT" \
        --tokenize "$TOKENIZE" "${SCORE_FLAGS[@]}" --json "$OUT/scores.json"
}

recipe_usage() {
    echo "usage: bash $0 MODEL [STAGE ...]   MODEL: ${MODELS// / | }   STAGE: ${STAGES// / | } (default: all" \
        "but teacher/distill unless the model trains on distilled data)" >&2
    exit 2
}

# recipe_main MODEL [STAGE ...]: `configure MODEL` (defined by the recipe) sets the model's variables.
recipe_main() {
    [[ $# -ge 1 && " $MODELS " == *" $1 "* ]] || recipe_usage
    local model="$1" stages stage
    shift
    SENTENCES="" TOKENS="" KD=0
    configure "$model"
    PRECISION="${PRECISION_OVERRIDE:-$PRECISION}"
    WORK="${WORK:-$ROOT/runs/$DATASET}"
    RAW="${RAW:-$ROOT/data/$DATASET}"
    DATA="$WORK/data-bin" DATA_KD="$WORK/data-bin-kd" CKPT="$WORK/$model/checkpoints" OUT="$WORK/$model"
    stages="$*"
    if [[ -z "$stages" ]]; then
        stages="prepare train average generate score"
        ((KD)) && stages="prepare teacher distill train average generate score"
    fi
    [[ "${DRY_RUN:-0}" == 1 ]] || mkdir -p "$OUT"
    for stage in $stages; do
        [[ " $STAGES " == *" $stage "* ]] || recipe_usage
        "stage_$stage"
    done
}
