//! The journal opened on a damaged file.
//!
//! On first use the target records a few runs into a fresh journal (through
//! the store, as a host does: definitions, acceptances, attempts, state,
//! endings, retention) and keeps the file's bytes. Each input damages a
//! copy of them: its first byte chooses how the copy is opened and used,
//! then each 5-byte group is one edit (flip, set, truncate, truncate at a
//! page). Opening, recovering, listing, showing, scanning, checking,
//! writing and collecting must each give a result or a clean `StoreError`
//! naming the file in one line (the CLI's exit code 4), never a panic or a
//! hang; and a copy left as it was must read exactly as the original.
#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stepbox::{OutcomeKind, Usage};
use stepbox::store::{
    AttemptEnd, AttemptLimits, AttemptStatus, ComponentRecord, Durability, Event, Journal,
    JournalConfig, RunFilter, RunState, SqliteReader, SqliteStore, StoreError, StoreReader, StoreWriter,
    WorkflowRecord,
};

const PAGE: usize = 4096;
/// The lease's end every claim writes: a constant, so reads compare.
const UNTIL: i64 = 4_000_000_000_000;

struct Seed {
    /// Where each input's copy is written.
    work: PathBuf,
    bytes: Vec<u8>,
    /// What an undamaged copy reads as, per flags.
    pristine: Mutex<HashMap<u8, String>>,
}

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = stepbox_fuzz::own_dir("stepbox-fuzz-journal-");
        let path = dir.join("seed.db");
        record_runs(&path);
        let bytes = std::fs::read(&path).expect("the seed journal");
        assert!(
            !Path::new(&format!("{}-wal", path.display())).exists(),
            "the seed's write-ahead log was checkpointed on close"
        );
        Seed {
            work: dir.join("work.db"),
            bytes,
            pristine: Mutex::new(HashMap::new()),
        }
    })
}

