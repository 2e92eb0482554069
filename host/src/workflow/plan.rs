//! Execution plan: levels, critical path and both directions of the dependency graph.

use std::fmt::Write as _;

use super::Workflow;

/// Lists of step indices, one list per key, stored end to end: a large plan
/// is four allocations, not one per step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Lists {
    /// `items[starts[k]..starts[k + 1]]` is list `k`; `starts` begins with 0.
    starts: Vec<usize>,
    items: Vec<usize>,
}

impl Lists {
    /// No lists, with room for `lists` lists of `items` items in all.
    pub(crate) fn with_capacity(lists: usize, items: usize) -> Lists {
        let mut starts = Vec::with_capacity(lists + 1);
        starts.push(0);
        Lists {
            starts,
            items: Vec::with_capacity(items),
        }
    }

    /// Adds an item to the list being built.
    pub(crate) fn push_item(&mut self, item: usize) {
        self.items.push(item);
    }

    /// The list being built (after the last [`Lists::end_list`]).
    pub(crate) fn open_list(&self) -> &[usize] {
        &self.items[self.starts[self.starts.len() - 1]..]
    }

    /// Ends the list being built.
    pub(crate) fn end_list(&mut self) {
        self.starts.push(self.items.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub(crate) fn get(&self, k: usize) -> &[usize] {
        &self.items[self.starts[k]..self.starts[k + 1]]
    }

    fn iter(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        self.starts.windows(2).map(|w| &self.items[w[0]..w[1]])
    }

    /// Each item's position reversed: list `k` of the result holds every `j`
    /// whose list contains `k`, in ascending order. `keys` is the number of
    /// lists in the result.
    fn invert(&self, keys: usize) -> Lists {
        let mut starts = vec![0usize; keys + 1];
        for &item in &self.items {
            starts[item + 1] += 1;
        }
        for k in 0..keys {
            starts[k + 1] += starts[k];
        }
        let mut next = starts.clone();
        let mut items = vec![0usize; self.items.len()];
        for (j, list) in self.iter().enumerate() {
            for &item in list {
                items[next[item]] = j;
                next[item] += 1;
            }
        }
        Lists { starts, items }
    }
}

/// How a validated workflow's steps depend on each other, ready for a scheduler.
///
/// Steps are named by their index in [`Workflow::steps`].
///
/// ```
/// use std::path::Path;
/// use stepbox::workflow::Workflow;
///
/// let yaml = "name: w\nsteps:\n  - {id: a, component: a.wasm}\n  - {id: b, component: b.wasm, needs: a}\n";
/// let plan = Workflow::from_str(yaml, Path::new("w.yaml"))?.plan().clone();
/// assert_eq!(plan.levels().collect::<Vec<_>>(), [[0], [1]]);
/// assert_eq!(plan.needs(1), [0]);
/// assert_eq!(plan.dependents(0), [1]);
/// assert_eq!(plan.critical_path(), [0, 1]);
/// # Ok::<(), stepbox::workflow::WorkflowError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    levels: Lists,
    critical_path: Vec<usize>,
    needs: Lists,
    dependents: Lists,
}

impl Plan {
    /// Steps grouped by depth: level 0 has the steps with no needs, level
    /// `n + 1` the steps whose deepest need is in level `n`. Each level lists
    /// its steps in file order.
    pub fn levels(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        self.levels.iter()
    }

    /// How many levels there are: the length of the longest chain of steps.
    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// The longest chain of steps, first to last, by step count. Ties are
    /// broken by weight (each step weighs its timeout in milliseconds if one
    /// is set, else 1), then by file order: the chain whose last step comes
    /// first in the file, then the one whose step before it does, and so
    /// on back (whatever order each step's needs are written in).
    pub fn critical_path(&self) -> &[usize] {
        &self.critical_path
    }

    /// The steps `step` needs (deduplicated, in the order written).
    ///
    /// # Panics
    ///
    /// If `step` is not a step of the workflow.
    pub fn needs(&self, step: usize) -> &[usize] {
        self.needs.get(step)
    }

    /// The steps that need `step`, in file order.
    ///
    /// # Panics
    ///
    /// If `step` is not a step of the workflow.
    pub fn dependents(&self, step: usize) -> &[usize] {
        self.dependents.get(step)
    }

