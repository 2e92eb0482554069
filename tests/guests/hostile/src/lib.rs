//! A step that misbehaves on request, to check that the host contains each
//! kind of misbehaviour with the right typed outcome. `mode` picks the
//! behaviour; a few well-behaved modes serve as controls.

use std::fs;
use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use stepbox_guest::StepError;

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
enum Mode {
    /// Writes `/tmp/<id>.txt`, reads it back and lists `/tmp`: proves that
    /// each instance sees its own files and nobody else's.
    Echo { id: u64 },
    /// A pure compute loop that never ends.
    Spin,
    /// An endless loop of host calls, so the time goes in host code.
    HostLoop,
    /// Allocates and touches 1 MiB after 1 MiB, forever.
    MemoryBomb,
    /// Recursion without a base case.
    Recursion,
    /// Returns a string of `bytes` bytes.
    BigOutput {
        #[serde(default = "hundred_mib")]
        bytes: usize,
    },
    /// `count` log records of 1 KiB, plus as many stdout and stderr lines.
    LogFlood {
        #[serde(default = "hundred_thousand")]
        count: usize,
    },
    /// Panics.
    Panic,
    /// Sleeps in a host call (a WASI poll), where epochs cannot interrupt.
    Sleep { ms: u64 },
    /// Tries every way out of the sandbox it knows and reports each result.
    Escape,
    /// Fails with the given kind and message.
    Error { kind: String, message: String },
    /// Reports the time left before the deadline.
    Remaining,
    /// Allocates and touches `bytes` bytes, then returns.
    Alloc { bytes: usize },
    /// A bounded compute loop.
    SpinFor { iterations: u64 },
    /// Adds 1 to the workflow state's `key`, `times` times.
    Count { key: String, times: u64 },
    /// Reads the workflow state's `key`.
    Read { key: String },
    /// Fails as retryable until the state's `key` counts more than `fail_times` attempts.
    Flaky { key: String, fail_times: i64 },
    /// Calls the workflow's step `step` on `input` and returns what it returned.
    Call { step: String, input: Value },
    /// Reads secret `name` and leaks it every way a step can: to stdout,
    /// the log, the state, a child call's input, and its error.
    Leak { name: String },
    /// Reports its idempotency key and attempt number, failing as retryable
    /// while the attempt is below `fail_below`.
    Whoami {
        #[serde(default)]
        fail_below: u32,
    },
    /// Counts the words of a static buffer and of a freshly grown page that
    /// are not zero, then fills both with a marker: a later instance in the
    /// same pooled slot must count zero, or memory leaks between steps.
    /// With `again`, checks twice in this instance and reports the second
    /// count: the control that shows the check sees a marker.
    Residue {
        #[serde(default)]
        again: bool,
    },
    /// Writes `bytes` into its `/tmp`, `chunk` bytes a write, spread over
    /// `files` files. A failed write fails the step with the error's kind,
    /// or with `tolerate` ends the writing and is reported.
    ScratchWrite {
        bytes: u64,
        #[serde(default = "sixty_four_kib")]
        chunk: usize,
        #[serde(default = "one")]
        files: u64,
        #[serde(default)]
        tolerate: bool,
    },
    /// Writes `bytes` to a file and deletes it, `rounds` times: freed space
    /// must count again.
    ScratchChurn { bytes: u64, rounds: u32 },
    /// Opens a file, removes its name while holding it open, then writes
    /// `bytes` to it: the space stays taken while the file is open.
    UnlinkedWrite { bytes: u64 },
    /// Extends a file to `bytes` with `set_len`, without writing.
    SetLen { bytes: u64 },
    /// Creates up to `count` empty files (and as many directories with
    /// `dirs`), reporting how many it made and what stopped it.
    ScratchEntries {
        count: u64,
        #[serde(default)]
        dirs: bool,
    },
    /// Opens up to `count` files and holds them all open, reporting how
    /// many it held and what stopped it.
    HoldFiles { count: u64 },
    /// Opens up to `count` directory listings at once, the same way.
    HoldListings { count: u64 },
    /// Calls `log`, `remaining`, `state-add` and `idempotency-key` in a loop,
    /// `times` times (forever without), and reports the count.
    HostCalls {
        #[serde(default)]
        times: Option<u64>,
    },
    /// Runs file operations in `/tmp` in order and reports each one's
    /// result (`ok`, or the error's kind): a script for the quota's
    /// bookkeeping of renames, links and removals.
    ScratchScript { ops: Vec<FileOp> },
    /// Calls the workflow's step `step` on `input` until a call fails (or
    /// `times` calls), reporting how many succeeded and the failure.
    CallLoop {
        step: String,
        input: Value,
        #[serde(default)]
        times: Option<u64>,
    },
    /// Sets `times` state keys (`key` with a number) to `bytes`-long strings.
    StateFlood { key: String, bytes: usize, times: u64 },
}

