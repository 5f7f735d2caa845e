#!/usr/bin/env bash
# Fills .carry/ (git-ignored through .git/info/exclude) with what benchmarks/gpu_s34.sh needs on
# the GPU machine, within the device's 64 MiB transfer limit: transformers 4.57 cut down to the
# model families QAGen uses (the machine has 5.x), with its hub and tokenizers versions; SQuAD and
# the screening set X2, xz-compressed; and B0's weights, xz-compressed, since B0 as tracked
# (59.8 MB) leaves no room for the rest. Before the device call the tracked copy is taken out of
# the index (`git rm --cached quals_fast/models/qagen-minilm/model.safetensors`, and
# `/quals_fast/models/qagen-minilm/model.safetensors` in .git/info/exclude); `git reset -q --
# quals_fast/models/qagen-minilm/model.safetensors` puts it back afterwards.
set -euo pipefail
POOLS=${1:?usage: gpu_s34_carry.sh POOLS_DIR}
C=.carry
mkdir -p $C/squad .whl
grep -qx '/.carry/' .git/info/exclude || echo /.carry/ >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
site=$(mktemp -d)
for w in .whl/*.whl; do python3 -m zipfile -e "$w" "$site"; done
# AutoTokenizer imports every model family whose tokenizer is BERT's until one exports it, so each
# family keeps its package, configuration and tokenizer files; only the model code of the unused ones goes.
find "$site/transformers/models" -mindepth 2 -maxdepth 2 -type f ! -name '__init__.py' ! -name 'tokenization_*' ! -name 'configuration_*' \
  ! -path '*/models/auto/*' ! -path '*/models/bart/*' ! -path '*/models/bert/*' ! -path '*/models/encoder_decoder/*' -delete
find "$site" -name '*.pyc' -delete
tar cJf $C/site.tar.xz -C "$site" .
rm -rf "$site"
for f in ../shared/data/squad/*.json; do xz -9 -c "$f" > $C/squad/"$(basename "$f")".xz; done
xz -9 -c "$POOLS/X2" > $C/X2.json.xz
xz -9 -T2 -c quals_fast/models/qagen-minilm/model.safetensors > $C/B0.safetensors.xz
rm -rf $C/minilm
du -sh $C
