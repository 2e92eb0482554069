//! Admission control and size quotas.
//!
//! [`Admission`] bounds how many workflows run at once (and how many may wait
//! for a turn), how many step instances run at once, and how much memory their
//! limits add up to. Waiting is first come, first served. Size quotas
//! ([`Admission::check_steps`] and friends) are plain comparisons the scheduler
//! makes before it accepts work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytesize::ByteSize;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::InvalidSetting;

/// The host-wide quotas.
///
/// # Examples
///
/// ```
/// use bytesize::ByteSize;
/// use stepbox::policy::Quotas;
///
/// let quotas = Quotas { max_workflows: 8, memory_budget: ByteSize::gib(1), ..Quotas::default() };
/// quotas.validate().unwrap();
/// assert_eq!(quotas.max_instances, 64);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Workflows running at once.
    pub max_workflows: usize,
    /// Workflows waiting for admission beyond those; further submissions are rejected at once.
    pub max_queued: usize,
    /// Step instances running at once.
    pub max_instances: usize,
    /// The sum of the memory limits of running instances.
    pub memory_budget: ByteSize,
    /// Steps in one workflow.
    pub max_steps_per_workflow: usize,
    /// Items one fan-out step may spread over.
    pub max_fan_out: usize,
    /// Bytes of state one workflow may keep.
    pub max_state_bytes: usize,
}

impl Default for Quotas {
    /// 256 running and 10 000 queued workflows, 64 instances within a 4 GiB
    /// memory budget, 10 000 steps, fan-outs of 10 000 and 1 MiB of state.
    fn default() -> Self {
        Quotas {
            max_workflows: 256,
            max_queued: 10_000,
            max_instances: 64,
            memory_budget: ByteSize::gib(4),
            max_steps_per_workflow: 10_000,
            max_fan_out: 10_000,
            max_state_bytes: 1024 * 1024,
        }
    }
}

impl Quotas {
    /// Checks that nothing would wait forever, with a one-line reason when it would:
    /// `max_workflows` and `max_instances` must be at least 1.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting::TooSmall`] naming the setting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let at_least_one = |setting, value: usize| match value {
            0 => Err(InvalidSetting::TooSmall {
                setting,
                min: 1,
                note: "",
            }),
            _ => Ok(()),
        };
        at_least_one("max-workflows", self.max_workflows)?;
        at_least_one("max-instances", self.max_instances)
    }
}

/// A quota that a request would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// All workflow slots are taken and the admission queue is full.
    #[error("quota exceeded: {max_queued} workflows are already waiting for admission")]
    QueueFull {
        /// The queue's capacity.
        max_queued: usize,
    },
    /// A workflow has more steps than allowed.
    #[error("quota exceeded: the workflow has {steps} steps, the limit is {max}")]
    WorkflowTooLarge {
        /// Steps in the workflow.
        steps: usize,
        /// The limit.
        max: usize,
    },
    /// A fan-out has more items than allowed.
    #[error("quota exceeded: the fan-out has {items} items, the limit is {max}")]
    FanOutTooLarge {
        /// Items in the fan-out.
        items: usize,
        /// The limit.
        max: usize,
    },
    /// A workflow's state is larger than allowed.
    #[error("quota exceeded: the workflow state is {bytes} bytes, the limit is {max}")]
    StateTooLarge {
        /// Size of the state.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// No memory of the budget is free now, for a request that cannot wait
    /// (a child call, whose caller holds memory of its own).
    #[error(
        "quota exceeded: {} of memory asked for, but only {} of the {} budget is free",
        .asked.display().iec(),
        .free.display().iec(),
        .budget.display().iec()
    )]
    MemoryBudgetExhausted {
        /// The memory asked for.
        asked: ByteSize,
        /// What was free.
        free: ByteSize,
        /// The whole budget.
        budget: ByteSize,
    },
    /// One step's memory limit is larger than the whole memory budget, so it could never run.
    #[error(
        "quota exceeded: a step asked for {} of memory, more than the whole budget of {}",
        .asked.display().iec(),
        .budget.display().iec()
    )]
    MemoryLimitTooLarge {
        /// The memory the step asked for.
        asked: ByteSize,
        /// The whole budget.
        budget: ByteSize,
    },
}