/// One step of a [`Mode::ScratchScript`]; paths are relative to `/tmp`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum FileOp {
    Write { path: String, bytes: u64 },
    Remove { path: String },
    Rename { from: String, to: String },
    Link { from: String, to: String },
    Symlink { path: String, target_len: usize },
    Mkdir { path: String },
    Rmdir { path: String },
}

fn run_op(op: &FileOp) -> std::io::Result<()> {
    let at = |p: &str| format!("/tmp/{p}");
    match op {
        FileOp::Write { path, bytes } => write_bytes(&at(path), *bytes, 64 * 1024).map(drop),
        FileOp::Remove { path } => fs::remove_file(at(path)),
        FileOp::Rename { from, to } => fs::rename(at(from), at(to)),
        FileOp::Link { from, to } => fs::hard_link(at(from), at(to)),
        #[allow(deprecated)] // the portable spelling; std::os::wasi::fs is unstable
        FileOp::Symlink { path, target_len } => fs::soft_link("t".repeat(*target_len), at(path)),
        FileOp::Mkdir { path } => fs::create_dir(at(path)),
        FileOp::Rmdir { path } => fs::remove_dir(at(path)),
    }
}

fn sixty_four_kib() -> usize {
    64 * 1024
}

fn one() -> u64 {
    1
}

fn hundred_mib() -> usize {
    100 * 1024 * 1024
}

fn hundred_thousand() -> usize {
    100_000
}

