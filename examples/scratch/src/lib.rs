//! `scratch`: a step that works through files in its private `/tmp`.
//!
//! It writes the input lines to a file, reads them back, sorts them, and
//! writes the sorted result to a second file, the way a step would stage a
//! large intermediate result on disk rather than in memory. Each instance
//! gets a fresh, empty `/tmp` that the host removes when the run ends.
//!
//! ```text
//! stepbox step scratch.wasm --input '{"lines": ["pear", "apple", "fig"]}'
//! {"sorted":["apple","fig","pear"],"bytes_written":30,"files":["data.txt","sorted.txt"]}
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use stepbox_guest::StepError;

/// The step's input.
#[derive(Deserialize)]
pub struct Input {
    /// Lines to sort; none may contain a newline.
    pub lines: Vec<String>,
}

/// The step's output.
#[derive(Serialize)]
pub struct Output {
    /// The lines, sorted.
    pub sorted: Vec<String>,
    /// Bytes written to `/tmp` in all.
    pub bytes_written: u64,
    /// The files this run left in `/tmp`, sorted by name.
    pub files: Vec<String>,
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> StepError + '_ {
    move |e| StepError::failed(format!("{context}: {e}"))
}

/// Sorts `input.lines` through two files in `/tmp`.
pub fn sort_on_disk(input: Input) -> Result<Output, StepError> {
    if let Some(bad) = input.lines.iter().find(|l| l.contains('\n')) {
        return Err(StepError::invalid_input(format!(
            "line {bad:?} contains a newline"
        )));
    }
    let dir = Path::new("/tmp/scratch");
    fs::create_dir_all(dir).map_err(io("creating /tmp/scratch"))?;

    let data = dir.join("data.txt");
    let mut file = fs::File::create(&data).map_err(io("creating data.txt"))?;
    for line in &input.lines {
        writeln!(file, "{line}").map_err(io("writing data.txt"))?;
    }
    drop(file);

    let reader = BufReader::new(fs::File::open(&data).map_err(io("opening data.txt"))?);
    let mut sorted = reader
        .lines()
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("reading data.txt"))?;
    sorted.sort();
    fs::write(dir.join("sorted.txt"), sorted.join("\n") + "\n").map_err(io("writing sorted.txt"))?;

    let mut files = Vec::new();
    let mut bytes_written = 0;
    for entry in fs::read_dir(dir).map_err(io("listing /tmp/scratch"))? {
        let entry = entry.map_err(io("listing /tmp/scratch"))?;
        bytes_written += entry.metadata().map_err(io("reading metadata"))?.len();
        files.push(entry.file_name().to_string_lossy().into_owned());
    }
    files.sort();
    stepbox_guest::info(format!(
        "sorted {} lines through {} files",
        sorted.len(),
        files.len()
    ));
    Ok(Output {
        sorted,
        bytes_written,
        files,
    })
}

stepbox_guest::step!(sort_on_disk);
