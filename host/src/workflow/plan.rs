//! Execution plan: levels, critical path and both directions of the dependency graph.

use std::fmt::Write as _;

use super::Workflow;

/// How a validated workflow's steps depend on each other, ready for a scheduler.
///
/// Steps are named by their index in [`Workflow::steps`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Steps grouped by depth: level 0 has the steps with no needs, level
    /// `n + 1` the steps whose deepest need is in level `n`. Each level lists
    /// its steps in file order.
    pub levels: Vec<Vec<usize>>,
    /// The longest chain of steps, first to last, by step count. Ties are
    /// broken by weight (each step weighs its timeout in milliseconds if one
    /// is set, else 1), then by file order.
    pub critical_path: Vec<usize>,
    /// For each step, the steps it needs (deduplicated, in the order written).
    pub needs: Vec<Vec<usize>>,
    /// For each step, the steps that need it, in file order.
    pub dependents: Vec<Vec<usize>>,
}

impl Plan {
    /// A human summary: one line per level (`level 0: a, b`), then
    /// `critical path: a -> c -> d`.
    ///
    /// `workflow` must be the workflow this plan was made from.
    pub fn describe(&self, workflow: &Workflow) -> String {
        let id = |i: usize| workflow.steps[i].id.as_str();
        let mut out = String::new();
        for (n, level) in self.levels.iter().enumerate() {
            let _ = write!(out, "level {n}: ");
            for (k, &step) in level.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                out.push_str(id(step));
            }
            out.push('\n');
        }
        out.push_str("critical path: ");
        for (k, &step) in self.critical_path.iter().enumerate() {
            if k > 0 {
                out.push_str(" -> ");
            }
            out.push_str(id(step));
        }
        out.push('\n');
        out
    }
}

/// The outcome of ordering a graph: a plan, or one concrete cycle.
pub(crate) enum Ordered {
    Plan(Plan),
    /// Step indices of a cycle; each needs the next, and the last needs the first.
    Cycle(Vec<usize>),
}

/// Orders the graph given by `needs` with Kahn's algorithm (no recursion, so
/// chains of any length are fine) and finds the critical path.
/// `weights` is each step's tie-breaking weight.
pub(crate) fn order(needs: Vec<Vec<usize>>, weights: &[u64]) -> Ordered {
    let n = needs.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut missing: Vec<usize> = Vec::with_capacity(n);
    for (step, list) in needs.iter().enumerate() {
        missing.push(list.len());
        for &need in list {
            dependents[need].push(step);
        }
    }
    let mut levels: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| missing[i] == 0).collect();
    let mut done = 0;
    while !current.is_empty() {
        done += current.len();
        let mut next = Vec::new();
        for &step in &current {
            for &dependent in &dependents[step] {
                missing[dependent] -= 1;
                if missing[dependent] == 0 {
                    next.push(dependent);
                }
            }
        }
        next.sort_unstable();
        levels.push(std::mem::replace(&mut current, next));
    }
    if done < n {
        return Ordered::Cycle(find_cycle(&needs, &missing));
    }

    // Longest path by (count, weight), over steps in topological order.
    let mut best: Vec<(u64, u64, usize)> = vec![(0, 0, usize::MAX); n];
    for &step in levels.iter().flatten() {
        let mut top = (0, 0, usize::MAX);
        for &need in &needs[step] {
            let (count, weight, _) = best[need];
            if (count, weight) > (top.0, top.1) {
                top = (count, weight, need);
            }
        }
        best[step] = (top.0 + 1, top.1.saturating_add(weights[step]), top.2);
    }
    let mut end = usize::MAX;
    let mut end_key = (0, 0);
    for (step, &(count, weight, _)) in best.iter().enumerate() {
        if (count, weight) > end_key {
            end_key = (count, weight);
            end = step;
        }
    }
    let mut critical_path = Vec::new();
    while end != usize::MAX {
        critical_path.push(end);
        end = best[end].2;
    }
    critical_path.reverse();

    Ordered::Plan(Plan {
        levels,
        critical_path,
        needs,
        dependents,
    })
}

/// Every step left with `missing > 0` after Kahn's algorithm waits on another
/// such step, so following unfinished needs from one must come back on itself.
fn find_cycle(needs: &[Vec<usize>], missing: &[usize]) -> Vec<usize> {
    let stuck = |i: usize| missing[i] > 0;
    let Some(start) = (0..needs.len()).find(|&i| stuck(i)) else {
        return Vec::new();
    };
    let mut seen_at = vec![usize::MAX; needs.len()];
    let mut walk = Vec::new();
    let mut step = start;
    while seen_at[step] == usize::MAX {
        seen_at[step] = walk.len();
        walk.push(step);
        step = needs[step]
            .iter()
            .copied()
            .find(|&need| stuck(need))
            .expect("a stuck step waits on a stuck step");
    }
    let mut cycle = walk.split_off(seen_at[step]);
    // Start at the step written first, so the report is stable.
    let first = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &s)| s)
        .map_or(0, |(k, _)| k);
    cycle.rotate_left(first);
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(needs: Vec<Vec<usize>>, weights: &[u64]) -> Plan {
        match order(needs, weights) {
            Ordered::Plan(plan) => plan,
            Ordered::Cycle(cycle) => panic!("unexpected cycle {cycle:?}"),
        }
    }

    #[test]
    fn levels_group_steps_by_their_deepest_need() {
        // 0 -> 1 -> 3, 0 -> 2, 3 needs 1 and 2; 4 alone.
        let p = plan(vec![vec![], vec![0], vec![0], vec![1, 2], vec![]], &[1; 5]);
        assert_eq!(p.levels, vec![vec![0, 4], vec![1, 2], vec![3]]);
        assert_eq!(p.dependents[0], vec![1, 2]);
        assert_eq!(p.critical_path, vec![0, 1, 3]);
    }

    #[test]
    fn critical_path_ties_are_broken_by_weight() {
        let p = plan(vec![vec![], vec![0], vec![0], vec![1, 2]], &[1, 1, 500, 1]);
        assert_eq!(p.critical_path, vec![0, 2, 3]);
    }

    #[test]
    fn a_cycle_is_reported_as_one_concrete_loop() {
        // 0 needs 2, 2 needs 1, 1 needs 0; 3 needs 0 (stuck, but not in the loop).
        let Ordered::Cycle(cycle) = order(vec![vec![2], vec![0], vec![1], vec![0]], &[1; 4]) else {
            panic!("expected a cycle");
        };
        assert_eq!(cycle, vec![0, 2, 1]);
    }

    #[test]
    fn long_chains_order_without_recursion() {
        let n = 100_000;
        let needs = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let p = plan(needs, &vec![1; n]);
        assert_eq!(p.levels.len(), n);
        assert_eq!(p.critical_path.len(), n);
    }
}