fn misbehave(mode: Mode) -> Result<Value, StepError> {
    match mode {
        Mode::Echo { id } => echo(id),
        Mode::Spin => {
            let mut x = 0u64;
            loop {
                x = black_box(x.wrapping_add(1));
            }
        }
        Mode::HostLoop => loop {
            let left = stepbox_guest::remaining();
            stepbox_guest::trace(format!("{} ms left", left.as_millis()));
        },
        Mode::MemoryBomb => {
            let mut hoard = Vec::new();
            loop {
                hoard.push(black_box(vec![1u8; 1024 * 1024]));
            }
        }
        Mode::Recursion => Ok(json!(recurse(0))),
        Mode::BigOutput { bytes } => Ok(Value::String("x".repeat(bytes))),
        Mode::LogFlood { count } => {
            let record = "y".repeat(1024);
            for i in 0..count {
                stepbox_guest::info(&record);
                println!("stdout line {i}");
                eprintln!("stderr line {i}");
            }
            Ok(json!({"ok": true}))
        }
        Mode::Panic => panic!("hostile guest panicked on purpose"),
        Mode::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!({"slept": ms}))
        }
        Mode::Escape => Ok(escape()),
        Mode::Error { kind, message } => Err(match kind.as_str() {
            "invalid-input" => StepError::invalid_input(message),
            "retryable" => StepError::retryable(message),
            "failed" => StepError::failed(message),
            other => StepError::invalid_input(format!("unknown error kind `{other}`")),
        }),
        Mode::Remaining => Ok(json!({"remaining_ms": stepbox_guest::remaining().as_millis() as u64})),
        Mode::Alloc { bytes } => {
            let block = black_box(vec![1u8; bytes]);
            Ok(json!({"allocated": block.len()}))
        }
        Mode::Count { key, times } => {
            let mut last = 0;
            for _ in 0..times {
                last = stepbox_guest::state::add(&key, 1)?;
            }
            Ok(json!({"last": last}))
        }
        Mode::Read { key } => Ok(json!({"value": stepbox_guest::state::get::<Value>(&key)?})),
        Mode::Flaky { key, fail_times } => {
            let attempt = stepbox_guest::state::add(&key, 1)?;
            if attempt <= fail_times {
                return Err(StepError::retryable(format!(
                    "attempt {attempt} fails on purpose"
                )));
            }
            Ok(json!({"attempt": attempt}))
        }
        Mode::Call { step, input } => stepbox_guest::call::<Value, Value>(&step, &input),
        Mode::Leak { name } => {
            let value = stepbox_guest::secret(&name).unwrap_or_default();
            println!("stdout: {value}");
            stepbox_guest::info(format!("log: {value}"));
            stepbox_guest::state::set("leak", &value)?;
            let _ = stepbox_guest::call::<Value, Value>("child", &json!({ "leak": value }));
            Err(StepError::failed(format!("error: {value}")))
        }
        Mode::Whoami { fail_below } => {
            let attempt = stepbox_guest::attempt();
            if attempt < fail_below {
                return Err(StepError::retryable(format!(
                    "attempt {attempt} fails on purpose"
                )));
            }
            Ok(json!({"key": stepbox_guest::idempotency_key(), "attempt": attempt}))
        }
        Mode::Residue { again } => {
            let first = residue();
            Ok(if again { residue() } else { first })
        }
        Mode::ScratchWrite {
            bytes,
            chunk,
            files,
            tolerate,
        } => scratch_write(bytes, chunk.max(1), files.max(1), tolerate),
        Mode::ScratchChurn { bytes, rounds } => {
            for round in 0..rounds {
                let path = format!("/tmp/churn-{round}");
                write_bytes(&path, bytes, 64 * 1024).map_err(|e| io_failure("write", &e))?;
                fs::remove_file(&path).map_err(|e| io_failure("remove", &e))?;
            }
            Ok(json!({"rounds": rounds}))
        }
        Mode::UnlinkedWrite { bytes } => {
            use std::io::Write;
            let mut file = fs::File::create("/tmp/unlinked").map_err(|e| io_failure("create", &e))?;
            fs::remove_file("/tmp/unlinked").map_err(|e| io_failure("remove", &e))?;
            let block = vec![7u8; 64 * 1024];
            let mut written = 0;
            while written < bytes {
                let n = block.len().min((bytes - written) as usize);
                file.write_all(&block[..n]).map_err(|e| io_failure("write", &e))?;
                written += n as u64;
            }
            Ok(json!({"written": written}))
        }
        Mode::SetLen { bytes } => {
            let file = fs::File::create("/tmp/sparse").map_err(|e| io_failure("create", &e))?;
            file.set_len(bytes).map_err(|e| io_failure("set_len", &e))?;
            Ok(json!({"len": bytes}))
        }
        Mode::ScratchEntries { count, dirs } => {
            let mut made = 0;
            let mut stopped = None;
            for i in 0..count {
                let made_one = if dirs {
                    fs::create_dir(format!("/tmp/d{i}"))
                } else {
                    fs::File::create(format!("/tmp/f{i}")).map(drop)
                };
                match made_one {
                    Ok(()) => made += 1,
                    Err(e) => {
                        stopped = Some(format!("{:?}", e.kind()));
                        break;
                    }
                }
            }
            Ok(json!({"made": made, "stopped": stopped}))
        }
        Mode::HoldFiles { count } => Ok(hold(count, |i| fs::File::create(format!("/tmp/h{}", i % 64)))),
        Mode::HoldListings { count } => Ok(hold(count, |_| fs::read_dir("/tmp"))),
        Mode::HostCalls { times } => {
            let mut n = 0u64;
            while times.is_none_or(|t| n < t) {
                stepbox_guest::trace("call");
                black_box(stepbox_guest::remaining());
                black_box(stepbox_guest::idempotency_key());
                stepbox_guest::state::add("calls", 1)?;
                n += 1;
            }
            Ok(json!({"calls": n}))
        }
        Mode::ScratchScript { ops } => {
            let results: Vec<String> = ops
                .iter()
                .map(|op| match run_op(op) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("{:?}", e.kind()),
                })
                .collect();
            Ok(json!(results))
        }
        Mode::CallLoop { step, input, times } => {
            let mut calls = 0u64;
            let mut stopped = None;
            while times.is_none_or(|t| calls < t) {
                match stepbox_guest::call::<Value, Value>(&step, &input) {
                    Ok(_) => calls += 1,
                    Err(e) => {
                        stopped = Some(format!("{e:?}"));
                        break;
                    }
                }
            }
            Ok(json!({"calls": calls, "stopped": stopped}))
        }
        Mode::StateFlood { key, bytes, times } => {
            for i in 0..times {
                let value = "s".repeat(bytes);
                stepbox_guest::state::set(&format!("{key}{i}"), &value)?;
            }
            Ok(json!({"set": times}))
        }
        Mode::SpinFor { iterations } => {
            let mut x = 0u64;
            for i in 0..iterations {
                x = black_box(x ^ i);
            }
            black_box(x);
            Ok(json!({"done": iterations}))
        }
    }
}

