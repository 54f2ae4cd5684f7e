"""Word count, reduce side, in Python: sums the little-endian 8-byte counts
emitted for a word and writes the row {"word": .., "count": ..}, as the Rust
`wordcount-reduce` does.
Build: wasmgrid build guest-examples/python-wordcount/reduce.py -o python_wordcount_reduce.wasm
"""

import wasmgrid


@wasmgrid.reducer
def reduce(key, values):
    total = 0
    for v in values:
        if len(v) != 8:
            raise ValueError(f"count for a word must be 8 bytes, got {len(v)}")
        total += int.from_bytes(v, "little")
    return {"word": key.decode("utf-8", "replace"), "count": total}
