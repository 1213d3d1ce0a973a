# issue 16's repeats (sweeps/fstar-design-repeats.yaml: seed 1 at 4m/17m 1-bit, 2 bits at
# 4m/17m/50m, 30m 1-bit) on two GPUs, four workers (two per GPU), one store kept under $OUT so a
# kill at the call's limit loses only the runs in flight. Workers claim only pieces whose
# estimate ends before $DEADLINE; a second call continues the returned store (STORE0).
# Run keys use code version 0.1.0+g9f27661, the store of the earlier design calls (see
# 2026-11-30-c5.sh for why the keys carry over).
#   source experiments/reference/results/2026-11-30-prep.sh   # PREP_PY=0: Linux corpus only
#   DEADLINE=... STORE0=.devdata/s0.sqlite bash experiments/reference/results/2026-11-30-c8.sh
set -u
export COQAT_CODE_VERSION=0.1.0+g9f27661 PYTHONUNBUFFERED=1
[ -f $OUT/s.sqlite ] || { cp ${STORE0:-.devdata/s0.sqlite} $OUT/s.sqlite; chmod u+w $OUT/s.sqlite; }
python3 -m coqat.cli sweep run experiments/reference/sweeps/fstar-design-repeats.yaml \
  --store $OUT/s.sqlite --root /tmp/sr --slots 4 --devices auto --no-progress \
  --deadline $DEADLINE > $OUT/sweep.log 2>&1
echo "sweep exit $?"
python3 -c "import sqlite3; sqlite3.connect('$OUT/s.sqlite').execute('pragma wal_checkpoint(truncate)')"
python3 -m coqat.cli sweep status --store $OUT/s.sqlite 2>&1 | tail -8
tail -30 $OUT/sweep.log