/// In `.bss`: zero in every fresh instance.
static STATIC_WORDS: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];

fn residue() -> Value {
    const MARK: u64 = 0x5354_4550_424f_5821;
    let dirty_static = STATIC_WORDS.iter().filter(|w| w.load(Relaxed) != 0).count();
    STATIC_WORDS.iter().for_each(|w| w.store(MARK, Relaxed));
    // A page this instance grows itself: the allocator never hands it out,
    // so reading and writing it directly touches nothing Rust owns.
    let page = core::arch::wasm32::memory_grow(0, 1);
    let dirty_grown = if page == usize::MAX {
        return json!({"error": "memory.grow failed"});
    } else {
        let base = (page * 65_536) as *mut u64;
        let mut dirty = 0;
        for i in 0..65_536 / 8 {
            // SAFETY: the page was just added to linear memory, 8-aligned and
            // in bounds, and no Rust value lives in it.
            unsafe {
                let word = base.add(i);
                if word.read_volatile() != 0 {
                    dirty += 1;
                }
                word.write_volatile(MARK);
            }
        }
        dirty
    };
    json!({"dirty_static": dirty_static, "dirty_grown": dirty_grown})
}

/// A step error naming the I/O error's kind (`StorageFull`, `OutOfMemory`…).
fn io_failure(what: &str, e: &std::io::Error) -> StepError {
    StepError::failed(format!("{what}: {:?}: {e}", e.kind()))
}

/// Opens up to `count` handles with `open` and holds them all, reporting
/// how many it held and the kind of the error that stopped it.
fn hold<T>(count: u64, open: impl Fn(u64) -> std::io::Result<T>) -> Value {
    let mut held = Vec::new();
    let mut stopped = None;
    for i in 0..count {
        match open(i) {
            Ok(handle) => held.push(handle),
            Err(e) => {
                stopped = Some(format!("{:?}", e.kind()));
                break;
            }
        }
    }
    json!({"held": held.len(), "stopped": stopped})
}

fn write_bytes(path: &str, bytes: u64, chunk: usize) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = fs::File::create(path)?;
    let block = vec![1u8; chunk];
    let mut written = 0;
    while written < bytes {
        let n = chunk.min((bytes - written) as usize);
        file.write_all(&block[..n])?;
        written += n as u64;
    }
    Ok(written)
}

