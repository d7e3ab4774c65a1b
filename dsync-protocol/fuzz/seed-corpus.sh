#!/bin/sh
# Seeds fuzz/corpus/decoder with the captured streams (split byte 0x80 first).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
caps="$here/../../fixtures/captures"
out="$here/corpus/decoder"
mkdir -p "$out"
for f in "$caps"/*.c2s "$caps"/*.s2c "$caps"/*.s2c.ch0; do
    [ -s "$f" ] || continue
    name=$(basename "$f")
    { printf '\200'; cat "$f"; } > "$out/$name"
    # the dsync part alone, without a doveadm-server preamble
    python3 - "$f" "$out/$name.dsync" <<'PY'
import sys
b = open(sys.argv[1], 'rb').read()
i = b.find(b'VERSION\tdsync\t')
if i > 0:
    open(sys.argv[2], 'wb').write(b'\x80' + b[i:])
PY
done
ls "$out" | wc -l
