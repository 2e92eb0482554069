// `transform` in JavaScript: filters, projects, renames and sorts a list of
// JSON records, the small reshaping a workflow needs between two steps.
//
//   stepbox step target/polyglot/transform-js.wasm --input '{
//     "records": [{"word": "the", "count": 2}, {"word": "cat", "count": 1}],
//     "where": {"count": {"min": 2}},
//     "rename": {"word": "term"},
//     "sort": [{"by": "count", "descending": true}]
//   }'
//   {"records":[{"term":"the","count":2}],"count":1,"dropped":1}
//
// Input (an object; other keys are an `invalid-input` error):
//   records  required, an array of objects.
//   where    optional, {FIELD: CONDITION}: keeps the records that meet every
//            condition. A condition is a value (equal to it, compared as
//            JSON), or an object of `eq`, `ne`, `min`, `max` (numbers or
//            strings, inclusive) and `in` (an array of values).
//   pick     optional, an array of fields: keeps only these, in this order
//            (a missing field stays missing).
//   rename   optional, {FROM: TO}: renames fields, after `pick`.
//   sort     optional, an array of {by: FIELD, descending: false}, applied
//            after `where` and before `pick`; ties keep their order. Missing
//            fields sort last; numbers before strings.
//   limit    optional, a non-negative integer: keeps the first ones.
// Output: {records, count: how many were kept, dropped: how many were not}.
//
// Built with componentize-js (`scripts/build-polyglot`), which evaluates this
// module at build time and snapshots the engine (Wizer): a run starts with
// the code already parsed.

import { log } from 'stepbox:step/host@0.1.0';

const KEYS = new Set(['records', 'where', 'pick', 'rename', 'sort', 'limit']);
const OPERATORS = new Set(['eq', 'ne', 'min', 'max', 'in']);

// A step error: componentize-js turns an exception that has a `payload`
// into the `err` case of `run`'s result, the payload being the `step-error`
// variant as `{tag, val}`. Any other exception traps, like a Rust panic.
class StepError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}

function invalid(message) {
  return new StepError('invalid-input', message);
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const isComparable = (v) => typeof v === 'number' || typeof v === 'string';

// JSON equality (object keys in any order).
function equal(a, b) {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => equal(x, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => k in b && equal(a[k], b[k]));
  }
  return false;
}

// A predicate for one field's condition, checked once up front.
function condition(field, cond) {
  if (!isObject(cond)) return (v) => equal(v, cond);
  const tests = [];
  for (const [op, arg] of Object.entries(cond)) {
    if (!OPERATORS.has(op)) {
      throw invalid(`where.${field}: unknown operator \`${op}\`, expected one of eq, ne, min, max, in`);
    }
    switch (op) {
      case 'eq': tests.push((v) => equal(v, arg)); break;
      case 'ne': tests.push((v) => !equal(v, arg)); break;
      case 'in':
        if (!Array.isArray(arg)) throw invalid(`where.${field}.in must be an array`);
        tests.push((v) => arg.some((a) => equal(v, a)));
        break;
      default: // min, max
        if (!isComparable(arg)) throw invalid(`where.${field}.${op} must be a number or a string`);
        tests.push(op === 'min'
          ? (v) => typeof v === typeof arg && v >= arg
          : (v) => typeof v === typeof arg && v <= arg);
    }
  }
  return (v) => tests.every((t) => t(v));
}

// Orders two values of a sort key: numbers, then strings, then the rest
// (missing last).
function compare(a, b) {
  const rank = (v) => (typeof v === 'number' ? 0 : typeof v === 'string' ? 1 : v === undefined ? 3 : 2);
  const [ra, rb] = [rank(a), rank(b)];
  if (ra !== rb) return ra - rb;
  if (ra > 1 || a === b) return 0;
  return a < b ? -1 : 1;
}

function fields(value, name) {
  if (!Array.isArray(value) || !value.every((f) => typeof f === 'string')) {
    throw invalid(`\`${name}\` must be an array of field names`);
  }
  return value;
}

export function transform(request) {
  if (!isObject(request)) throw invalid('input must be an object with `records`');
  for (const key of Object.keys(request)) {
    if (!KEYS.has(key)) throw invalid(`unknown field \`${key}\`, expected one of ${[...KEYS].join(', ')}`);
  }
  const { records, where = {}, pick, rename = {}, sort = [], limit } = request;
  if (!Array.isArray(records)) throw invalid('`records` must be an array of objects');
  records.forEach((r, i) => {
    if (!isObject(r)) throw invalid(`records[${i}] is not an object`);
  });
  if (!isObject(where)) throw invalid('`where` must be an object of conditions');
  if (!isObject(rename) || !Object.values(rename).every((t) => typeof t === 'string')) {
    throw invalid('`rename` must be an object of field names');
  }
  if (!Array.isArray(sort) || !sort.every((s) => isObject(s) && typeof s.by === 'string')) {
    throw invalid('`sort` must be an array of {by, descending}');
  }
  if (limit !== undefined && !(Number.isInteger(limit) && limit >= 0)) {
    throw invalid('`limit` must be a non-negative integer');
  }
  const picked = pick === undefined ? undefined : fields(pick, 'pick');

  const tests = Object.entries(where).map(([field, cond]) => [field, condition(field, cond)]);
  let out = records.filter((r) => tests.every(([field, test]) => test(r[field])));
  if (sort.length > 0) {
    out = out
      .map((r, i) => [r, i])
      .sort(([a, i], [b, j]) => {
        for (const { by, descending } of sort) {
          const c = compare(a[by], b[by]);
          if (c !== 0) return descending && a[by] !== undefined && b[by] !== undefined ? -c : c;
        }
        return i - j;
      })
      .map(([r]) => r);
  }
  if (limit !== undefined) out = out.slice(0, limit);
  out = out.map((r) => {
    const kept = picked === undefined ? r : Object.fromEntries(picked.filter((f) => f in r).map((f) => [f, r[f]]));
    return Object.fromEntries(Object.entries(kept).map(([k, v]) => [rename[k] ?? k, v]));
  });
  return { records: out, count: out.length, dropped: records.length - out.length };
}

export function run(input) {
  let request;
  try {
    request = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(input));
  } catch (e) {
    throw invalid(`input is not JSON: ${e.message}`);
  }
  const result = transform(request);
  log('debug', `kept ${result.count} of ${result.count + result.dropped} records`);
  return new TextEncoder().encode(JSON.stringify(result));
}
