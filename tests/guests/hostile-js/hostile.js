// A JavaScript step that misbehaves on request, to check that the host
// contains a JavaScript runtime as it contains a Rust step
// (`tests/guests/hostile`): the same `mode`s, for the limits a step can hit.
//
// - `spin`: a pure compute loop that never ends.
// - `memory-bomb`: allocates and touches 1 MiB after 1 MiB, forever.
// - `scratch-write` (`bytes`): writes `bytes` into `/tmp/fill`, 64 KiB a
//   write, through `wasi:filesystem` (the JS engine has no file API of its
//   own); a failed write fails the step.
// - `error` (`kind`, `message`): fails with that step error.
// - `throw`: throws an exception that is not a step error.

import { log } from 'stepbox:step/host@0.1.0';
import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';

class StepError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}

function spin() {
  let n = 0;
  for (;;) n = (n + 1) | 0;
}

function memoryBomb() {
  const hoard = [];
  for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
}

function scratchWrite(total) {
  const tmp = getDirectories().find(([, path]) => path === '/tmp');
  if (!tmp) throw new StepError('failed', 'no /tmp preopen');
  const file = tmp[0].openAt({}, 'fill', { create: true, truncate: true }, { write: true });
  const block = new Uint8Array(64 << 10).fill(7);
  let written = 0;
  try {
    while (written < total) {
      const chunk = block.subarray(0, Math.min(block.length, total - written));
      file.write(chunk, BigInt(written));
      written += chunk.length;
    }
  } catch (e) {
    throw new StepError('failed', `write failed after ${written} bytes: ${e.payload ?? e}`);
  }
  return { written };
}

export function run(input) {
  const request = JSON.parse(new TextDecoder().decode(input));
  log('info', `mode ${request.mode}`);
  let out;
  switch (request.mode) {
    case 'spin': spin(); break;
    case 'memory-bomb': memoryBomb(); break;
    case 'scratch-write': out = scratchWrite(request.bytes); break;
    case 'error': throw new StepError(request.kind, request.message);
    case 'throw': throw new TypeError('hostile JavaScript step threw on purpose');
    default: throw new StepError('invalid-input', `unknown mode ${request.mode}`);
  }
  return new TextEncoder().encode(JSON.stringify(out));
}
