//! Fair sharing of instance slots between workflow runs.
//!
//! A FIFO semaphore would let one run that fans out 10,000 items queue all
//! of them ahead of a small run submitted a moment later. Here each run has
//! its own queue of waiting steps and a freed slot goes to the next run in
//! round-robin order, so every run with work waiting gets slots at the same
//! rate whatever its size.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Instance slots shared round-robin between runs.
#[derive(Debug)]
pub(crate) struct FairGate {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Runs with waiters, in the order they are served.
    ring: VecDeque<u64>,
    waiting: HashMap<u64, VecDeque<oneshot::Sender<()>>>,
}

/// A slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub(crate) struct FairPermit {
    gate: Arc<FairGate>,
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A waiter that gives back a slot handed to it after it stopped waiting.
struct Waiter {
    rx: oneshot::Receiver<()>,
    gate: Arc<FairGate>,
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

impl FairGate {
    pub(crate) fn new(slots: usize) -> Arc<FairGate> {
        Arc::new(FairGate {
            state: Mutex::new(State {
                free: slots,
                ring: VecDeque::new(),
                waiting: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is only counters and queues updated in single steps.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot on behalf of run `run`. Cancel-safe: dropping the
    /// future gives up the place (and any slot handed over meanwhile).
    pub(crate) async fn acquire(self: &Arc<Self>, run: u64) -> FairPermit {
        let rx = {
            let mut state = self.lock();
            if state.free > 0 && state.ring.is_empty() {
                state.free -= 1;
                return FairPermit {
                    gate: Arc::clone(self),
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(run).or_default();
            if queue.is_empty() {
                state.ring.push_back(run);
            }
            state.waiting.get_mut(&run).expect("just inserted").push_back(tx);
            rx
        };
        let mut waiter = Waiter {
            rx,
            gate: Arc::clone(self),
            done: false,
        };
        // The sender is only dropped after a send, or when the gate is gone
        // (and with it `self`, which we hold): the slot is ours either way.
        let _ = (&mut waiter.rx).await;
        waiter.done = true;
        FairPermit {
            gate: Arc::clone(self),
        }
    }

    /// Hands a freed slot to the next waiting run, or returns it to the pool.
    fn release(&self) {
        let mut state = self.lock();
        while let Some(run) = state.ring.pop_front() {
            let Some(queue) = state.waiting.get_mut(&run) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.waiting.remove(&run);
            } else {
                state.ring.push_back(run);
            }
            if let Some(tx) = next
                && tx.send(()).is_ok()
            {
                return;
            }
        }
        state.free += 1;
    }

    /// Slots not in use.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_big_run_does_not_starve_a_small_one_submitted_after_it() {
        let gate = FairGate::new(1);
        let held = gate.acquire(1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Run 1 queues 100 steps, then run 2 queues one.
        for (run, n) in [(1u64, 100), (2, 1)] {
            for _ in 0..n {
                let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
                let task = tokio::spawn(async move {
                    let _permit = gate.acquire(run).await;
                    order.lock().unwrap().push(run);
                });
                tasks.push(task);
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap();
        let position = order.iter().position(|&r| r == 2).unwrap();
        assert!(
            position <= 1,
            "run 2 was served at position {position} of {}",
            order.len()
        );
        assert_eq!(gate.free(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_the_slot() {
        let gate = FairGate::new(1);
        let held = gate.acquire(1).await;
        let waiting = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                let _ = gate.acquire(2).await;
            }
        });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(gate.free(), 1);
        let _again = gate.acquire(3).await;
        assert_eq!(gate.free(), 0);
    }
}