/// Counts of what is in use, for reports and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AdmissionStats {
    /// Workflows holding a slot.
    pub running_workflows: usize,
    /// Workflows waiting for a slot.
    pub queued_workflows: usize,
    /// Step instances holding a slot.
    pub instances_in_use: usize,
    /// Memory reserved by running instances.
    pub memory_in_use: ByteSize,
}

/// Admission control for a host: workflow slots, instance slots and the memory budget.
///
/// Cloning is cheap and clones share the same counts.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use bytesize::ByteSize;
/// use stepbox::policy::{Admission, QuotaError, Quotas};
///
/// let admission = Admission::new(Quotas { max_workflows: 1, max_queued: 0, ..Quotas::default() });
/// let slot = admission.admit_workflow().await.unwrap();
/// assert_eq!(admission.admit_workflow().await.unwrap_err(), QuotaError::QueueFull { max_queued: 0 });
///
/// let instance = admission.reserve_instance(ByteSize::mib(64)).await.unwrap();
/// assert_eq!(admission.stats().memory_in_use, ByteSize::mib(64));
/// drop((instance, slot));
/// assert_eq!(admission.stats().running_workflows, 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    quotas: Quotas,
    workflow_permits: usize,
    workflows: Arc<Semaphore>,
    queued: AtomicUsize,
    instance_permits: usize,
    instances: Arc<Semaphore>,
    /// Bytes per memory permit: a power of two of at least 1 KiB, large enough
    /// that the whole budget (and so any admissible request) fits in `u32` permits
    /// and in one semaphore.
    memory_unit: u64,
    memory_permits: u32,
    memory: Arc<Semaphore>,
    memory_in_use: AtomicU64,
}

/// A running workflow's slot; dropping it admits the next waiting workflow.
#[derive(Debug)]
#[must_use = "the slot is released as soon as it is dropped"]
pub struct WorkflowSlot {
    _permit: OwnedSemaphorePermit,
}

/// One step instance's slot and its share of the memory budget; dropping it releases both.
#[derive(Debug)]
#[must_use = "the slot is released as soon as it is dropped"]
pub struct InstanceSlot {
    /// None for a memory-only reservation ([`Admission::try_reserve_memory`]).
    _instance: Option<OwnedSemaphorePermit>,
    _memory: OwnedSemaphorePermit,
    memory: ByteSize,
    inner: Arc<Inner>,
}

impl InstanceSlot {
    /// The memory reserved for this instance.
    pub fn memory(&self) -> ByteSize {
        self.memory
    }
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        self.inner
            .memory_in_use
            .fetch_sub(self.memory.as_u64(), Ordering::Relaxed);
    }
}

/// A workflow's place in the admission queue (or its slot, if one was free).
///
/// Dropping a queued ticket leaves the queue.
#[derive(Debug)]
#[must_use = "the place in the queue is given up as soon as it is dropped"]
pub struct QueueTicket {
    inner: Arc<Inner>,
    state: Ticket,
}

#[derive(Debug)]
enum Ticket {
    Admitted(OwnedSemaphorePermit),
    Queued,
    Done,
}

impl QueueTicket {
    /// Waits for the workflow's slot, in arrival order.
    pub async fn admitted(mut self) -> Result<WorkflowSlot, QuotaError> {
        if let Ticket::Admitted(permit) = std::mem::replace(&mut self.state, Ticket::Queued) {
            self.state = Ticket::Done;
            return Ok(WorkflowSlot { _permit: permit });
        }
        let permit = Arc::clone(&self.inner.workflows)
            .acquire_owned()
            .await
            .expect(CLOSED);
        // Leaves the queue here (in drop), now that the wait is over.
        Ok(WorkflowSlot { _permit: permit })
    }
}

