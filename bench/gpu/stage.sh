#!/usr/bin/env bash
# Stage the offline wheels for the GPU machine in pieces small enough to travel with the
# working tree (run here, on the machine with a package index).
#
#   bench/gpu/stage.sh [PIECE_MIB]     (default 33)
#
# A device call carries at most 64 MiB, the checkout included (about 30 MiB, mostly the testbed
# weights), so the wheels go over in pieces of PIECE_MIB, one call each. Two wheel sets:
#   A: vLLM 0.26.0 and what it needs (../shared/gpu/vllm-0.26.0-cp312-wheels.txt)
#   B: Ray 2.60.0 (serve, serve.llm) and tts_ray's own needs (bench/gpu/ray-2.60.0-cp312-wheels.txt)
# A comes first in one tar stream, so `tts-ray profile` (vLLM only) can start on the device
# once A's pieces are there, while B's still travel.
#
# To fit fewer calls, files the GPU run never loads are deleted from three wheels:
#   vllm:  vllm_flash_attn/_vllm_fa2_C (FlashAttention 2: on Hopper vLLM uses FA3),
#          _moe_C_stable_libtorch (MoE kernels, imported under suppress(ImportError); dense
#          models never call them), vllm-rs (the Rust frontend, only with VLLM_USE_RUST_FRONTEND),
#          deep_gemm extensions built for Pythons other than 3.12;
#   ray:   jars/ray_dist.jar (Java workers), the dashboard's JS source map;
#   mistral_common: its bundled tekken tokenizer JSON files (loaded only when asked for);
# and pycountry (pulled in for pydantic_extra_types' language codes) is left out.
# pip installs the pruned wheels as they are (--no-deps; RECORD is not checked on install).
#
# Result: .gpu/stage/pNN/bundle.tar.NNN (one folder per call), .gpu/stage/MANIFEST_A/B.
set -euo pipefail
cd "$(dirname "$0")/../.."
piece_mib=${1:-33}
shared=../shared/gpu
stage=.gpu/stage
work=.gpu/work
mkdir -p .gpu
[ -d .gpu/vllm-bundle ] || bash "$shared/make-bundle.sh" .gpu/vllm-bundle
[ -d .gpu/ray-bundle ] || bash "$shared/make-bundle.sh" .gpu/ray-bundle bench/gpu/ray-2.60.0-cp312-wheels.txt
rm -rf "$work" "$stage" && mkdir -p "$work/A" "$work/B" "$stage"
cat .gpu/vllm-bundle/part*/bundle.tar.* | tar xf - -C "$work/A"
cat .gpu/ray-bundle/part*/bundle.tar.* | tar xf - -C "$work/B"
rm -f "$work"/A/pycountry-*.whl
zip -q -d "$work"/A/vllm-0.26.0-*.whl 'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' \
  'vllm/_moe_C_stable_libtorch.abi3.so' 'vllm/vllm-rs' \
  'vllm/third_party/deep_gemm/_C.cpython-310-*' 'vllm/third_party/deep_gemm/_C.cpython-311-*' \
  'vllm/third_party/deep_gemm/_C.cpython-313-*' 'vllm/third_party/deep_gemm/_C.cpython-314-*'
zip -q -d "$work"/A/mistral_common-*.whl 'mistral_common/data/tekken_*.json'
zip -q -d "$work"/B/ray-2.60.0-*.whl 'ray/jars/ray_dist.jar' 'ray/dashboard/client/build/static/js/*.map'
(cd "$work/A" && ls *.whl) > "$stage/MANIFEST_A"
(cd "$work/B" && ls *.whl) > "$stage/MANIFEST_B"
# one stream, two tar archives back to back (extract with tar -i): every A wheel before any B wheel
(cd "$work/A" && tar cf ../A.tar *.whl) && (cd "$work/B" && tar cf ../B.tar *.whl)
a_bytes=$(stat -c %s "$work/A.tar")
cat "$work/A.tar" "$work/B.tar" | split -b "${piece_mib}M" -d -a 3 - "$work/bundle.tar."
rm "$work/A.tar" "$work/B.tar"
for piece in "$work"/bundle.tar.*; do
  n=${piece##*.}
  mkdir -p "$stage/p$n" && mv "$piece" "$stage/p$n/"
done
echo "$a_bytes" > "$stage/A_BYTES"
cp "$stage"/MANIFEST_A "$stage"/MANIFEST_B "$stage/p000/"  # they travel with the first piece
rm -rf "$work"
echo "$(ls -d "$stage"/p* | wc -l) pieces of ${piece_mib} MiB in $stage; set A ends at byte $a_bytes" \
     "(piece $((a_bytes / (piece_mib * 1048576))))"
du -sh "$stage"/p*
