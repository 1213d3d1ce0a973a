# data folders for a device call: /tmp/linux (reference corpus, reference tokenizer) and
# /tmp/pysrc (held-out Python corpus, its own BPE 8192), each only if missing
set -u
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
[ -f /tmp/linux/manifest.json ] || python3 -m coqat.cli data prepare .devdata/linux-c.jsonl.xz \
  --out /tmp/linux --tokenizer experiments/reference/tokenizer.json > $OUT/prep_linux.log 2>&1
SP=$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
P=""; for p in torch sympy scipy pandas sklearn numpy matplotlib networkx jax statsmodels skimage torch_geometric; do
  [ -d $SP/$p ] && P="$P $SP/$p"; done
echo "python corpus: $P" > $OUT/prep_py.log
if [ "${PREP_PY:-1}" = 1 ] && [ ! -f /tmp/pysrc/manifest.json ]; then
  RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-6} python3 -m coqat.cli data prepare $P --suffix .py \
    --vocab 8192 --out /tmp/pysrc >> $OUT/prep_py.log 2>&1 &
  PY_PID=$!
fi