impl QueueTicket {
    /// Gives back the workflow slot a ticket was admitted to on arrival, so
    /// that it waits in the queue instead: for a run that must first wait
    /// for something else (its tenant's share), without holding a slot
    /// others could use meanwhile.
    pub fn give_back(&mut self) {
        if matches!(self.state, Ticket::Admitted(_)) {
            self.state = Ticket::Queued;
            self.inner.queued.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        if matches!(self.state, Ticket::Queued) {
            self.inner.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

const CLOSED: &str = "admission semaphores are never closed";

impl Admission {
    /// Admission control enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        let workflow_permits = quotas.max_workflows.min(Semaphore::MAX_PERMITS);
        let instance_permits = quotas.max_instances.min(Semaphore::MAX_PERMITS);
        let budget = quotas.memory_budget.as_u64();
        // Both a single acquire (u32) and the semaphore (MAX_PERMITS) must hold the whole budget.
        let max_units = u64::from(u32::MAX).min(Semaphore::MAX_PERMITS as u64);
        let mut memory_unit: u64 = 1024;
        while budget / memory_unit > max_units {
            memory_unit *= 2;
        }
        let memory_permits = u32::try_from(budget / memory_unit).unwrap_or(u32::MAX);
        Admission {
            inner: Arc::new(Inner {
                workflows: Arc::new(Semaphore::new(workflow_permits)),
                workflow_permits,
                queued: AtomicUsize::new(0),
                instances: Arc::new(Semaphore::new(instance_permits)),
                instance_permits,
                memory: Arc::new(Semaphore::new(memory_permits as usize)),
                memory_unit,
                memory_permits,
                memory_in_use: AtomicU64::new(0),
                quotas,
            }),
        }
    }

    /// The quotas enforced.
    pub fn quotas(&self) -> &Quotas {
        &self.inner.quotas
    }

    /// Admits a workflow, waiting for a slot if `max_workflows` are running.
    ///
    /// Fails at once with [`QuotaError::QueueFull`] if `max_queued` workflows
    /// already wait. Waiters are admitted in arrival order. The slot is freed
    /// when the returned guard is dropped; if this future is dropped while
    /// waiting, it leaves the queue.
    pub async fn admit_workflow(&self) -> Result<WorkflowSlot, QuotaError> {
        self.enqueue_workflow()?.admitted().await
    }

    /// The synchronous half of [`Admission::admit_workflow`]: takes a place
    /// in the queue (or a slot at once), or fails at once with
    /// [`QuotaError::QueueFull`]. A submitter calls this before it answers,
    /// then awaits [`QueueTicket::admitted`] in the background.
    pub fn enqueue_workflow(&self) -> Result<QueueTicket, QuotaError> {
        let inner = &self.inner;
        if let Ok(permit) = Arc::clone(&inner.workflows).try_acquire_owned() {
            return Ok(QueueTicket {
                inner: Arc::clone(inner),
                state: Ticket::Admitted(permit),
            });
        }
        let max_queued = inner.quotas.max_queued;
        inner
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max_queued).then_some(n + 1)
            })
            .map_err(|_| QuotaError::QueueFull { max_queued })?;
        Ok(QueueTicket {
            inner: Arc::clone(inner),
            state: Ticket::Queued,
        })
    }

