//! Every hostile behaviour at once, beside well-behaved workflows and a
//! journal that writes: the good runs all succeed with their outputs
//! unchanged, each hostile step ends in its own typed outcome, and the host's
//! memory, descriptors and scratch space return to where they were.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use stepbox::OutcomeKind;
use stepbox::scheduler::{PreparedWorkflow, RunStatus, Scheduler, SchedulerConfig};
use stepbox::store::{Durability, Journal, JournalConfig, SqliteStore};
use stepbox::workflow::Workflow;

use super::TestSandbox;

/// Each hostile step, and the outcome it must end in under default limits
/// (but the few given here to keep the suite quick).
const HOSTILE: &str = r#"
name: hostile
steps:
  - id: tmp-flood
    component: hostile
    input: {mode: scratch-write, bytes: 3145728000}
    continue_on_error: true
  - id: entry-flood
    component: hostile
    input: {mode: scratch-entries, count: 200000}
    continue_on_error: true
  - id: handle-flood
    component: hostile
    input: {mode: hold-files, count: 200000}
    continue_on_error: true
  - id: listing-flood
    component: hostile
    input: {mode: hold-listings, count: 10000}
    continue_on_error: true
  - id: memory-bomb
    component: hostile
    input: {mode: memory-bomb}
    continue_on_error: true
  - id: spin
    component: hostile
    fuel: 200000000
    input: {mode: spin}
    continue_on_error: true
  - id: host-call-loop
    component: hostile
    timeout: 300ms
    input: {mode: host-calls}
    continue_on_error: true
  - id: state-flood
    component: hostile
    input: {mode: state-flood, key: k, bytes: 100000, times: 1000}
    continue_on_error: true
  - id: log-flood
    component: hostile
    input: {mode: log-flood, count: 20000}
    continue_on_error: true
  - id: sleeper
    component: hostile
    timeout: 200ms
    input: {mode: sleep, ms: 60000}
    continue_on_error: true
"#;

const EXPECTED: &[(&str, OutcomeKind)] = &[
    ("tmp-flood", OutcomeKind::ScratchLimit),
    ("entry-flood", OutcomeKind::Completed),
    ("handle-flood", OutcomeKind::Completed),
    ("listing-flood", OutcomeKind::Completed),
    ("memory-bomb", OutcomeKind::MemoryLimit),
    ("spin", OutcomeKind::OutOfFuel),
    ("host-call-loop", OutcomeKind::Timeout),
    ("state-flood", OutcomeKind::Failed),
    ("log-flood", OutcomeKind::Completed),
    ("sleeper", OutcomeKind::Timeout),
];

const GOOD: &str = "name: good\nsteps:\n  - id: a\n    component: hostile\n    input: {mode: echo, id: \"${input}\"}\n  - id: b\n    component: hostile\n    needs: [a]\n    input: {mode: echo, id: \"${steps.a.id}\"}\n";

