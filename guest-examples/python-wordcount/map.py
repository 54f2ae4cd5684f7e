"""Word count, map side, in Python: counts the words of its partition and
emits one (word, count) pair per distinct word, the count as 8
little-endian bytes: the same pairs as the Rust `wordcount-map`, so either
reducer can sum them.
Build: wasmgrid build guest-examples/python-wordcount/map.py -o python_wordcount_map.wasm
"""

import wasmgrid


@wasmgrid.mapper
def run(partition):
    counts = {}
    for chunk in wasmgrid.chunks():
        for word in wasmgrid.words(chunk):
            counts[word] = counts.get(word, 0) + 1
    wasmgrid.emit_pairs((word, n.to_bytes(8, "little")) for word, n in counts.items())
