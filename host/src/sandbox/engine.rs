//! The wasmtime engine: its configuration, its linker and its epoch ticker.

use std::time::Duration;

use bytesize::ByteSize;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::instance::InstanceState;
use super::{SandboxBuilder, SandboxError};

/// Core instances a step may need: a Rust `wasm32-wasip2` step has 3, a
/// JavaScript one (componentize-js 0.23) 4, a Python one (componentize-py
/// 0.25: the interpreter, libc and their shims, dynamically linked) 14. The
/// count only bounds instance metadata allocated on demand; reserving too few
/// made every Python step in a small sandbox trap on a full pool.
const CORE_INSTANCES_PER_STEP: u32 = 16;

/// Tables a step needs (2 for Rust, Python and JavaScript), with slack.
const TABLES_PER_STEP: u32 = 3;

/// Bytes of each pooled linear memory scanned for dirty pages and reset in
/// place, when the kernel supports it.
const KEEP_RESIDENT: usize = 2 << 20;

/// The same for tables.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Decommits batched into one flush.
const DECOMMIT_BATCH: usize = 16;

/// An engine for instances with a `stack`-sized wasm stack, with its linker
/// and its epoch ticker running.
pub(super) fn build(
    settings: &SandboxBuilder,
    stack: ByteSize,
) -> Result<(Engine, Linker<InstanceState>), SandboxError> {
    let n = settings.max_instances;
    let max_memory = usize::try_from(settings.max_memory_per_instance.as_u64()).unwrap_or(usize::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_STEP))
        .total_memories(n)
        .total_tables(n.saturating_mul(TABLES_PER_STEP))
        .total_stacks(n)
        .max_memory_size(max_memory)
        .decommit_batch_size(DECOMMIT_BATCH);
    // A Rust step touches a few scattered pages of its first MiB. Where the
    // kernel can say which pages are dirty (PAGEMAP_SCAN, Linux 6.7+) only
    // those are reset, with memset, and stay resident: no madvise and no page
    // faults on the next use of the slot. Without it, keeping memory
    // resident would mean a memset of all of it, so linear memory is reset
    // with madvise instead, in batches.
    let in_place = PoolingAllocationConfig::is_pagemap_scan_available();
    if in_place {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT.min(max_memory))
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    tracing::debug!(
        reset = if in_place {
            "dirty pages, in place"
        } else {
            "madvise"
        },
        "pooled linear memory reset"
    );

    let stack = usize::try_from(stack.as_u64()).unwrap_or(usize::MAX);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(stack)
        // The fiber stack must hold the wasm stack plus the host frames below it.
        .async_stack_size(stack + 1024 * 1024)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64));
    let engine = Engine::new(&config).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
    let mut linker = Linker::new(&engine);
    link(&mut linker)?;
    start_epoch_ticker(&engine, settings.epoch_tick)?;
    Ok((engine, linker))
}

/// Adds WASI 0.2 and the stepbox `host` interface to the linker.
///
/// WASI is linked whole, but the context each instance gets denies what a
/// step must not have: no environment, no arguments, no stdin, no sockets,
/// no name lookup, and no directory but its own `/tmp`.
///
/// `wasi:filesystem/types` is then linked again, over wasmtime-wasi's own,
/// as the metered layer that enforces the scratch quota and handle cap.
/// `wasi:http`'s outgoing handler is linked too; each instance's hooks deny
/// every request its step was not granted.
fn link(linker: &mut Linker<InstanceState>) -> Result<(), SandboxError> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
        .and_then(|()| {
            linker.allow_shadowing(true);
            let metered = super::scratch_fs::add_to_linker(linker);
            linker.allow_shadowing(false);
            metered
        })
        .and_then(|()| wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker))
        .and_then(|()| super::step_host::add_to_linker(linker))
        .map_err(|e| SandboxError::Engine(format!("{e:#}")))
}

/// Increments the engine's epoch every `tick` until the engine is dropped.
///
/// The thread holds only a weak reference, so it does not keep the engine
/// alive. Without it a spinning guest would never be interrupted, so failing
/// to start it fails the sandbox.
fn start_epoch_ticker(engine: &Engine, tick: Duration) -> Result<(), SandboxError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("stepbox-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .map(drop)
        .map_err(|e| SandboxError::Engine(format!("cannot start the epoch ticker thread: {e}")))
}
