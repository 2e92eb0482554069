//! `wordcount`: real text work. Counts words, distinct words and lines, and
//! reports the most frequent words.
//!
//! Words are runs of letters and digits, lowercased; an apostrophe inside a
//! word (`didn't`) belongs to it. Ties in the ranking break alphabetically,
//! so the output is deterministic.
//!
//! ```text
//! stepbox step wordcount.wasm --input '{"text": "the cat and the hat", "top": 1}'
//! {"words":5,"unique":4,"lines":1,"top":[{"word":"the","count":2}]}
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The text to count.
    pub text: String,
    /// How many of the most frequent words to report.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    10
}

/// The step's output.
#[derive(Serialize, Debug, PartialEq)]
pub struct Counts {
    /// Number of words.
    pub words: usize,
    /// Number of distinct words.
    pub unique: usize,
    /// Number of lines (a last line without a newline counts).
    pub lines: usize,
    /// The most frequent words, most frequent first.
    pub top: Vec<WordCount>,
}

/// One word and how often it occurs.
#[derive(Serialize, Debug, PartialEq)]
pub struct WordCount {
    /// The word, lowercased.
    pub word: String,
    /// How often it occurs.
    pub count: usize,
}

/// Splits `text` into lowercased words.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Counts the words of `input.text`.
pub fn count(input: Input) -> Result<Counts, StepError> {
    let mut freq: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for word in words(&input.text) {
        total += 1;
        *freq.entry(word).or_default() += 1;
    }
    let unique = freq.len();
    let mut ranked: Vec<WordCount> = freq
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    ranked.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    ranked.truncate(input.top);
    Ok(Counts {
        words: total,
        unique,
        lines: input.text.lines().count(),
        top: ranked,
    })
}

stepbox_guest::step!(count);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_apostrophes_stay_and_case_folds() {
        let w: Vec<_> = words("Didn't 'quote' THE the.").collect();
        assert_eq!(w, ["didn't", "quote", "the", "the"]);
    }

    #[test]
    fn ties_rank_alphabetically() {
        let c = count(Input {
            text: "b a b a c".into(),
            top: 2,
        })
        .unwrap();
        assert_eq!(
            c.top,
            [
                WordCount {
                    word: "a".into(),
                    count: 2
                },
                WordCount {
                    word: "b".into(),
                    count: 2
                }
            ]
        );
        assert_eq!((c.words, c.unique, c.lines), (5, 3, 1));
    }
}
