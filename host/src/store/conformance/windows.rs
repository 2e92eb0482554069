//! Listings and counts over a window of acceptance times.

use super::{StoreUnderTest, accepted_for, ids, run_ended, workflow, write};
use crate::store::{Event, RunFilter, RunState, now_millis};

/// `since` and `until` bound listings by when runs were accepted, and
/// counts by state honour the tenant, workflow and window of a filter.
pub fn windows_bound_listings_and_counts_follow_filters(store: &dyn StoreUnderTest) {
    let lease = now_millis() + 60_000;
    let at = |run, tenant, accepted_at| {
        let mut event = accepted_for(run, lease, tenant, None);
        if let Event::RunAccepted { at, .. } = &mut event {
            *at = accepted_at;
        }
        event
    };
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            at(1, Some("acme"), 1_000),
            at(2, Some("acme"), 2_000),
            at(3, Some("zeta"), 3_000),
            at(4, Some("acme"), 4_000),
            run_ended(2, RunState::Failed, Some("boom")),
        ],
    );
    let reader = store.reader();
    let window = |since, until| RunFilter {
        since,
        until,
        ..RunFilter::default()
    };
    assert_eq!(ids(&*reader, &window(Some(2_000), None)), [4, 3, 2]);
    assert_eq!(ids(&*reader, &window(None, Some(3_000))), [2, 1]);
    assert_eq!(ids(&*reader, &window(Some(2_000), Some(4_000))), [3, 2]);
    let mut counts = reader
        .count_matching(&RunFilter {
            tenant: Some("acme".into()),
            ..RunFilter::default()
        })
        .unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(RunState::Accepted, 2), (RunState::Failed, 1)]);
    let recent = reader
        .count_matching(&RunFilter {
            tenant: Some("acme".into()),
            since: Some(2_000),
            workflow: Some("docs".into()),
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(recent.iter().map(|(_, n)| n).sum::<u64>(), 2);
    assert!(
        reader
            .count_matching(&RunFilter {
                workflow: Some("nope".into()),
                ..RunFilter::default()
            })
            .unwrap()
            .is_empty()
    );
}
