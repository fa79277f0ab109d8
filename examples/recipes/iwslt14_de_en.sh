#!/usr/bin/env bash
# IWSLT14 German -> English (TED talks; fairseq's lowercased split), joint SentencePiece 10k.
#
#   bash examples/recipes/iwslt14_de_en.sh MODEL [STAGE ...]      (README.md in this folder)
#   RAW=path/to/de-en GPUS=1 bash examples/recipes/iwslt14_de_en.sh difformer
#
# Published here: Difformer (scripts/iwslt14_de_en of the paper's code): 6+6 layers d 512 ffn 1024 4 heads,
# dropout 0.3, lr 5e-4, 8k tokens per update on one GPU, 300k updates, fp16, knowledge-distilled data, the
# best 5 checkpoints (validation BLEU) averaged; 20 steps (early stop 5), length beam 7 x noise beam 3.
# Reported: tokenized BLEU 34.48, sacreBLEU 33.5. Not published for this data (settings transferred, see
# README.md): DiffuSeq (its QQP recipe) and the masked-diffusion models (MDLM's conventions).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET=iwslt14 SRC=de TGT=en TOKENIZE=13a
PREPARE=(prepare_iwslt14.py --src de --tgt en --vocab-size 10000)
SCORE_FLAGS=()
# fairseq examples/translation (IWSLT14 De-En); its README trains until stopped: 50k updates here.
TEACHER_ARCH=transformer_iwslt_de_en
TEACHER=(--lr 5e-4 --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096 --max-update 50000)

configure() {
    case "$1" in
        difformer) # published
            ARCH=difformer_iwslt_de_en KD=1 TOKENS=8000 MAX_PER_GPU=8000 PRECISION=fp16 AVERAGE="best 5"
            TRAIN=("${DIFFORMER[@]}" --lr 5e-4 --dropout 0.3 --max-update 300000 --validate-interval 5)
            DECODE=("${DIFFORMER_DECODE[@]}" --length-beam 7 --noise-beam 3) ;;
        diffuseq) # transferred: DiffuSeq's QQP recipe, with room for translation lengths (128 + 128)
            ARCH=diffuseq_base SENTENCES=2048 MAX_PER_GPU=512 PRECISION=fp32 AVERAGE=ema
            TRAIN=("${DIFFUSEQ[@]}" --max-update 50000 --total-num-update 50000 --max-source-positions 128
                --max-target-positions 128)
            DECODE=("${DIFFUSEQ_DECODE[@]}") ;;
        *) # transferred: MDLM's training conventions, Difformer's update count
            masked_defaults "$1"
            TRAIN+=(--max-update 300000) ;;
    esac
}

recipe_main "$@"