fn attempt_end(run: u64, step: &str, item: Option<u32>, attempt: u32, ok: bool, last: bool) -> Event {
    let at = 1_000_000 + run as i64 * 1000 + i64::from(attempt);
    Event::AttemptEnded(Box::new(AttemptEnd {
        run,
        step: step.into(),
        item,
        attempt,
        component: "step.wasm".into(),
        limits: AttemptLimits {
            fuel: 1_000_000,
            memory: 64 << 20,
            time: Duration::from_secs(5),
            ..AttemptLimits::default()
        },
        status: if ok {
            AttemptStatus::Completed
        } else {
            AttemptStatus::Failed
        },
        last,
        outcome: if ok {
            OutcomeKind::Completed
        } else {
            OutcomeKind::Retryable
        },
        message: (!ok).then(|| "try again".to_owned()),
        timeout_level: None,
        output: ok.then(|| format!(r#"{{"run":{run},"step":"{step}"}}"#).into_bytes()),
        log: Some(format!("log of {step} #{attempt}")),
        usage: Usage {
            queue_wait: Duration::from_micros(56),
            wall_time: Duration::from_micros(1178),
            fuel_consumed: 789,
            peak_memory: 65536,
            ..Usage::default()
        },
        started_us: at * 1000 - 500,
        at,
    }))
}

/// Records runs in every state into a new journal at `path`, as a host would.
fn record_runs(path: &Path) {
    let mut store = SqliteStore::open(path, Durability::Strict).expect("a new journal");
    let component = |n: u8| ComponentRecord {
        digest: format!("{n:064x}"),
        name: format!("c{n}.wasm"),
        bytes: Arc::from(vec![n; 6000 + usize::from(n) * 1000]),
    };
    let workflow = Arc::new(WorkflowRecord {
        digest: "f".repeat(64),
        name: "fuzzed".into(),
        path: "flows/fuzzed.yaml".into(),
        source: "name: fuzzed\nsteps:\n  - {id: a, component: c1.wasm}\n  - {id: b, component: c2.wasm, needs: a, for_each: '${steps.a.items}'}\n".into(),
        components: vec![component(1), component(2)],
    });
    let runs = 40u64;
    let mut events = vec![Event::WorkflowDefined(Arc::clone(&workflow))];
    for run in 1..=runs {
        events.push(Event::RunAccepted {
            run,
            workflow: workflow.digest.as_str().into(),
            name: workflow.name.as_str().into(),
            lease_until: 2_000_000,
            queued: false,
            input: format!(r#"{{"n":{run}}}"#).into_bytes(),
            at: 1_000_000 + run as i64 * 1000,
            tenant: None,
            key: None,
        });
    }
    store.write("seed-host", &events).expect("acceptances");
    for run in 1..=runs {
        let mut events = vec![Event::AttemptStarted {
            run,
            step: "a".into(),
            item: None,
            attempt: 1,
            at: 1_000_000 + run as i64 * 1000,
        }];
        match run % 5 {
            // Succeeded: a retried first step, then items.
            0 | 1 => {
                events.push(attempt_end(run, "a", None, 1, false, false));
                events.push(attempt_end(run, "a", None, 2, true, true));
                for item in 0..3 {
                    events.push(attempt_end(run, "b", Some(item), 1, true, true));
                }
                events.push(Event::StateWritten {
                    run,
                    key: "count".into(),
                    value: run.to_string(),
                });
                events.push(Event::RunEnded {
                    run,
                    status: RunState::Succeeded,
                    output: Some(br#"{"done":true}"#.to_vec()),
                    error: None,
                    started: Some(1_000_000 + run as i64 * 1000),
                    at: if run < 10 {
                        1_500
                    } else {
                        1_000_500 + run as i64 * 1000
                    },
                });
            }
            // Failed.
            2 => {
                events.push(attempt_end(run, "a", None, 1, false, true));
                events.push(Event::RunEnded {
                    run,
                    status: RunState::Failed,
                    output: None,
                    error: Some("step `a` failed".into()),
                    started: None,
                    at: 1_000_700 + run as i64 * 1000,
                });
            }
            // Interrupted by a shutdown, one item done.
            3 => {
                events.push(attempt_end(run, "a", None, 1, true, true));
                events.push(attempt_end(run, "b", Some(0), 1, true, true));
                events.push(Event::RunEnded {
                    run,
                    status: RunState::Interrupted,
                    output: None,
                    error: None,
                    started: None,
                    at: 1_000_800 + run as i64 * 1000,
                });
            }
            // In flight when the host died.
            _ => {
                events.push(Event::StateWritten {
                    run,
                    key: "progress".into(),
                    value: "\"half\"".into(),
                });
            }
        }
        store.write("seed-host", &events).expect("a run's events");
    }
    // Retention over the oldest runs leaves free pages behind.
    store.collect(2_000).expect("retention");
    drop(store);
}

/// Applies the edits in `ops` to `bytes`.
fn damage(bytes: &mut Vec<u8>, ops: &[u8]) {
    for op in ops.chunks_exact(5).take(16) {
        let offset = (usize::from(op[1]) << 16) | (usize::from(op[2]) << 8) | usize::from(op[3]);
        let value = op[4];
        if bytes.is_empty() {
            return;
        }
        let at = offset % bytes.len();
        match op[0] % 4 {
            0 => bytes[at] ^= value.max(1),
            1 => bytes[at] = value,
            2 => bytes.truncate(offset % (bytes.len() + 1)),
            _ => bytes.truncate(at / PAGE * PAGE),
        }
    }
}

/// Checks that `e` is a clean journal error about `path`, and says what it is.
fn store_error(e: &StoreError, path: &Path) -> String {
    let line = e.to_string();
    stepbox_fuzz::assert_one_line(&line);
    assert_eq!(e.path(), path, "{line}");
    let kind = match e {
        StoreError::Locked { .. } => "locked",
        StoreError::ReadOnly { .. } => "read-only",
        StoreError::Full { .. } => "full",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::NewerFormat { .. } => "newer",
        StoreError::Other { .. } => "other",
        StoreError::Stopped(_) => "stopped",
    };
    format!("ERR[{kind}] {line}")
}

/// Uses the journal at `path` as `flags` say, writing down what each step gave.
fn exercise(path: &Path, flags: u8) -> String {
    let mut out = String::new();
    let read_only = flags & 1 == 1;
    let mut writer = if read_only {
        None
    } else {
        match SqliteStore::open(path, Durability::Strict) {
            Ok(store) => Some(store),
            Err(e) => return store_error(&e, path),
        }
    };
    let mut note = |what: &str, result: Result<String, StoreError>| {
        let line = result.unwrap_or_else(|e| store_error(&e, path));
        let _ = writeln!(out, "{what}: {line}");
    };
    if let Some(store) = writer.as_mut() {
        note(
            "next runs",
            store.allocate_run_ids(1).map(|ids| format!("{ids:?}")),
        );
        note(
            "claimed",
            store.claim_incomplete("fuzz-host", UNTIL).map(|runs| {
                runs.iter()
                    .map(|r| {
                        format!(
                            "{} {:?} {:?} {:?} {:?} {:?}",
                            r.id,
                            r.workflow.as_ref().map(|w| &w.digest),
                            r.input,
                            r.done,
                            r.attempts,
                            r.state
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        );
    }
    let reader = match SqliteReader::open(path) {
        Ok(reader) => Some(reader),
        Err(e) => {
            note("reader", Err(e));
            None
        }
    };
    if let Some(store) = &reader {
        let runs = store.runs(&RunFilter::default());
        let ids: Vec<u64> = runs
            .as_ref()
            .map(|r| r.iter().map(|s| s.id).take(64).collect())
            .unwrap_or_default();
        let digests: Vec<String> = runs
            .as_ref()
            .map(|r| r.iter().map(|s| s.workflow_digest.clone()).take(4).collect())
            .unwrap_or_default();
        note("runs", runs.map(|r| format!("{r:?}")));
        let filter = RunFilter {
            status: vec![RunState::Running, RunState::Succeeded],
            workflow: Some("fuzzed".into()),
            limit: Some(5),
            ..RunFilter::default()
        };
        note("some runs", store.runs(&filter).map(|r| format!("{r:?}")));
        for id in ids.iter().copied().chain([0, 1, 2, 3, 4, 41, u64::MAX]) {
            note(
                &format!("history {id}"),
                store.history(id).map(|h| format!("{h:?}")),
            );
        }
        for digest in digests {
            note("definition", store.definition(&digest).map(|d| format!("{d:?}")));
        }
        note("counts", store.count_runs().map(|c| format!("{c:?}")));
        let mut scanned = Vec::new();
        note(
            "scan",
            store
                .scan_attempts(0, &mut |a| scanned.push(format!("{a:?}")))
                .map(|()| scanned.join("; ")),
        );
        note("integrity", store.check_integrity().map(|()| "ok".into()));
    }
    if let Some(mut store) = writer {
        if flags & 2 == 2 {
            let run = store.allocate_run_ids(1).map_or(1000, |ids| ids.start);
            let events = [
                Event::RunAccepted {
                    run,
                    workflow: "f".repeat(64).into(),
                    name: "fuzzed".into(),
                    lease_until: UNTIL,
                    queued: false,
                    input: b"{}".to_vec(),
                    at: 5_000_000,
                    tenant: None,
                    key: None,
                },
                attempt_end(run, "a", None, 1, true, true),
                Event::RunEnded {
                    run,
                    status: RunState::Succeeded,
                    output: Some(b"{}".to_vec()),
                    error: None,
                    started: Some(5_000_000),
                    at: 5_000_100,
                },
            ];
            note(
                "write",
                store
                    .write("fuzz-host", &events)
                    .map(|r| format!("{} refused", r.refused_events())),
            );
            note(
                "renew",
                store
                    .renew_leases("fuzz-host", UNTIL + 1)
                    .map(|n| format!("{n} renewed")),
            );
        }
        if flags & 4 == 4 {
            note(
                "collect",
                store.collect(i64::MAX).map(|s| format!("{} runs", s.runs)),
            );
            note("integrity after", store.check_integrity().map(|()| "ok".into()));
        }
        if flags & 8 == 8 {
            // As a host starts: the journal's writer on the same file.
            let config = JournalConfig {
                owner: "fuzz-host".into(),
                ..JournalConfig::default()
            };
            match Journal::start(Box::new(store), config) {
                Ok((journal, recovered)) => {
                    note("journal", Ok(format!("{} recovered", recovered.len())));
                    let run = journal.next_run_id().unwrap_or(1);
                    let _ = journal.append(Event::RunEnded {
                        run: run.saturating_sub(1),
                        status: RunState::Cancelled,
                        output: None,
                        error: Some("cancelled".into()),
                        started: None,
                        at: 6_000_000,
                    });
                    let closed = journal.close();
                    note("close", closed.map(|()| "ok".into()));
                }
                Err(e) => note("journal", Err(e)),
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, ops)) = data.split_first() else {
        return;
    };
    let flags = flags & 0x0f;
    let seed = seed();
    let mut bytes = seed.bytes.clone();
    damage(&mut bytes, ops);
    let work = &seed.work;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", work.display()));
    }
    std::fs::write(work, &bytes).expect("the damaged copy");
    let read = exercise(work, flags);
    if bytes == seed.bytes {
        let mut pristine = seed.pristine.lock().unwrap();
        let expected = pristine.entry(flags).or_insert_with(|| {
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", work.display()));
            }
            std::fs::write(work, &seed.bytes).expect("an undamaged copy");
            exercise(work, flags)
        });
        assert_eq!(&read, expected, "an undamaged journal reads differently");
        assert!(!read.contains("ERR["), "an undamaged journal fails: {read}");
    }
});