fn scratch_write(bytes: u64, chunk: usize, files: u64, tolerate: bool) -> Result<Value, StepError> {
    use std::io::Write;
    let mut handles = (0..files)
        .map(|i| fs::File::create(format!("/tmp/fill-{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_failure("create", &e))?;
    let block = vec![1u8; chunk];
    let mut written = 0u64;
    let mut stopped = None;
    'writing: while written < bytes {
        for file in &mut handles {
            let n = chunk.min((bytes - written) as usize);
            if n == 0 {
                break 'writing;
            }
            if let Err(e) = file.write_all(&block[..n]) {
                if !tolerate {
                    return Err(io_failure("write", &e));
                }
                stopped = Some(format!("{:?} {:?}", e.kind(), e.raw_os_error()));
                break 'writing;
            }
            written += n as u64;
        }
    }
    Ok(json!({"written": written, "stopped": stopped}))
}

fn echo(id: u64) -> Result<Value, StepError> {
    let fail = |e: std::io::Error| StepError::failed(e.to_string());
    let path = format!("/tmp/{id}.txt");
    fs::write(&path, id.to_string()).map_err(fail)?;
    let read_back = fs::read_to_string(&path).map_err(fail)?;
    let mut files = fs::read_dir("/tmp")
        .map_err(fail)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    files.sort();
    Ok(json!({"id": id, "read_back": read_back, "files": files}))
}

#[allow(unconditional_recursion)] // unbounded on purpose: the host must stop it
fn recurse(depth: u64) -> u64 {
    // The array and the addition after the call keep the compiler from
    // turning this into a loop.
    let frame = black_box([depth; 8]);
    recurse(depth + 1).wrapping_add(frame[3])
}

/// `denied: <why>` when the attempt failed, `allowed: <what>` when it got out.
fn verdict<T>(result: std::io::Result<T>, show: impl FnOnce(T) -> String) -> String {
    match result {
        Ok(value) => format!("allowed: {}", show(value)),
        Err(e) => format!("denied: {e}"),
    }
}

fn escape() -> Value {
    let parent_dir = match (
        fs::read_to_string("/tmp/../etc/passwd"),
        fs::write("/tmp/../escaped.txt", "out"),
    ) {
        (Err(read), Err(write)) => format!("denied: read: {read}; write: {write}"),
        (Ok(s), _) => format!("allowed: read {}", s.chars().take(40).collect::<String>()),
        (_, Ok(())) => "allowed: wrote /escaped.txt".into(),
    };
    let absolute = verdict(fs::read_to_string("/etc/passwd"), |s| {
        s.chars().take(40).collect()
    });
    let symlink = {
        #[allow(deprecated)] // the portable spelling; std::os::wasi::fs is unstable
        let absolute_link =
            fs::soft_link("/etc/passwd", "/tmp/abs-link").and_then(|()| fs::read_to_string("/tmp/abs-link"));
        #[allow(deprecated)]
        let relative_link = fs::soft_link("../../../../../../etc/passwd", "/tmp/rel-link")
            .and_then(|()| fs::read_to_string("/tmp/rel-link"));
        match (absolute_link, relative_link) {
            (Err(a), Err(r)) => format!("denied: absolute target: {a}; relative target: {r}"),
            (Ok(s), _) | (_, Ok(s)) => format!("allowed: {}", s.chars().take(40).collect::<String>()),
        }
    };
    let socket = {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", 22));
        let udp = std::net::UdpSocket::bind(("0.0.0.0", 0));
        match (tcp, udp) {
            (Err(t), Err(u)) => format!("denied: tcp connect: {t}; udp bind: {u}"),
            (Ok(_), _) => "allowed: tcp connect to 127.0.0.1:22".into(),
            (_, Ok(_)) => "allowed: udp bind".into(),
        }
    };
    let dotdot_listing = verdict(fs::read_dir("/tmp/.."), |entries| {
        entries
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(",")
    });
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    json!({
        "parent_dir": parent_dir,
        "absolute": absolute,
        "symlink": symlink,
        "socket": socket,
        "dotdot_listing": dotdot_listing,
        "env": env,
    })
}

stepbox_guest::step!(misbehave);
