//! What tenants upload to servers, in the database every host shares.

use postgres::Client;

use crate::store::{StoredWorkflow, now_millis};

type Res<T> = Result<T, postgres::Error>;

/// Keeps a component; true if the tenant did not have it. Two hosts
/// taking one upload at once both succeed: the bytes are the same.
pub(super) fn put_component(c: &mut Client, tenant: &str, digest: &str, bytes: &[u8]) -> Res<bool> {
    let inserted = c.execute(
        "INSERT INTO uploaded_components (tenant, digest, bytes, uploaded_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant, digest) DO NOTHING",
        &[&tenant, &digest, &bytes, &now_millis()],
    )?;
    Ok(inserted == 1)
}

pub(super) fn component(c: &mut Client, tenant: &str, digest: &str) -> Res<Option<Vec<u8>>> {
    let row = c.query_opt(
        "SELECT bytes FROM uploaded_components WHERE tenant = $1 AND digest = $2",
        &[&tenant, &digest],
    )?;
    Ok(row.map(|r| r.get(0)))
}

/// Keeps a workflow, replacing the one of its name; its new version.
pub(super) fn put_workflow(c: &mut Client, tenant: &str, name: &str, text: &str, json: bool) -> Res<i64> {
    let row = c.query_one(
        "INSERT INTO uploaded_workflows (tenant, name, text, json, version, uploaded_at)
         VALUES ($1, $2, $3, $4, nextval('uploaded_workflow_versions'), $5)
         ON CONFLICT (tenant, name) DO UPDATE
         SET text = excluded.text, json = excluded.json, version = excluded.version,
             uploaded_at = excluded.uploaded_at
         RETURNING version",
        &[&tenant, &name, &text, &json, &now_millis()],
    )?;
    Ok(row.get(0))
}

pub(super) fn workflow(c: &mut Client, tenant: &str, name: &str) -> Res<Option<StoredWorkflow>> {
    let row = c.query_opt(
        "SELECT text, json, version FROM uploaded_workflows WHERE tenant = $1 AND name = $2",
        &[&tenant, &name],
    )?;
    Ok(row.map(|r| StoredWorkflow {
        text: r.get(0),
        json: r.get(1),
        version: r.get(2),
    }))
}

pub(super) fn workflow_version(c: &mut Client, tenant: &str, name: &str) -> Res<Option<i64>> {
    let row = c.query_opt(
        "SELECT version FROM uploaded_workflows WHERE tenant = $1 AND name = $2",
        &[&tenant, &name],
    )?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) fn workflow_names(c: &mut Client, tenant: &str) -> Res<Vec<String>> {
    let rows = c.query(
        "SELECT name FROM uploaded_workflows WHERE tenant = $1 ORDER BY name",
        &[&tenant],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
