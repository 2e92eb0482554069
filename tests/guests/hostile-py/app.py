"""A Python step that misbehaves on request, to check that the host contains
a Python runtime as it contains a Rust step (`tests/guests/hostile`): the
same `mode`s, for the limits a step can hit.

- `spin`: a pure compute loop that never ends.
- `memory-bomb`: allocates and touches 1 MiB after 1 MiB, forever.
- `scratch-write` (`bytes`): writes `bytes` into `/tmp/fill`, 64 KiB a
  write; a failed write fails the step.
- `error` (`kind`, `message`): fails with that step error.
- `raise`: raises an exception that is not a step error.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import (
    StepError_Failed,
    StepError_InvalidInput,
    StepError_Retryable,
)

ERRORS = {
    "invalid-input": StepError_InvalidInput,
    "retryable": StepError_Retryable,
    "failed": StepError_Failed,
}


def spin():
    n = 0
    while True:
        n += 1


def memory_bomb():
    hoard = []
    while True:
        hoard.append(bytearray(b"\x01" * (1 << 20)))


def scratch_write(total):
    block = b"\x07" * (64 << 10)
    written = 0
    try:
        with open("/tmp/fill", "wb", buffering=0) as f:
            while written < total:
                n = f.write(block[: min(len(block), total - written)])
                written += n
    except OSError as e:
        raise Err(StepError_Failed(f"write failed after {written} bytes: {e}"))
    return {"written": written}


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        request = json.loads(input)
        mode = request.get("mode")
        host.log(host.LogLevel.INFO, f"mode {mode}")
        if mode == "spin":
            spin()
        elif mode == "memory-bomb":
            memory_bomb()
        elif mode == "scratch-write":
            out = scratch_write(request["bytes"])
        elif mode == "error":
            raise Err(ERRORS[request["kind"]](request["message"]))
        elif mode == "raise":
            raise RuntimeError("hostile Python step raised on purpose")
        else:
            raise Err(StepError_InvalidInput(f"unknown mode {mode!r}"))
        return json.dumps(out).encode()
