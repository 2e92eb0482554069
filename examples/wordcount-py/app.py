"""`wordcount` in Python: the same step as the Rust `examples/wordcount`.

Counts words, distinct words and lines, and reports the most frequent
words. Words are runs of letters and digits, lowercased; an apostrophe
inside a word (`didn't`) belongs to it. Ties in the ranking break
alphabetically, so the output is deterministic and the same as the Rust
step's for the same input:

    stepbox step target/polyglot/wordcount-py.wasm \
        --input '{"text": "the cat and the hat", "top": 1}'
    {"words":5,"unique":4,"lines":1,"top":[{"word":"the","count":2}]}

Input that is not an object with a string `text` and an optional
non-negative integer `top` (default 10), or that has other keys, fails
with `invalid-input`, as the Rust step's does.

Built with componentize-py (`scripts/build-polyglot`), which runs this
module's top level at build time and snapshots the result: the imports and
the compiled pattern below cost nothing per run.
"""

import json
import re
from collections import Counter

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import StepError_InvalidInput

# A word: letters, digits and apostrophes (`[^\W_]` is `\w` without `_`,
# that is what `str.isalnum` accepts, like Rust's `char::is_alphanumeric`).
WORD = re.compile(r"(?:[^\W_]|['\u2019])+")
QUOTES = "'\u2019"
KEYS = {"text", "top"}


def words(text):
    """The lowercased words of `text`, without leading or trailing quotes."""
    for match in WORD.findall(text):
        word = match.strip(QUOTES)
        if word:
            yield word.lower()


def count_lines(text):
    """Lines as Rust's `str::lines` counts them: a last line without a
    newline counts, an empty text has none."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def count(text, top):
    """The counts of `text`, with its `top` most frequent words."""
    freq = Counter(words(text))
    ranked = sorted(freq.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {
        "words": sum(freq.values()),
        "unique": len(freq),
        "lines": count_lines(text),
        "top": [{"word": word, "count": n} for word, n in ranked],
    }


def invalid(message):
    return Err(StepError_InvalidInput(message))


def parse(data):
    """The `(text, top)` of the input, or raises `invalid-input`."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"input is not JSON: {e}")
    if not isinstance(value, dict):
        raise invalid("input must be an object with a `text`")
    unknown = sorted(set(value) - KEYS)
    if unknown:
        raise invalid(f"unknown field `{unknown[0]}`, expected `text` or `top`")
    text = value.get("text")
    if not isinstance(text, str):
        raise invalid("missing field `text`" if text is None else "`text` must be a string")
    top = value.get("top", 10)
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise invalid("`top` must be a non-negative integer")
    return text, top


class WitWorld(wit_world.WitWorld):
    def run(self, input: bytes) -> bytes:
        text, top = parse(input)
        counts = count(text, top)
        host.log(
            host.LogLevel.DEBUG,
            f"{counts['words']} words, {counts['unique']} distinct",
        )
        return json.dumps(counts, ensure_ascii=False, separators=(",", ":")).encode()
