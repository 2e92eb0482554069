//! The state of one step instance, and the host imports it can call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::capture::LogCapture;
use super::meter::Meter;
use super::outbound::Outbound;
use super::scratch_fs::Held;
use super::secrets::Secrets;
use super::step_host::Imports;

/// Everything a running instance's `Store` holds.
pub(crate) struct InstanceState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// What the step keeps in `/tmp` and which handles hold host descriptors.
    pub(crate) meter: Meter,
    /// The metered handles, by table index.
    pub(crate) held: HashMap<u32, Held>,
    /// Whether the guest asked for its preopened directories: until it
    /// does, it has no handle on its `/tmp`, which is then still empty and
    /// unseen, fit for the next instance.
    pub(crate) tmp_opened: bool,
    pub(crate) log: LogCapture,
    /// The effective deadline: `remaining-ms` counts down to it.
    pub(crate) deadline: Instant,
    /// Where child calls and state operations go.
    pub(crate) imports: Imports,
    /// What `idempotency-key` and `attempt` return.
    pub(crate) work: WorkId,
    pub(crate) http: WasiHttpCtx,
    /// Where the step may call out, and what it has sent.
    pub(crate) outbound: Outbound,
    /// What `secret` returns, and what is redacted from what the step leaves.
    pub(crate) secrets: Secrets,
}

/// Which unit of work an instance runs, as the guest sees it.
#[derive(Debug, Clone)]
pub(crate) struct WorkId {
    pub(crate) key: Arc<str>,
    pub(crate) attempt: u32,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.outbound,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// Enforces the step's memory limit and records what it used.
///
/// A refused growth is an error, not `Ok(false)`: a Rust guest's allocator
/// would turn `false` into an abort that looks like any other `unreachable`
/// trap, while the error carries the limit and the request to the outcome.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit: usize,
    in_use: usize,
    pub(crate) peak: usize,
}

/// The error a refused memory growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded: asked for {requested} bytes")]
pub(crate) struct MemoryLimitExceeded {
    pub(crate) limit: usize,
    pub(crate) requested: usize,
}

/// Tables only hold function references; this bound keeps a hostile
/// `table.grow` from taking host memory (8 bytes an element).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            in_use: 0,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        // The limit is on the instance's total, across all its memories.
        let requested = self.in_use - current + desired;
        if requested > self.limit {
            return Err(MemoryLimitExceeded {
                limit: self.limit,
                requested,
            }
            .into());
        }
        self.in_use = requested;
        self.peak = self.peak.max(requested);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> Result<()> {
        // The growth we counted did not happen (the pool's own maximum, or the
        // OS refused); the guest sees memory.grow fail. Keep `in_use` honest
        // enough: peaks are upper bounds, which is what a report should show.
        tracing::debug!(%error, "memory growth failed after the limiter allowed it");
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_all_memories_and_records_the_peak() {
        let mut limiter = MemoryLimiter::new(10 << 16);
        assert!(limiter.memory_growing(0, 4 << 16, None).unwrap());
        assert!(limiter.memory_growing(0, 2 << 16, None).unwrap());
        assert_eq!(limiter.peak, 6 << 16);
        let err = limiter.memory_growing(4 << 16, 9 << 16, None).unwrap_err();
        let err = err.downcast_ref::<MemoryLimitExceeded>().unwrap();
        assert_eq!(err.requested, 11 << 16);
        assert_eq!(err.limit, 10 << 16);
        assert_eq!(limiter.peak, 6 << 16);
    }
}
