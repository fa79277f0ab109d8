#!/usr/bin/env bash
# Gigaword headline generation (Rush et al. 2015 split: article -> title), SentencePiece 16k.
#
#   RAW=path/to/gigaword GPUS=1 bash examples/recipes/gigaword.sh difformer
#
# Scored by the Gigaword convention: ROUGE-1/2/L F1 with Porter stemming (rouge-score), averaged over the
# test set (fairseq_plugins.score prints rouge1/rouge2/rougeL). No diffusion paper of REFERENCES.md publishes a
# Gigaword configuration: every model here is "transferred" — Difformer and DiffuSeq with their QQP recipes
# (the other short-output task they publish; ROUGE-based selection, mbr-rouge, instead of mbr-bleu), the masked
# models with MDLM's conventions.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET=gigaword SRC=src TGT=tgt TOKENIZE=13a
PREPARE=(prepare_gigaword.py --vocab-size 16000)
SCORE_FLAGS=()
TEACHER_ARCH=transformer_iwslt_de_en TEACHER=() # no distillation

configure() {
    case "$1" in
        difformer) # transferred: Difformer's QQP recipe, 300k updates for the 3.8M training pairs
            ARCH=difformer_base TOKENS=8000 MAX_PER_GPU=8000 PRECISION=fp16 AVERAGE="best 5"
            TRAIN=("${DIFFORMER[@]}" --lr 5e-4 --dropout 0.1 --max-update 300000 --validate-interval-updates 5000
                --save-interval-updates 5000 --keep-interval-updates 5)
            DECODE=("${DIFFORMER_DECODE[@]/mbr-bleu/mbr-rouge}" --length-beam 5 --noise-beam 2) ;;
        diffuseq) # transferred: DiffuSeq's QQP recipe
            ARCH=diffuseq_base SENTENCES=2048 MAX_PER_GPU=512 PRECISION=fp32 AVERAGE=ema
            TRAIN=("${DIFFUSEQ[@]}" --max-update 50000 --total-num-update 50000)
            DECODE=("${DIFFUSEQ_DECODE[@]/mbr-bleu/mbr-rouge}") ;;
        *) # transferred: MDLM's training conventions
            masked_defaults "$1"
            TRAIN+=(--max-update 300000) ;;
    esac
}

recipe_main "$@"
