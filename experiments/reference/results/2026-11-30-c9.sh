# issue 16, part 4 (sweeps/fstar-design-seed1.yaml: seed 1 at 7m, 30m, 50m, 90m; 90m to f = 0.6)
# on two GPUs, four workers (two per GPU), the store kept under $OUT, continuing the store that
# 2026-11-30-c8 returned (.devdata/s1.sqlite). Workers claim only pieces whose estimate ends
# before $DEADLINE. Run keys: code version 0.1.0+g9f27661 (see 2026-11-30-c5.sh).
#   T0=$(date +%s); PREP_PY=0 source experiments/reference/results/2026-11-30-prep.sh
#   DEADLINE=$((T0+555)) bash experiments/reference/results/2026-11-30-c9.sh
set -u
export COQAT_CODE_VERSION=0.1.0+g9f27661 PYTHONUNBUFFERED=1
[ -f $OUT/s.sqlite ] || { cp ${STORE0:-.devdata/s1.sqlite} $OUT/s.sqlite; chmod u+w $OUT/s.sqlite; }
python3 -m coqat.cli sweep run experiments/reference/sweeps/fstar-design-seed1.yaml \
  --store $OUT/s.sqlite --root /tmp/sr --slots 4 --devices auto --no-progress \
  --deadline $DEADLINE > $OUT/sweep.log 2>&1
echo "sweep exit $?"
python3 -c "import sqlite3; sqlite3.connect('$OUT/s.sqlite').execute('pragma wal_checkpoint(truncate)')"
python3 -m coqat.cli sweep status --store $OUT/s.sqlite 2>&1 | tail -8
tail -30 $OUT/sweep.log
tail -3 /tmp/sr/logs/worker-*.log
