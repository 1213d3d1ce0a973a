# The 7m seed-1 grid again (sweeps/fstar-design-seed1-7m.yaml) on two GPUs, four workers, with
# the store-locking fix (tests/test_store_locks.py): the live store on the local disk (/tmp), a
# whole copy in $OUT every 20 s and at the end (--backup), SQLite's integrity check of both.
#   T0=$(date +%s); PREP_PY=0 source experiments/reference/results/2026-11-30-prep.sh
#   DEADLINE=$((T0+300)) bash experiments/reference/results/2026-11-30-c11.sh
set -u
export COQAT_CODE_VERSION=0.1.0+g9f27661 PYTHONUNBUFFERED=1
python3 -m coqat.cli sweep run experiments/reference/sweeps/fstar-design-seed1-7m.yaml \
  --store /tmp/s.sqlite --root /tmp/sr --slots 4 --devices auto --no-progress \
  --deadline $DEADLINE --backup $OUT/s.sqlite --backup-every 20 > $OUT/sweep.log 2>&1
echo "sweep exit $?"
for f in /tmp/s.sqlite $OUT/s.sqlite; do
  python3 -c "import sqlite3,sys; print(sys.argv[1], sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])" $f
done
python3 -m coqat.cli sweep status --store $OUT/s.sqlite 2>&1 | tail -4
cat $OUT/sweep.log
tail -n 3 /tmp/sr/logs/worker-*.log