    /// A human summary: one line per level (`level 0: a, b`), then
    /// `critical path: a -> c -> d`.
    ///
    /// `workflow` must be the workflow this plan was made from.
    pub fn describe(&self, workflow: &Workflow) -> String {
        let id = |i: usize| &*workflow.steps[i].id;
        let mut out = String::new();
        for (n, level) in self.levels().enumerate() {
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
pub(crate) fn order(needs: Lists, weights: &[u64]) -> Ordered {
    let n = needs.len();
    let dependents = needs.invert(n);
    let mut missing: Vec<usize> = needs.iter().map(<[usize]>::len).collect();
    let mut levels = Lists::with_capacity(0, n);
    levels.items.extend((0..n).filter(|&i| missing[i] == 0));
    let mut level_start = 0;
    while level_start < levels.items.len() {
        let level_end = levels.items.len();
        levels.starts.push(level_end);
        for k in level_start..level_end {
            for &dependent in dependents.get(levels.items[k]) {
                missing[dependent] -= 1;
                if missing[dependent] == 0 {
                    levels.items.push(dependent);
                }
            }
        }
        levels.items[level_end..].sort_unstable();
        level_start = level_end;
    }
    if levels.items.len() < n {
        return Ordered::Cycle(find_cycle(&needs, &missing));
    }

    // Longest path by (count, weight), over steps in topological order.
    let mut best: Vec<(u64, u64, usize)> = vec![(0, 0, usize::MAX); n];
    for &step in &levels.items {
        let mut top = (0, 0, usize::MAX);
        for &need in needs.get(step) {
            let (count, weight, _) = best[need];
            // A tie goes to the need first in the file, whatever order the
            // needs are written in.
            if (count, weight, std::cmp::Reverse(need)) > (top.0, top.1, std::cmp::Reverse(top.2)) {
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
fn find_cycle(needs: &Lists, missing: &[usize]) -> Vec<usize> {
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
        step = needs
            .get(step)
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

    fn lists(needs: Vec<Vec<usize>>) -> Lists {
        let mut lists = Lists::with_capacity(needs.len(), 0);
        for list in needs {
            list.into_iter().for_each(|item| lists.push_item(item));
            lists.end_list();
        }
        lists
    }

    fn levels(plan: &Plan) -> Vec<Vec<usize>> {
        plan.levels().map(<[usize]>::to_vec).collect()
    }

    fn plan(needs: Vec<Vec<usize>>, weights: &[u64]) -> Plan {
        match order(lists(needs), weights) {
            Ordered::Plan(plan) => plan,
            Ordered::Cycle(cycle) => panic!("unexpected cycle {cycle:?}"),
        }
    }

    #[test]
    fn levels_group_steps_by_their_deepest_need() {
        // 0 -> 1 -> 3, 0 -> 2, 3 needs 1 and 2; 4 alone.
        let p = plan(vec![vec![], vec![0], vec![0], vec![1, 2], vec![]], &[1; 5]);
        assert_eq!(levels(&p), vec![vec![0, 4], vec![1, 2], vec![3]]);
        assert_eq!(p.dependents(0), [1, 2]);
        assert!(p.dependents(3).is_empty());
        assert_eq!(p.needs(3), [1, 2]);
        assert_eq!(p.critical_path(), [0, 1, 3]);
    }

    #[test]
    fn critical_path_ties_are_broken_by_weight() {
        let p = plan(vec![vec![], vec![0], vec![0], vec![1, 2]], &[1, 1, 500, 1]);
        assert_eq!(p.critical_path(), [0, 2, 3]);
    }

    #[test]
    fn critical_path_ties_go_to_the_step_first_in_the_file_whatever_the_order_of_needs() {
        // 2 needs 1 and 0, written in that order; both chains weigh the same.
        let p = plan(vec![vec![], vec![], vec![1, 0]], &[1; 3]);
        assert_eq!(p.critical_path(), [0, 2]);
        let p = plan(vec![vec![], vec![], vec![0, 1]], &[1; 3]);
        assert_eq!(p.critical_path(), [0, 2]);
    }

    #[test]
    fn a_cycle_is_reported_as_one_concrete_loop() {
        // 0 needs 2, 2 needs 1, 1 needs 0; 3 needs 0 (stuck, but not in the loop).
        let Ordered::Cycle(cycle) = order(lists(vec![vec![2], vec![0], vec![1], vec![0]]), &[1; 4]) else {
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
        assert_eq!(p.level_count(), n);
        assert_eq!(p.critical_path().len(), n);
    }

    mod proptests {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::*;

        /// A random DAG of `1..=max` steps written in a random file order:
        /// each step's needs (in a random written order, maybe repeated
        /// by the caller's dedup) point anywhere in the file, and weights.
        fn dag(max: usize) -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u64>)> {
            (1..=max)
                .prop_flat_map(|n| {
                    (
                        // In topological order, step t may need any step before it.
                        (0..n)
                            .map(|t| proptest::sample::subsequence((0..t).collect::<Vec<_>>(), 0..=t))
                            .collect::<Vec<_>>(),
                        Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                        // Few weights, so that chains often tie.
                        proptest::collection::vec(prop_oneof![1..3u64, 1..1_000u64], n),
                        any::<u64>(),
                    )
                })
                .prop_map(|(topo_needs, file_position, weights, seed)| {
                    let n = topo_needs.len();
                    let mut needs = vec![Vec::new(); n];
                    for (t, list) in topo_needs.into_iter().enumerate() {
                        let mut list: Vec<usize> = list.into_iter().map(|j| file_position[j]).collect();
                        // The order the needs are written in, independent of the file's.
                        let mut rng = seed.wrapping_add(t as u64);
                        for k in (1..list.len()).rev() {
                            rng = rng
                                .wrapping_mul(6_364_136_223_846_793_005)
                                .wrapping_add(1_442_695_040_888_963_407);
                            list.swap(k, (rng >> 33) as usize % (k + 1));
                        }
                        needs[file_position[t]] = list;
                    }
                    (needs, weights)
                })
        }

        /// Every chain of needs (first to last) that ends at `end`, the slow way.
        fn chains_to(needs: &[Vec<usize>], end: usize, out: &mut Vec<Vec<usize>>) {
            let mut stack = vec![vec![end]];
            while let Some(chain) = stack.pop() {
                let first = chain[0];
                if needs[first].is_empty() {
                    out.push(chain);
                    continue;
                }
                for &need in &needs[first] {
                    let mut longer = vec![need];
                    longer.extend(&chain);
                    stack.push(longer);
                }
            }
        }

        /// The critical path as documented: the longest chain by step count,
        /// then by total weight, then by file order (the chain whose last
        /// step comes first in the file, then the one whose step before it
        /// does, and so on back), found among every chain of the graph.
        fn reference_critical_path(needs: &[Vec<usize>], weights: &[u64]) -> Vec<usize> {
            let mut chains = Vec::new();
            for end in 0..needs.len() {
                chains_to(needs, end, &mut chains);
            }
            let key = |c: &Vec<usize>| (c.len(), c.iter().map(|&s| weights[s]).sum::<u64>());
            let best = chains.iter().map(key).max().unwrap();
            chains
                .into_iter()
                .filter(|c| key(c) == best)
                .min_by(|a, b| a.iter().rev().cmp(b.iter().rev()))
                .unwrap()
        }

        proptest! {
            #[test]
            fn every_step_is_at_a_later_level_than_each_of_its_needs((needs, weights) in dag(24)) {
                let p = plan(needs.clone(), &weights);
                let mut level = vec![usize::MAX; needs.len()];
                for (k, steps) in p.levels().enumerate() {
                    prop_assert!(!steps.is_empty());
                    prop_assert!(steps.windows(2).all(|w| w[0] < w[1]), "level {k} is not in file order");
                    for &s in steps {
                        prop_assert_eq!(level[s], usize::MAX, "step {} is in two levels", s);
                        level[s] = k;
                    }
                }
                for (s, list) in needs.iter().enumerate() {
                    prop_assert!(level[s] != usize::MAX, "step {} is in no level", s);
                    for &j in list {
                        prop_assert!(level[s] > level[j], "step {} is not after its need {}", s, j);
                    }
                    // And no later than it must be: one level after its deepest need.
                    let deepest = list.iter().map(|&j| level[j] + 1).max().unwrap_or(0);
                    prop_assert_eq!(level[s], deepest);
                    prop_assert_eq!(p.needs(s), &list[..]);
                    let dependents: Vec<usize> = (0..needs.len()).filter(|&d| needs[d].contains(&s)).collect();
                    prop_assert_eq!(p.dependents(s), &dependents[..]);
                }
            }

            #[test]
            fn the_critical_path_is_the_slow_references((needs, weights) in dag(11)) {
                let p = plan(needs.clone(), &weights);
                prop_assert_eq!(p.critical_path(), &reference_critical_path(&needs, &weights)[..]);
                prop_assert_eq!(p.critical_path().len(), p.level_count());
            }

            #[test]
            fn a_graph_with_a_loop_is_refused_with_one_of_its_loops(
                needs in (1..10usize).prop_flat_map(|n| {
                    proptest::collection::vec(proptest::sample::subsequence((0..n).collect::<Vec<_>>(), 0..=n.min(3)), n)
                }),
            ) {
                let n = needs.len();
                // Acyclic exactly when some order puts every need first (the slow way: peel sources).
                let mut left: HashSet<usize> = (0..n).collect();
                while let Some(&s) = left.iter().find(|&&s| needs[s].iter().all(|j| !left.contains(j))) {
                    left.remove(&s);
                }
                match order(lists(needs.clone()), &vec![1; n]) {
                    Ordered::Plan(_) => prop_assert!(left.is_empty(), "a cyclic graph was planned"),
                    Ordered::Cycle(cycle) => {
                        prop_assert!(!left.is_empty(), "an acyclic graph was refused");
                        prop_assert!(!cycle.is_empty());
                        let unique: HashSet<_> = cycle.iter().collect();
                        prop_assert_eq!(unique.len(), cycle.len());
                        for (k, &s) in cycle.iter().enumerate() {
                            let next = cycle[(k + 1) % cycle.len()];
                            prop_assert!(needs[s].contains(&next), "{} does not need {} in {:?}", s, next, cycle);
                        }
                        prop_assert_eq!(cycle[0], *cycle.iter().min().unwrap());
                    }
                }
            }
        }
    }
}
