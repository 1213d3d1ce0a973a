#!/usr/bin/env bash
# Does a results store stay whole in folder DIR when many workers write it at once?
# Runs the reference design sweeps (54 runs) with the fake engine (no GPU, no data) and 16
# workers ROUNDS times, each into a new store under DIR, and prints the folder's filesystem and
# SQLite's integrity check of every store. A damaged store in DIR and none in a local folder
# means: keep the live store on the local disk and copy it to DIR (`coqat sweep run --backup`).
#   bash bench/store_stress.sh DIR [ROUNDS]
set -u
DIR=${1:?usage: store_stress.sh DIR [ROUNDS]}; ROUNDS=${2:-5}
S=experiments/reference/sweeps
echo "$DIR: filesystem $(stat -f -c %T "$DIR") ($(df -P "$DIR" | awk 'NR==2 {print $1}'))"
for i in $(seq 1 "$ROUNDS"); do
  st="$DIR/stress-$i.sqlite"; rm -f "$st" "$st-wal" "$st-shm"
  COQAT_FAKE_DELAY=0.01 python3 -m coqat.cli sweep run $S/fstar-design.yaml \
    $S/fstar-design-repeats.yaml --store "$st" --root "/tmp/stress-root-$i" --slots 16 \
    --engine fake --devices none --no-progress > /tmp/stress-$i.log 2>&1
  rc=$?
  chk=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])" "$st" 2>&1)
  echo "round $i: sweep exit $rc, integrity: $chk, $(tail -1 /tmp/stress-$i.log)"
  rm -rf "$st" "$st-wal" "$st-shm" "/tmp/stress-root-$i"
done
