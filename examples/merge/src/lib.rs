//! `merge`: combines the word counts of several chunks (outputs of
//! `wordcount`) into totals and an overall ranking.
//!
//! The ranking is exact when each chunk reported all its words (give
//! `wordcount` a `top` at least as large as a chunk's distinct words).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The chunks' counts, as `wordcount` returns them.
    pub counts: Vec<Counts>,
    /// How many of the most frequent words to report.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    10
}

/// One chunk's counts (the fields of `wordcount`'s output this step uses).
#[derive(Deserialize)]
pub struct Counts {
    /// Words in the chunk.
    pub words: usize,
    /// Lines in the chunk.
    pub lines: usize,
    /// The chunk's most frequent words.
    pub top: Vec<WordCount>,
}

/// One word and how often it occurs.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WordCount {
    /// The word.
    pub word: String,
    /// How often it occurs.
    pub count: usize,
}

/// The step's output.
#[derive(Serialize)]
pub struct Output {
    /// Chunks merged.
    pub chunks: usize,
    /// Words in all chunks.
    pub words: usize,
    /// Lines in all chunks.
    pub lines: usize,
    /// The most frequent words overall, most frequent first.
    pub top: Vec<WordCount>,
}

/// Sums the chunks' counts.
pub fn merge(input: Input) -> Result<Output, StepError> {
    let mut freq: HashMap<String, usize> = HashMap::new();
    for chunk in &input.counts {
        for wc in &chunk.top {
            *freq.entry(wc.word.clone()).or_default() += wc.count;
        }
    }
    let mut top: Vec<WordCount> = freq
        .into_iter()
        .map(|(word, count)| WordCount { word, count })
        .collect();
    top.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
    top.truncate(input.top);
    stepbox_guest::info(format!("merged {} chunks", input.counts.len()));
    Ok(Output {
        chunks: input.counts.len(),
        words: input.counts.iter().map(|c| c.words).sum(),
        lines: input.counts.iter().map(|c| c.lines).sum(),
        top,
    })
}

stepbox_guest::step!(merge);
