"""Test fixture: a Python scorer that misbehaves on purpose, chosen by config
key `mode`: `loop` spins forever, `grow` allocates without bound, `raise`
raises with the message in config key `message`; anything else answers
`ok` = 1.0 per row."""

import wasmgrid


@wasmgrid.scorer
def score(rows):
    mode = wasmgrid.config("mode")
    if mode == "loop":
        i = 0
        while True:
            i += 1
    if mode == "grow":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if mode == "raise":
        raise RuntimeError(wasmgrid.config("message", "hostile python"))
    return {"ok": [1.0] * len(rows)}
