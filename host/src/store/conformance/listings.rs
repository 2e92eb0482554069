//! Listings: by status, workflow, tenant and acceptance time, a page at a
//! time, and counts by state.

use super::{StoreUnderTest, accepted, accepted_for, ids, run_ended, status, workflow, write};
use crate::store::{Event, RunFilter, RunId, RunState, now_millis};

/// Listings filter by status and by workflow name, newest first, at most
/// `limit`.
pub fn listings_filter_by_status_and_workflow_newest_first(store: &dyn StoreUnderTest) {
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            accepted(1),
            accepted(2),
            accepted(3),
            run_ended(1, RunState::Failed, Some("boom")),
            run_ended(3, RunState::Cancelled, None),
        ],
    );
    let reader = store.reader();
    let failed = reader.runs(&status(RunState::Failed)).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].id, failed[0].error.as_deref()), (1, Some("boom")));
    let either = RunFilter {
        status: vec![RunState::Failed, RunState::Accepted],
        ..RunFilter::default()
    };
    assert_eq!(ids(&*reader, &either), [2, 1]);
    assert_eq!(ids(&*reader, &RunFilter::default()), [3, 2, 1], "newest first");
    let newest = RunFilter {
        workflow: Some("docs".into()),
        limit: Some(1),
        ..RunFilter::default()
    };
    assert_eq!(ids(&*reader, &newest), [3]);
    let none = RunFilter {
        workflow: Some("nope".into()),
        ..RunFilter::default()
    };
    assert!(ids(&*reader, &none).is_empty());
}

/// A run accepted for a tenant lists under that tenant only; `before`
/// pages through older runs; an idempotency key finds the first run
/// accepted with it, within its tenant only, also after a restart.
pub fn tenants_and_pages_filter_listings_and_keys_find_runs(store: &dyn StoreUnderTest) {
    let lease = now_millis() + 60_000;
    let of = |run: RunId, tenant, key| accepted_for(run, lease, tenant, key);
    let mut writer = store.writer();
    write(
        &mut *writer,
        "a",
        &[
            Event::WorkflowDefined(workflow()),
            of(1, Some("acme"), Some("k1")),
            of(2, Some("zeta"), Some("k1")),
            of(3, None, Some("k1")),
            of(4, Some("acme"), None),
            of(5, Some("acme"), Some("k2")),
        ],
    );
    drop(writer);
    drop(store.writer());
    let reader = store.reader();
    let acme = |before: Option<RunId>, limit: Option<usize>| RunFilter {
        tenant: Some("acme".into()),
        before,
        limit,
        ..RunFilter::default()
    };
    assert_eq!(ids(&*reader, &acme(None, None)), [5, 4, 1]);
    assert_eq!(ids(&*reader, &acme(None, Some(2))), [5, 4], "first page");
    assert_eq!(
        ids(&*reader, &acme(Some(4), Some(2))),
        [1],
        "the page after run 4"
    );
    let runs = reader.runs(&acme(None, Some(1))).unwrap();
    assert_eq!(runs[0].tenant.as_deref(), Some("acme"));
    assert_eq!(
        ids(&*reader, &RunFilter::default()),
        [5, 4, 3, 2, 1],
        "no filter: every tenant"
    );
    let key = |tenant, key| reader.run_by_key(tenant, key).unwrap();
    assert_eq!(key(Some("acme"), "k1"), Some(1));
    assert_eq!(key(Some("zeta"), "k1"), Some(2), "keys are per tenant");
    assert_eq!(key(None, "k1"), Some(3), "no tenant is a tenant of its own");
    assert_eq!(key(Some("acme"), "k2"), Some(5));
    assert_eq!(key(Some("zeta"), "k2"), None, "another tenant's key is not found");
    assert_eq!(key(Some("acme"), "k3"), None);
    assert_eq!(
        reader.history(2).unwrap().unwrap().summary.tenant.as_deref(),
        Some("zeta")
    );

    // A tenant's unfinished runs are counted, its finished ones not.
    let unfinished = |tenant| reader.unfinished_runs_of(tenant).unwrap();
    assert_eq!(
        (unfinished("acme"), unfinished("zeta"), unfinished("nobody")),
        (3, 1, 0)
    );
    let mut writer = store.writer();
    write(&mut *writer, "a", &[run_ended(4, RunState::Succeeded, None)]);
    assert_eq!(unfinished("acme"), 2);
    // A claimed run says whose it is, for that tenant's quota on the host
    // that claims it.
    let claimed = writer.claim_incomplete("a", lease).unwrap();
    let tenants: Vec<(RunId, Option<&str>)> = claimed.iter().map(|r| (r.id, r.tenant.as_deref())).collect();
    assert_eq!(
        tenants,
        [(1, Some("acme")), (2, Some("zeta")), (3, None), (5, Some("acme"))]
    );
}

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
