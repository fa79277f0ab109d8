#!/usr/bin/env bash
# WMT14 English -> German (4.5M pairs; newstest2014), joint SentencePiece 40k.
#
#   RAW=path/to/wmt14 GPUS=4 bash examples/recipes/wmt14_en_de.sh difformer
#
# Published here: Difformer (scripts/wmt14_en_de of the paper's code): difformer_base (6+6, d 512, ffn 2048,
# 8 heads), dropout 0.1, lr 5e-4, 16k tokens per GPU on 4 GPUs (64k per update), 300k updates, fp16,
# knowledge-distilled data, best 5 averaged; 20 steps (early stop 5), length beam 7 x noise beam 3.
# Reported: tokenized BLEU 27.74 with compound splitting (##AT##-##AT##), sacreBLEU 26.2. German targets:
# sacreBLEU with the intl tokenizer. Not published for this data: DiffuSeq, the masked-diffusion models.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DATASET=wmt14_en_de SRC=en TGT=de TOKENIZE=intl
PREPARE=(prepare_wmt14.py --src en --tgt de --vocab-size 40000)
SCORE_FLAGS=(--compound-split)
# fairseq examples/scaling_nmt (transformer big); it gives no update count: 300k updates here.
TEACHER_ARCH=transformer_vaswani_wmt_en_de_big
TEACHER=(--lr 5e-4 --warmup-init-lr 1e-07 --dropout 0.3 --weight-decay 0.0 --max-tokens 3584 --update-freq 16
    --max-update 300000)

configure() {
    case "$1" in
        difformer) # published
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