fn prepare(scheduler: &Scheduler, dir: &Path, name: &str, yaml: &str) -> Arc<PreparedWorkflow> {
    let hostile = stepbox_tests::guest("hostile");
    let yaml = yaml.replace("component: hostile", &format!("component: {}", hostile.display()));
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    scheduler
        .prepare(Workflow::from_file(&file).unwrap())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One round: the hostile run beside 40 good ones, all at once.
async fn round(scheduler: &Scheduler, hostile: &Arc<PreparedWorkflow>, good: &Arc<PreparedWorkflow>) {
    let bad = scheduler.submit(hostile, json!({})).unwrap();
    let runs: Vec<_> = (0..40u64)
        .map(|i| (i, scheduler.submit(good, json!(i)).unwrap()))
        .collect();
    for (i, run) in runs {
        let report = run.wait().await;
        assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
        let output = report.output.unwrap();
        assert_eq!(output["id"], i);
        assert_eq!(
            output["files"],
            json!([format!("{i}.txt")]),
            "a run saw another's files"
        );
    }
    let report = bad.wait().await;
    for (id, kind) in EXPECTED {
        let step = report.steps.iter().find(|s| s.id == *id).unwrap();
        assert_eq!(step.outcome, Some(*kind), "{id}: {:?}", step.message);
    }
    let tmp = report.steps.iter().find(|s| s.id == "tmp-flood").unwrap();
    assert!(tmp.usage.peak_scratch <= 64 << 20, "{}", tmp.usage.peak_scratch);
    let output: Value = report.output.unwrap();
    assert_eq!(output["entry-flood"]["made"], 10_000, "{output}");
    assert_eq!(output["entry-flood"]["stopped"], "StorageFull");
    let held = output["handle-flood"]["held"].as_u64().unwrap();
    assert!((400..512).contains(&held), "{output}");
    assert_eq!(output["handle-flood"]["stopped"], "OutOfMemory");
    assert_eq!(output["listing-flood"]["held"], 16);
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kib * 1024
}

/// Bytes of files under `dir` (directories themselves not counted).
fn file_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += file_bytes(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_hostile_repertoire_beside_good_runs_leaves_them_and_the_host_untouched() {
    // Scratch on a memory file system where there is one, as by default.
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let scratch_parent = parent.path().to_owned();
    let sb = TestSandbox::with(|b| b.scratch_dir(&scratch_parent));
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("journal.db"), Durability::Strict).unwrap();
    let (journal, _) = Journal::start(Box::new(store), JournalConfig::default()).unwrap();
    let scheduler = Scheduler::with_journal(sb.sandbox.clone(), SchedulerConfig::default(), journal).unwrap();
    let hostile = prepare(&scheduler, dir.path(), "hostile", HOSTILE);
    let good = prepare(&scheduler, dir.path(), "good", GOOD);

    // The first round warms what stays: pooled slots, caches, thread pools.
    round(&scheduler, &hostile, &good).await;
    let (fds, rss) = (open_descriptors(), rss_bytes());
    round(&scheduler, &hostile, &good).await;

    assert!(sb.scratch_leftovers().is_empty(), "{:?}", sb.scratch_leftovers());
    assert_eq!(file_bytes(sb.sandbox.scratch_dir()), 0);
    // Other tests of this process open and close descriptors meanwhile.
    let now = open_descriptors();
    assert!(
        now <= fds + 16,
        "descriptors: {fds} after the first round, {now} after the second"
    );
    // RSS is the whole process's, and the other tests of this binary run
    // meanwhile: a leak grows it every round, their work only now and then.
    let mut grown = rss_bytes().saturating_sub(rss);
    if grown >= 64 << 20 {
        let rss = rss_bytes();
        round(&scheduler, &hostile, &good).await;
        grown = grown.min(rss_bytes().saturating_sub(rss));
    }
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB in each of two rounds",
        grown >> 20
    );
    assert_eq!(scheduler.stats().memory_in_use, bytesize::ByteSize::b(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_backed_scratch_quota_counts_against_the_memory_budget() {
    let config = SchedulerConfig {
        quotas: stepbox::policy::Quotas {
            memory_budget: bytesize::ByteSize::mib(100),
            ..Default::default()
        },
        ..SchedulerConfig::default()
    };
    let yaml = "name: big\nsteps:\n  - id: a\n    component: hostile\n    memory: 64MiB\n    scratch: 64MiB\n    input: {mode: echo, id: 1}\n";
    let dir = tempfile::tempdir().unwrap();
    // On a disk, /tmp takes no RAM: 64 MiB of memory fit the 100 MiB budget.
    let on_disk = TestSandbox::new();
    assert!(!on_disk.sandbox.scratch_in_memory());
    let scheduler = Scheduler::new(on_disk.sandbox.clone(), config.clone()).unwrap();
    let wf = prepare(&scheduler, dir.path(), "disk", yaml);
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(report.status, RunStatus::Succeeded, "{:?}", report.error);
    // In memory, the step may take 64 + 64 MiB of RAM: more than the budget.
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let parent = tempfile::tempdir_in(shm).unwrap();
    let in_memory = TestSandbox::with(|b| b.scratch_dir(parent.path()));
    assert!(in_memory.sandbox.scratch_in_memory());
    let scheduler = Scheduler::new(in_memory.sandbox.clone(), config).unwrap();
    let wf = prepare(&scheduler, dir.path(), "shm", yaml);
    let report = scheduler.submit(&wf, json!({})).unwrap().wait().await;
    assert_eq!(
        report.failed_kind,
        Some(OutcomeKind::QuotaExceeded),
        "{:?}",
        report.error
    );
    assert!(report.error.unwrap().contains("128.0 MiB"));
}
