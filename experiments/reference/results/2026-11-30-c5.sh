# issue 16's remaining grids on two GPUs, one store: GPU 0 takes the held-out Python grids then
# the repeats, GPU 1 the 50m grid then the repeats; every worker stops claiming at $DEADLINE.
# Run keys use code version 0.1.0+g9f27661 (the store of the earlier design calls; the
# single-GPU training code is unchanged since: git diff 9f27661 -- src/coqat/{train,model,quant}
# touches only process-group teardown), so the done 90m runs are not trained again.
set -u
export COQAT_CODE_VERSION=0.1.0+g9f27661
[ -f /tmp/s.sqlite ] || { cp .devdata/s0.sqlite /tmp/s.sqlite; chmod u+w /tmp/s.sqlite; }
R="--store /tmp/s.sqlite --root /tmp/sr --slots 1 --devices none --no-progress --deadline $DEADLINE"
E=experiments
(export CUDA_VISIBLE_DEVICES=0
 python3 -m coqat.cli sweep run $E/heldout-python/sweeps/fstar-heldout-python.yaml $R --worker-id g0
 python3 -m coqat.cli sweep run $E/reference/sweeps/fstar-design-repeats.yaml $R --worker-id g0
) > $OUT/sweep_g0.log 2>&1 &
(export CUDA_VISIBLE_DEVICES=1
 python3 -m coqat.cli sweep run $E/reference/sweeps/fstar-design-large.yaml $R --worker-id g1
 python3 -m coqat.cli sweep run $E/reference/sweeps/fstar-design-repeats.yaml $R --worker-id g1
) > $OUT/sweep_g1.log 2>&1 &
wait
python3 -c "import sqlite3; c=sqlite3.connect('/tmp/s.sqlite'); c.execute('pragma wal_checkpoint(truncate)'); c.execute(\"vacuum into '$OUT/s.sqlite'\")"
python3 -m coqat.cli sweep status --store /tmp/s.sqlite 2>&1 | tail -20
tail -4 $OUT/sweep_g0.log $OUT/sweep_g1.log
