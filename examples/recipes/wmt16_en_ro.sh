#!/usr/bin/env bash
# WMT16 English -> Romanian (610k pairs; newstest2016), joint SentencePiece 40k, Romanian diacritics removed
# (the NAT convention of prepare_wmt16.py).
#
#   RAW=path/to/wmt16 GPUS=4 bash examples/recipes/wmt16_en_ro.sh difformer
#
# No diffusion paper of REFERENCES.md publishes a WMT16 configuration: every model here is "transferred" —
# Difformer with its WMT14 settings (the usual practice of NAT papers for En-Ro), DiffuSeq with its QQP recipe,
# the masked models with MDLM's conventions. fairseq's own baselines (sacreBLEU, no KD): AR 32.86, CMLM 31.26.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET=wmt16_en_ro SRC=en TGT=ro TOKENIZE=13a
PREPARE=(prepare_wmt16.py --src en --tgt ro --vocab-size 40000)
SCORE_FLAGS=()
# Transformer base teacher with fairseq's examples/translation settings; 300k updates.
TEACHER_ARCH=transformer_wmt_en_de
TEACHER=(--lr 5e-4 --warmup-init-lr 1e-07 --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096 --update-freq 4
    --max-update 300000)

configure() {
    case "$1" in
        difformer) # transferred: Difformer's WMT14 recipe
            ARCH=difformer_base KD=1 TOKENS=64000 MAX_PER_GPU=16000 PRECISION=fp16 AVERAGE="best 5"
            TRAIN=("${DIFFORMER[@]}" --lr 5e-4 --dropout 0.1 --max-update 300000 --validate-interval-updates 5000
                --save-interval-updates 5000 --keep-interval-updates 5)
            DECODE=("${DIFFORMER_DECODE[@]}" --length-beam 7 --noise-beam 3) ;;
        diffuseq) # transferred: DiffuSeq's QQP recipe, 128 + 128 positions
            ARCH=diffuseq_base SENTENCES=2048 MAX_PER_GPU=256 PRECISION=fp32 AVERAGE=ema
            TRAIN=("${DIFFUSEQ[@]}" --max-update 50000 --total-num-update 50000 --max-source-positions 128
                --max-target-positions 128)
            DECODE=("${DIFFUSEQ_DECODE[@]}") ;;
        *) # transferred: MDLM's training conventions, Difformer's update count
            masked_defaults "$1"
            TRAIN+=(--max-update 300000) ;;
    esac
}

recipe_main "$@"
