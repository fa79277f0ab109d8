#!/usr/bin/env bash
# QQP paraphrase generation (DiffuSeq's split, {train,valid,test}.jsonl with "src"/"trg"), SentencePiece 8k.
#
#   RAW=path/to/QQP GPUS=4 bash examples/recipes/qqp.sh diffuseq
#
# Published here: DiffuSeq (scripts/train.sh of the paper's code): diffuseq_base (12 layers, d 768, embeddings
# 128, 64 + 64 positions), lr 1e-4 linearly annealed, 50k updates, 2048 sequences per update (4 GPUs),
# EMA 0.9999; 2000 decoding steps, MBR over 10 samples. Reported (DiffuSeq protocol: NLTK sentence BLEU):
# BLEU 0.2413, ROUGE-L 0.5880. Difformer (scripts/qqp): difformer_base, dropout 0.1, lr 5e-4, 8k tokens,
# 50k updates, no distillation, best 5 averaged; 20 steps (early stop 5), length beam 5 x noise beam 2.
# Reported: BLEU 30.43 (fairseq tokenized), ROUGE-L 61.25. The masked models: transferred (MDLM's conventions).
# fairseq_plugins.score prints every protocol: diffuseq_bleu (x100), tokenized_bleu, rougeL, self_bleu, ...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET=qqp SRC=src TGT=tgt TOKENIZE=13a
PREPARE=(prepare_jsonl.py --vocab-size 8000)
SCORE_FLAGS=(--no-rouge-stemmer)
TEACHER_ARCH=transformer_iwslt_de_en TEACHER=() # no distillation in the published QQP recipes

configure() {
    case "$1" in
        difformer) # published
            ARCH=difformer_base TOKENS=8000 MAX_PER_GPU=8000 PRECISION=fp16 AVERAGE="best 5"
            TRAIN=("${DIFFORMER[@]}" --lr 5e-4 --dropout 0.1 --max-update 50000 --validate-interval 5)
            DECODE=("${DIFFORMER_DECODE[@]}" --length-beam 5 --noise-beam 2) ;;
        diffuseq) # published
            ARCH=diffuseq_base SENTENCES=2048 MAX_PER_GPU=512 PRECISION=fp32 AVERAGE=ema
            TRAIN=("${DIFFUSEQ[@]}" --max-update 50000 --total-num-update 50000)
            DECODE=("${DIFFUSEQ_DECODE[@]}") ;;
        *) # transferred: MDLM's training conventions, the published 50k updates of QQP
            masked_defaults "$1"
            TRAIN+=(--max-update 50000) ;;
    esac
}

recipe_main "$@"
