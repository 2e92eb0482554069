//! Admission accounting over random sequences of admissions, reservations,
//! releases and cancelled waits: counts match what is held, never exceed a
//! quota, never go negative, and everything returns to zero.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Asks for a workflow slot (queueing if none is free).
    Admit,
    /// Asks for an instance and this many bytes of the budget, waiting.
    Reserve(u64),
    /// Asks for this many bytes of the budget at once, without an instance.
    TryReserve(u64),
    /// Drops a held slot of either kind.
    DropHeld(prop::sample::Index),
    /// Drops a waiting request (its task was cancelled).
    Cancel(prop::sample::Index),
}

fn quotas() -> impl Strategy<Value = Quotas> {
    (1..4usize, 0..4usize, 1..4usize, 1..40u64).prop_map(
        |(max_workflows, max_queued, max_instances, budget_kib)| Quotas {
            max_workflows,
            max_queued,
            max_instances,
            // Not a whole number of KiB: requests round up to units.
            memory_budget: ByteSize(budget_kib * 1024 + 3),
            ..Quotas::default()
        },
    )
}

fn op(budget: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Admit),
        3 => (0..budget + 2048).prop_map(Op::Reserve),
        1 => (0..budget + 2048).prop_map(Op::TryReserve),
        3 => any::<prop::sample::Index>().prop_map(Op::DropHeld),
        1 => any::<prop::sample::Index>().prop_map(Op::Cancel),
    ]
}

enum Held {
    Workflow { _slot: WorkflowSlot },
    Instance(InstanceSlot),
    Memory(InstanceSlot),
}

type Waiting = Pin<Box<dyn Future<Output = Held>>>;

/// Polls every waiting request once; those that are done move to `held`.
fn poll_all(waiting: &mut Vec<Waiting>, held: &mut Vec<Held>) {
    let mut cx = Context::from_waker(Waker::noop());
    waiting.retain_mut(|fut| match fut.as_mut().poll(&mut cx) {
        Poll::Ready(slot) => {
            held.push(slot);
            false
        }
        Poll::Pending => true,
    });
}

fn check(admission: &Admission, held: &[Held], waiting_workflows: usize) -> Result<(), TestCaseError> {
    let quotas = admission.quotas();
    let stats = admission.stats();
    let workflows = held.iter().filter(|h| matches!(h, Held::Workflow { .. })).count();
    let instances = held.iter().filter(|h| matches!(h, Held::Instance(_))).count();
    let memory: u64 = held
        .iter()
        .map(|h| match h {
            Held::Instance(slot) | Held::Memory(slot) => slot.memory().as_u64(),
            Held::Workflow { .. } => 0,
        })
        .sum();
    prop_assert_eq!(stats.running_workflows, workflows);
    prop_assert_eq!(stats.queued_workflows, waiting_workflows);
    prop_assert_eq!(stats.instances_in_use, instances);
    prop_assert_eq!(stats.memory_in_use.as_u64(), memory);
    prop_assert!(workflows <= quotas.max_workflows);
    prop_assert!(waiting_workflows <= quotas.max_queued);
    prop_assert!(instances <= quotas.max_instances);
    prop_assert!(memory <= quotas.memory_budget.as_u64());
    Ok(())
}

proptest! {
    #[test]
    fn any_sequence_of_acquires_releases_and_drops_returns_to_zero_use(
        (quotas, ops) in quotas().prop_flat_map(|q| {
            let budget = q.memory_budget.as_u64();
            (Just(q), proptest::collection::vec(op(budget), 1..60))
        }),
    ) {
        let admission = Admission::new(quotas.clone());
        let mut held: Vec<Held> = Vec::new();
        // Waiting workflow admissions and waiting reservations, apart: only
        // the first count as queued.
        let mut queued: Vec<Waiting> = Vec::new();
        let mut reserving: Vec<Waiting> = Vec::new();
        for op in ops {
            match op {
                Op::Admit => match admission.enqueue_workflow() {
                    Ok(ticket) => queued.push(Box::pin(async move {
                        Held::Workflow {
                            _slot: ticket.admitted().await.expect("a ticket is admitted"),
                        }
                    })),
                    Err(e) => {
                        prop_assert_eq!(e, QuotaError::QueueFull { max_queued: quotas.max_queued });
                        prop_assert_eq!(admission.stats().running_workflows, quotas.max_workflows);
                        prop_assert_eq!(admission.queue_depth(), quotas.max_queued);
                    }
                },
                Op::Reserve(bytes) => {
                    let memory = ByteSize(bytes);
                    let admission = admission.clone();
                    if memory > quotas.memory_budget {
                        let mut fut = Box::pin(admission.reserve_instance(memory));
                        let mut cx = Context::from_waker(Waker::noop());
                        let Poll::Ready(Err(e)) = fut.as_mut().poll(&mut cx) else {
                            return Err(TestCaseError::fail("an oversize request must fail at once"));
                        };
                        prop_assert!(matches!(e, QuotaError::MemoryLimitTooLarge { .. }), "{}", e);
                    } else {
                        reserving.push(Box::pin(async move {
                            Held::Instance(admission.reserve_instance(memory).await.expect("fits the budget"))
                        }));
                    }
                }
                Op::TryReserve(bytes) => match admission.try_reserve_memory(ByteSize(bytes)) {
                    Ok(slot) => {
                        prop_assert_eq!(slot.memory(), ByteSize(bytes));
                        held.push(Held::Memory(slot));
                    }
                    Err(QuotaError::MemoryLimitTooLarge { .. }) => {
                        prop_assert!(ByteSize(bytes) > quotas.memory_budget);
                    }
                    Err(QuotaError::MemoryBudgetExhausted { .. }) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                },
                Op::DropHeld(i) => {
                    if !held.is_empty() {
                        drop(held.swap_remove(i.index(held.len())));
                    }
                }
                Op::Cancel(i) => {
                    let total = queued.len() + reserving.len();
                    if total > 0 {
                        let k = i.index(total);
                        if k < queued.len() {
                            drop(queued.remove(k));
                        } else {
                            drop(reserving.remove(k - queued.len()));
                        }
                    }
                }
            }
            poll_all(&mut queued, &mut held);
            poll_all(&mut reserving, &mut held);
            check(&admission, &held, queued.len())?;
        }

        // Release everything, letting each waiter through in turn: nothing
        // stays waiting (no permit leaked), and all use returns to zero.
        for _ in 0..1_000 {
            held.clear();
            poll_all(&mut queued, &mut held);
            poll_all(&mut reserving, &mut held);
            if held.is_empty() && queued.is_empty() && reserving.is_empty() {
                break;
            }
        }
        prop_assert!(queued.is_empty() && reserving.is_empty(), "requests still wait with nothing held");
        prop_assert_eq!(
            admission.stats(),
            AdmissionStats { running_workflows: 0, queued_workflows: 0, instances_in_use: 0, memory_in_use: ByteSize(0) }
        );
        // The whole budget, every instance and every workflow slot are free again.
        let whole = admission.try_reserve_memory(quotas.memory_budget);
        prop_assert!(whole.is_ok());
        drop(whole);
        prop_assert_eq!(admission.inner.instances.available_permits(), admission.inner.instance_permits);
        prop_assert_eq!(admission.inner.workflows.available_permits(), admission.inner.workflow_permits);
        prop_assert_eq!(admission.inner.memory.available_permits(), admission.inner.memory_permits as usize);
    }
}