    /// Workflows waiting for a slot right now.
    pub fn queue_depth(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Reserves an instance slot and `memory` of the memory budget for one step run.
    ///
    /// Waits, first come first served, until both are available: memory first,
    /// then the instance slot, always in that order, so two reservations can
    /// never each hold what the other waits for. A request larger than the
    /// whole budget fails at once with [`QuotaError::MemoryLimitTooLarge`].
    /// The budget is counted in whole units of at least 1 KiB (requests round
    /// up). Dropping the guard releases both; dropping this future while it
    /// waits releases whatever it had taken.
    pub async fn reserve_instance(&self, memory: ByteSize) -> Result<InstanceSlot, QuotaError> {
        let units = self.memory_units(memory)?;
        let memory_permit = Arc::clone(&self.inner.memory)
            .acquire_many_owned(units)
            .await
            .expect(CLOSED);
        let instance_permit = Arc::clone(&self.inner.instances)
            .acquire_owned()
            .await
            .expect(CLOSED);
        self.inner
            .memory_in_use
            .fetch_add(memory.as_u64(), Ordering::Relaxed);
        Ok(InstanceSlot {
            _instance: Some(instance_permit),
            _memory: memory_permit,
            memory,
            inner: Arc::clone(&self.inner),
        })
    }

    /// Reserves `memory` of the budget at once, without an instance slot,
    /// for work that runs on a slot it already has (a child call on its
    /// caller's): waiting could deadlock when every holder waits on a child.
    ///
    /// # Errors
    ///
    /// [`QuotaError::MemoryBudgetExhausted`] when that much is not free now;
    /// [`QuotaError::MemoryLimitTooLarge`] when it exceeds the whole budget.
    pub fn try_reserve_memory(&self, memory: ByteSize) -> Result<InstanceSlot, QuotaError> {
        let units = self.memory_units(memory)?;
        let permit = Arc::clone(&self.inner.memory)
            .try_acquire_many_owned(units)
            .map_err(|_| QuotaError::MemoryBudgetExhausted {
                asked: memory,
                free: ByteSize::b(
                    self.inner
                        .quotas
                        .memory_budget
                        .as_u64()
                        .saturating_sub(self.inner.memory_in_use.load(Ordering::Relaxed)),
                ),
                budget: self.inner.quotas.memory_budget,
            })?;
        self.inner
            .memory_in_use
            .fetch_add(memory.as_u64(), Ordering::Relaxed);
        Ok(InstanceSlot {
            _instance: None,
            _memory: permit,
            memory,
            inner: Arc::clone(&self.inner),
        })
    }

    /// The permits `memory` takes; an error when it exceeds the budget.
    fn memory_units(&self, memory: ByteSize) -> Result<u32, QuotaError> {
        let inner = &self.inner;
        let budget = inner.quotas.memory_budget;
        if memory > budget {
            return Err(QuotaError::MemoryLimitTooLarge {
                asked: memory,
                budget,
            });
        }
        // Round up, but never past the whole budget: a request of at most the
        // budget must be admissible when nothing else runs.
        let units = memory.as_u64().div_ceil(inner.memory_unit);
        Ok(u32::try_from(units).unwrap_or(u32::MAX).min(inner.memory_permits))
    }

    /// Checks a workflow's step count against `max_steps_per_workflow`.
    pub fn check_steps(&self, n: usize) -> Result<(), QuotaError> {
        let max = self.inner.quotas.max_steps_per_workflow;
        if n > max {
            return Err(QuotaError::WorkflowTooLarge { steps: n, max });
        }
        Ok(())
    }

    /// Checks a fan-out's item count against `max_fan_out`.
    pub fn check_fan_out(&self, n: usize) -> Result<(), QuotaError> {
        let max = self.inner.quotas.max_fan_out;
        if n > max {
            return Err(QuotaError::FanOutTooLarge { items: n, max });
        }
        Ok(())
    }

    /// Checks a workflow's state size against `max_state_bytes`.
    pub fn check_state(&self, bytes: usize) -> Result<(), QuotaError> {
        let max = self.inner.quotas.max_state_bytes;
        if bytes > max {
            return Err(QuotaError::StateTooLarge { bytes, max });
        }
        Ok(())
    }

    /// What is in use right now.
    pub fn stats(&self) -> AdmissionStats {
        let inner = &self.inner;
        AdmissionStats {
            running_workflows: inner.workflow_permits - inner.workflows.available_permits(),
            queued_workflows: self.queue_depth(),
            instances_in_use: inner.instance_permits - inner.instances.available_permits(),
            memory_in_use: ByteSize(inner.memory_in_use.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls `fut` once without a runtime waker: enough to see whether it is waiting.
    fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn quotas(max_workflows: usize, max_queued: usize) -> Quotas {
        Quotas {
            max_workflows,
            max_queued,
            ..Quotas::default()
        }
    }

    #[tokio::test]
    async fn queue_full_rejects_immediately() {
        let admission = Admission::new(quotas(1, 1));
        let _running = admission.admit_workflow().await.unwrap();
        let mut waiting = pin!(admission.admit_workflow());
        assert!(poll_once(waiting.as_mut()).is_pending());
        assert_eq!(admission.queue_depth(), 1);
        let mut rejected = pin!(admission.admit_workflow());
        assert!(matches!(
            poll_once(rejected.as_mut()),
            Poll::Ready(Err(QuotaError::QueueFull { max_queued: 1 }))
        ));
        assert_eq!(admission.stats().queued_workflows, 1);
    }

    #[tokio::test]
    async fn slot_release_admits_the_next_waiter_in_order() {
        let admission = Admission::new(quotas(1, 10));
        let running = admission.admit_workflow().await.unwrap();
        let mut first = pin!(admission.admit_workflow());
        let mut second = pin!(admission.admit_workflow());
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(admission.queue_depth(), 2);

        drop(running);
        // The second waiter cannot jump the queue.
        assert!(poll_once(second.as_mut()).is_pending());
        let first = first.await.unwrap();
        assert_eq!(admission.queue_depth(), 1);
        assert_eq!(admission.stats().running_workflows, 1);
        drop(first);
        let _second = second.await.unwrap();
        assert_eq!(admission.queue_depth(), 0);
    }

    #[tokio::test]
    async fn memory_budget_makes_a_big_request_wait_until_others_release() {
        let admission = Admission::new(Quotas {
            memory_budget: ByteSize::mib(100),
            ..Quotas::default()
        });
        let a = admission.reserve_instance(ByteSize::mib(40)).await.unwrap();
        let b = admission.reserve_instance(ByteSize::mib(40)).await.unwrap();
        let mut big = pin!(admission.reserve_instance(ByteSize::mib(50)));
        assert!(poll_once(big.as_mut()).is_pending());
        drop(a);
        let big = big.await.unwrap();
        assert_eq!(big.memory(), ByteSize::mib(50));
        let stats = admission.stats();
        assert_eq!(stats.memory_in_use, ByteSize::mib(90));
        assert_eq!(stats.instances_in_use, 2);
        drop((b, big));
        assert_eq!(admission.stats().memory_in_use, ByteSize(0));
        assert_eq!(admission.stats().instances_in_use, 0);
    }

    #[tokio::test]
    async fn instance_slots_bound_concurrent_steps() {
        let admission = Admission::new(Quotas {
            max_instances: 1,
            ..Quotas::default()
        });
        let one = admission.reserve_instance(ByteSize::mib(1)).await.unwrap();
        let mut two = pin!(admission.reserve_instance(ByteSize::mib(1)));
        assert!(poll_once(two.as_mut()).is_pending());
        drop(one);
        let _slot = two.await.unwrap();
    }

    #[tokio::test]
    async fn oversize_request_errors_at_once() {
        let admission = Admission::new(Quotas {
            memory_budget: ByteSize::mib(100),
            ..Quotas::default()
        });
        let _held = admission.reserve_instance(ByteSize::mib(100)).await.unwrap();
        let mut too_big = pin!(admission.reserve_instance(ByteSize::mib(101)));
        let Poll::Ready(Err(error)) = poll_once(too_big.as_mut()) else {
            panic!("should fail at once");
        };
        assert_eq!(
            error,
            QuotaError::MemoryLimitTooLarge {
                asked: ByteSize::mib(101),
                budget: ByteSize::mib(100)
            }
        );
        assert!(error.to_string().starts_with("quota exceeded: "), "{error}");
    }

    #[tokio::test]
    async fn a_request_of_the_whole_unaligned_budget_is_admissible() {
        let budget = ByteSize(10 * 1024 + 1);
        let admission = Admission::new(Quotas {
            memory_budget: budget,
            ..Quotas::default()
        });
        let whole = admission.reserve_instance(budget).await.unwrap();
        let mut more = pin!(admission.reserve_instance(ByteSize(1)));
        assert!(poll_once(more.as_mut()).is_pending());
        drop(whole);
        let _slot = more.await.unwrap();
    }

    #[tokio::test]
    async fn budgets_beyond_u32_kib_do_not_overflow_permits() {
        let budget = ByteSize::tib(64);
        let admission = Admission::new(Quotas {
            memory_budget: budget,
            ..Quotas::default()
        });
        let half = admission.reserve_instance(ByteSize::tib(32)).await.unwrap();
        let mut rest = pin!(admission.reserve_instance(ByteSize::tib(33)));
        assert!(poll_once(rest.as_mut()).is_pending());
        drop(half);
        let _slot = rest.await.unwrap();
        let huge = Admission::new(Quotas {
            memory_budget: ByteSize(u64::MAX),
            max_workflows: usize::MAX,
            max_instances: usize::MAX,
            ..Quotas::default()
        });
        let _slot = huge.reserve_instance(ByteSize(u64::MAX)).await.unwrap();
    }

    #[tokio::test]
    async fn guards_are_released_when_the_future_holding_them_is_cancelled() {
        let admission = Admission::new(Quotas {
            max_workflows: 1,
            max_instances: 1,
            memory_budget: ByteSize::mib(10),
            ..Quotas::default()
        });
        // A task holding both kinds of slot is aborted mid-await.
        let (held, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let admission = admission.clone();
            async move {
                let _workflow = admission.admit_workflow().await.unwrap();
                let _instance = admission.reserve_instance(ByteSize::mib(10)).await.unwrap();
                held.send(()).unwrap();
                std::future::pending::<()>().await;
            }
        });
        ready.await.unwrap();
        assert_eq!(admission.stats().running_workflows, 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let stats = admission.stats();
        assert_eq!(
            stats,
            AdmissionStats {
                running_workflows: 0,
                queued_workflows: 0,
                instances_in_use: 0,
                memory_in_use: ByteSize(0)
            }
        );

        // A waiting admission that is dropped leaves the queue.
        let running = admission.admit_workflow().await.unwrap();
        {
            let mut waiting = pin!(admission.admit_workflow());
            assert!(poll_once(waiting.as_mut()).is_pending());
            assert_eq!(admission.queue_depth(), 1);
        }
        assert_eq!(admission.queue_depth(), 0);
        drop(running);

        // A reservation dropped after taking memory but while waiting for an
        // instance slot gives the memory back.
        let instance = admission.reserve_instance(ByteSize::mib(1)).await.unwrap();
        {
            let mut waiting = pin!(admission.reserve_instance(ByteSize::mib(9)));
            assert!(poll_once(waiting.as_mut()).is_pending());
            assert_eq!(admission.inner.memory.available_permits(), 0);
        }
        assert_eq!(admission.inner.memory.available_permits(), 9 * 1024);
        drop(instance);
        let _all = admission.reserve_instance(ByteSize::mib(10)).await.unwrap();
    }

    #[tokio::test]
    async fn size_checks_allow_the_limit_and_reject_beyond_it() {
        let admission = Admission::new(Quotas {
            max_steps_per_workflow: 3,
            max_fan_out: 4,
            max_state_bytes: 5,
            ..Quotas::default()
        });
        assert_eq!(admission.check_steps(3), Ok(()));
        assert_eq!(admission.check_fan_out(4), Ok(()));
        assert_eq!(admission.check_state(5), Ok(()));
        let errors = [
            admission.check_steps(4).unwrap_err(),
            admission.check_fan_out(5).unwrap_err(),
            admission.check_state(6).unwrap_err(),
            QuotaError::QueueFull { max_queued: 1 },
        ];
        assert_eq!(errors[0], QuotaError::WorkflowTooLarge { steps: 4, max: 3 });
        for error in errors {
            let line = error.to_string();
            assert!(
                line.starts_with("quota exceeded: ") && !line.contains('\n'),
                "{line}"
            );
        }
    }

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let q = Quotas::default();
        q.validate().unwrap();
        assert_eq!(
            (q.max_workflows, q.max_queued, q.max_instances, q.memory_budget),
            (256, 10_000, 64, ByteSize::gib(4))
        );
        assert_eq!(
            (q.max_steps_per_workflow, q.max_fan_out, q.max_state_bytes),
            (10_000, 10_000, 1 << 20)
        );
        assert!(quotas(0, 5).validate().is_err());
    }
}

#[cfg(test)]
mod proptests;
