//! The database's layout, its format version, and the migration that lays
//! it out: embedded, run by the first writer to open the database, under a
//! lock so that hosts starting at once do not race.

use postgres::Client;

/// The newest layout this build reads and writes.
pub(super) const FORMAT: i64 = 3;

/// Serialises layout changes between hosts starting at once (an advisory
/// lock key: "stepbox" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_7465_7062_6f78;

/// The tables of format 1. Integers are `BIGINT` throughout: journal
/// times are milliseconds, and unsigned Rust values are stored as `i64`.
const FORMAT_1: &str = "
CREATE TABLE workflows (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE components (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    bytes BYTEA NOT NULL
);
CREATE TABLE workflow_components (
    workflow TEXT NOT NULL,
    position BIGINT NOT NULL,
    component TEXT NOT NULL,
    PRIMARY KEY (workflow, position)
);
CREATE TABLE runs (
    id BIGINT PRIMARY KEY,
    workflow TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input BYTEA,
    output BYTEA,
    error TEXT,
    accepted_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    owner TEXT,
    lease_until BIGINT,
    collected BOOLEAN NOT NULL DEFAULT FALSE,
    tenant TEXT,
    submission_key TEXT
);
CREATE INDEX runs_unfinished ON runs (id) WHERE finished_at IS NULL;
CREATE INDEX runs_owned ON runs (owner) WHERE finished_at IS NULL;
CREATE INDEX runs_key ON runs (tenant, submission_key) WHERE submission_key IS NOT NULL;
CREATE TABLE attempts (
    run BIGINT NOT NULL,
    step TEXT NOT NULL,
    item BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    status TEXT NOT NULL,
    last BOOLEAN NOT NULL DEFAULT FALSE,
    outcome TEXT,
    message TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    duration_us BIGINT NOT NULL DEFAULT 0,
    queue_wait_us BIGINT NOT NULL DEFAULT 0,
    fuel BIGINT NOT NULL DEFAULT 0,
    peak_memory BIGINT NOT NULL DEFAULT 0,
    output BYTEA,
    log TEXT,
    component TEXT,
    fuel_limit BIGINT NOT NULL DEFAULT 0,
    memory_limit BIGINT NOT NULL DEFAULT 0,
    time_limit_us BIGINT NOT NULL DEFAULT 0,
    started_us BIGINT NOT NULL DEFAULT 0,
    peak_scratch BIGINT NOT NULL DEFAULT 0,
    scratch_limit BIGINT NOT NULL DEFAULT 0,
    timeout_level TEXT,
    PRIMARY KEY (run, step, item, attempt)
);
CREATE INDEX attempts_finished ON attempts (finished_at);
CREATE TABLE state (
    run BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run, key)
);
CREATE TABLE hosts (
    owner TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
CREATE TABLE run_ids (
    only_row BIGINT PRIMARY KEY CHECK (only_row = 1),
    next BIGINT NOT NULL
);
INSERT INTO run_ids (only_row, next) VALUES (1, 1);
";

/// Format 2: a run's lease is its owner's heartbeat row in `hosts` (one
/// row per host, renewed in one statement whatever the host runs), not a
/// column of every run; runs no host owns are queued for any host to
/// claim, found by their own index; a claim marks the rows it takes (so
/// that it can be run again when its answer is lost). A format 1
/// database's owners get a
/// `hosts` row holding their runs' latest lease, so that nothing live is
/// taken for dead on the upgrade.
const FORMAT_2: &str = "
INSERT INTO hosts (owner, heartbeat_at, lease_until)
    SELECT owner, 0, max(coalesce(lease_until, 0)) FROM runs
    WHERE finished_at IS NULL AND owner IS NOT NULL GROUP BY owner
    ON CONFLICT (owner) DO UPDATE SET lease_until = greatest(hosts.lease_until, excluded.lease_until);
UPDATE runs SET lease_until = NULL WHERE lease_until IS NOT NULL;
CREATE INDEX runs_queued ON runs (id) WHERE owner IS NULL AND finished_at IS NULL;
ALTER TABLE runs ADD COLUMN claim BIGINT;
";

/// Format 3: what tenants upload to servers, so that every host sharing
/// the database serves every tenant's workflows. A workflow's version comes
/// from a sequence: it only grows, whichever host takes an upload.
const FORMAT_3: &str = "
CREATE TABLE uploaded_components (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest)
);
CREATE SEQUENCE uploaded_workflow_versions;
CREATE TABLE uploaded_workflows (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    json BOOLEAN NOT NULL,
    version BIGINT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
";

/// What the database holds: the format it is in (0 when it has no
/// stepbox tables yet).
pub(super) fn version(client: &mut Client) -> Result<i64, postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('stepbox_format') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client.query_opt("SELECT version FROM stepbox_format", &[])?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Lays out a database with no stepbox tables, brings an older layout up
/// to [`FORMAT`], leaves one at [`FORMAT`] (or newer) alone. Returns the format the database is in afterwards.
pub(super) fn migrate(client: &mut Client) -> Result<i64, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS stepbox_format (version BIGINT NOT NULL)")?;
    let current: i64 = tx
        .query_opt("SELECT version FROM stepbox_format", &[])?
        .map_or(0, |r| r.get(0));
    if current == 0 {
        tx.batch_execute(FORMAT_1)?;
        tx.execute("INSERT INTO stepbox_format (version) VALUES (1)", &[])?;
    }
    if current < 2 {
        tx.batch_execute(FORMAT_2)?;
        tx.execute("UPDATE stepbox_format SET version = 2", &[])?;
    }
    if current < 3 {
        tx.batch_execute(FORMAT_3)?;
        tx.execute("UPDATE stepbox_format SET version = 3", &[])?;
    }
    tx.commit()?;
    Ok(current.max(FORMAT))
}
