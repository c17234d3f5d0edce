//! Where HR data is kept: records, rules, plans and their step journals, what applies did
//! per employee, and connections. Traits that speak the domain, and one Table Storage
//! implementation: per tenant a partition (`record-*`, `applied-*`, `rules`,
//! `connection`, `import-commit`), per plan a partition (`plan`, `steps-*` chunks, `step-*`
//! journal), and per bulk import a staging partition (`rows-*` chunks) until it is in.

use std::collections::HashMap;

use async_trait::async_trait;
use tables::{Entity, IfMatch, Operation, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{AppliedStore, StepJournal, StepState};
use crate::connection::{Connection, DelegatedLink};
use crate::plan::{Applied, Plan, Step};
use crate::record::HrRecord;
use crate::rules::Rules;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum HrStoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] tables::Error),
    #[error("stored HR data is unreadable: {0}")]
    Corrupt(String),
}

impl From<tables::Error> for HrStoreError {
    fn from(e: tables::Error) -> HrStoreError {
        HrStoreError::Unavailable(e)
    }
}

/// HR records.
#[async_trait]
pub trait HrRecordStore: Send + Sync {
    /// Creates or replaces records (100 per transaction; repeating a call is harmless).
    /// Not atomic past 100 records: a bulk import goes through [`Self::import_records`].
    async fn put_records(&self, tenant: Uuid, records: &[HrRecord]) -> Result<(), HrStoreError>;
    /// Creates or replaces any number of records all or nothing: on `Ok` every record is
    /// the tenant's (those not copied in yet are copied by the next read); on an error
    /// none is, and the same records imported again (under any id) converge.
    async fn import_records(
        &self,
        tenant: Uuid,
        import: Uuid,
        records: &[HrRecord],
    ) -> Result<(), HrStoreError>;
    /// Every record of a tenant.
    async fn records(&self, tenant: Uuid) -> Result<Vec<HrRecord>, HrStoreError>;
    /// One record.
    async fn record(
        &self,
        tenant: Uuid,
        employee_id: &str,
    ) -> Result<Option<HrRecord>, HrStoreError>;
}

/// Rules, plans and connections.
#[async_trait]
pub trait HrSettingsStore: Send + Sync {
    async fn rules(&self, tenant: Uuid) -> Result<Option<Rules>, HrStoreError>;
    async fn put_rules(&self, tenant: Uuid, rules: &Rules) -> Result<(), HrStoreError>;
    async fn save_plan(&self, plan: &Plan) -> Result<(), HrStoreError>;
    async fn plan(&self, tenant: Uuid, id: Uuid) -> Result<Option<Plan>, HrStoreError>;
    async fn connection(&self, tenant: Uuid) -> Result<Option<Connection>, HrStoreError>;
    async fn put_connection(&self, connection: &Connection) -> Result<(), HrStoreError>;
    /// False when there was none.
    async fn delete_connection(&self, tenant: Uuid) -> Result<bool, HrStoreError>;
    /// Records a call's outcome on the connection (when it still exists).
    async fn note_outcome(&self, tenant: Uuid, error: Option<String>) -> Result<(), HrStoreError>;
    /// Tenants with a connection.
    async fn connected_tenants(&self) -> Result<Vec<Uuid>, HrStoreError>;
    /// Keeps a delegated link in progress under the hash of its state.
    async fn put_link(&self, state_hash: &str, link: &DelegatedLink) -> Result<(), HrStoreError>;
    /// Takes a link: it is gone afterwards, so a state works once.
    async fn take_link(&self, state_hash: &str) -> Result<Option<DelegatedLink>, HrStoreError>;
}

/// The row whose existence commits an import: while it is there, the staged records it
/// names are the tenant's, and every read or write of records copies them in first.
const IMPORT_COMMIT: &str = "import-commit";

/// Records per staged row of an import (a string property holds 64 KiB).
const RECORDS_PER_ROW: usize = 40;

/// A committed import.
#[derive(serde::Serialize, serde::Deserialize)]
struct ImportCommit {
    import_id: Uuid,
    /// Staged rows, to tell a staging partition read whole from one read short.
    rows: usize,
}

fn import_partition(tenant: Uuid, import: Uuid) -> String {
    format!("import-{tenant}-{import}")
}

/// The partition of delegated links in progress.
const LINKS: &str = "delegated-links";

/// Steps per stored chunk row (a string property holds 64 KiB).
const STEPS_PER_ROW: usize = 40;

/// All of the above on one table.
pub struct TableHrStore {
    table: Table,
}

fn record_key(employee_id: &str) -> String {
    format!("record-{}", tables::key::encode(employee_id))
}

fn applied_key(employee_id: &str) -> String {
    format!("applied-{}", tables::key::encode(employee_id))
}

fn plan_partition(tenant: Uuid, plan: Uuid) -> String {
    format!("plan-{tenant}-{plan}")
}

fn json_of(e: &Entity) -> Result<&str, HrStoreError> {
    e.get_str("Json")
        .ok_or_else(|| HrStoreError::Corrupt(format!("{} without Json", e.row_key)))
}

fn parse<T: serde::de::DeserializeOwned>(e: &Entity) -> Result<T, HrStoreError> {
    serde_json::from_str(json_of(e)?)
        .map_err(|err| HrStoreError::Corrupt(format!("{}: {err}", e.row_key)))
}

fn row(
    partition: impl Into<String>,
    key: impl Into<String>,
    value: &impl serde::Serialize,
) -> Entity {
    Entity::new(partition, key).with("Json", serde_json::to_string(value).expect("serializes"))
}

fn prefix(partition: &str, prefix: &str) -> Query {
    let lit = |s: &str| tables::Value::from(s).filter_literal();
    // the next character after '-' ends the prefix range
    let end = format!("{}.", prefix.trim_end_matches('-'));
    Query::filter(format!(
        "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
        lit(partition),
        lit(prefix),
        lit(&end)
    ))
}

impl TableHrStore {
    /// The store on `table`.
    pub fn new(table: Table) -> TableHrStore {
        TableHrStore { table }
    }

    /// Copies a committed import's staged records in, then drops the commit (and the
    /// staged rows, best effort). Nothing to do without a commit. Copying is idempotent:
    /// finishers racing write the same records.
    async fn finish_import(&self, tenant: Uuid) -> Result<(), HrStoreError> {
        let pk = tenant.to_string();
        let Some(commit_row) = self.table.try_get(&pk, IMPORT_COMMIT).await? else {
            return Ok(());
        };
        let commit: ImportCommit = parse(&commit_row)?;
        let staging = import_partition(tenant, commit.import_id);
        let staged = self.table.query_all(prefix(&staging, "rows-")).await?;
        if staged.len() != commit.rows {
            // a concurrent finisher may have dropped the staged rows after copying them
            let now = self.table.try_get(&pk, IMPORT_COMMIT).await?;
            if now.is_none_or(|e| {
                parse::<ImportCommit>(&e).ok().map(|c| c.import_id) != Some(commit.import_id)
            }) {
                return Ok(());
            }
            return Err(HrStoreError::Corrupt(format!(
                "import {} committed {} staged rows, {} found",
                commit.import_id,
                commit.rows,
                staged.len()
            )));
        }
        let mut ops = Vec::new();
        for e in &staged {
            let records: Vec<HrRecord> = parse(e)?;
            ops.extend(
                records.iter().map(|r| {
                    Operation::UpsertReplace(row(pk.clone(), record_key(&r.employee_id), r))
                }),
            );
        }
        self.table.transact_chunked(ops).await?;
        let etag = commit_row
            .etag
            .clone()
            .map(IfMatch::ETag)
            .unwrap_or(IfMatch::Any);
        match self.table.delete(&pk, IMPORT_COMMIT, etag).await {
            Ok(_) => {}
            // finished by a concurrent reader, or a newer import committed after it
            Err(e) if e.is_not_found() || e.is_precondition_failed() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let drops = staged
            .iter()
            .map(|e| Operation::Delete {
                partition_key: e.partition_key.clone(),
                row_key: e.row_key.clone(),
                if_match: IfMatch::Any,
            })
            .collect();
        if let Err(e) = self.table.transact_chunked(drops).await {
            tracing::warn!(%tenant, import = %commit.import_id, error = %e, "a finished import's staged rows were left");
        }
        Ok(())
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        pk: &str,
        rk: &str,
    ) -> Result<Option<T>, HrStoreError> {
        match self.table.try_get(pk, rk).await? {
            Some(e) => parse(&e).map(Some),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl HrRecordStore for TableHrStore {
    async fn put_records(&self, tenant: Uuid, records: &[HrRecord]) -> Result<(), HrStoreError> {
        // an import committed before this write is older: it goes in first
        self.finish_import(tenant).await?;
        let pk = tenant.to_string();
        let ops = records
            .iter()
            .map(|r| Operation::UpsertReplace(row(pk.clone(), record_key(&r.employee_id), r)))
            .collect();
        self.table.transact_chunked(ops).await?;
        Ok(())
    }

    async fn import_records(
        &self,
        tenant: Uuid,
        import: Uuid,
        records: &[HrRecord],
    ) -> Result<(), HrStoreError> {
        // staged apart, where no read looks: a failure here leaves the records as they were
        let staging = import_partition(tenant, import);
        let ops: Vec<Operation> = records
            .chunks(RECORDS_PER_ROW)
            .enumerate()
            .map(|(i, chunk)| {
                Operation::UpsertReplace(row(staging.clone(), format!("rows-{i:06}"), &chunk))
            })
            .collect();
        let rows = ops.len();
        self.table.transact_chunked(ops).await?;
        // the commit: one row, so the import is in whole or not at all; an earlier commit
        // not copied in yet goes first (a commit never replaces one)
        let commit = row(
            tenant.to_string(),
            IMPORT_COMMIT,
            &ImportCommit {
                import_id: import,
                rows,
            },
        );
        let mut tries = 0;
        loop {
            match self.table.insert(&commit).await {
                Ok(_) => break,
                Err(e) if e.is_conflict() && tries < 3 => {
                    tries += 1;
                    self.finish_import(tenant).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // committed: a failure copying in is finished by the next read or write of records
        if let Err(e) = self.finish_import(tenant).await {
            tracing::warn!(%tenant, %import, error = %e, "an import is committed; its records are copied in by the next read");
        }
        Ok(())
    }

    async fn records(&self, tenant: Uuid) -> Result<Vec<HrRecord>, HrStoreError> {
        self.finish_import(tenant).await?;
        self.table
            .query_all(prefix(&tenant.to_string(), "record-"))
            .await?
            .iter()
            .map(parse)
            .collect()
    }

    async fn record(
        &self,
        tenant: Uuid,
        employee_id: &str,
    ) -> Result<Option<HrRecord>, HrStoreError> {
        self.finish_import(tenant).await?;
        self.get(&tenant.to_string(), &record_key(employee_id))
            .await
    }
}

#[async_trait]
impl HrSettingsStore for TableHrStore {
    async fn rules(&self, tenant: Uuid) -> Result<Option<Rules>, HrStoreError> {
        self.get(&tenant.to_string(), "rules").await
    }

    async fn put_rules(&self, tenant: Uuid, rules: &Rules) -> Result<(), HrStoreError> {
        self.table
            .upsert_replace(&row(tenant.to_string(), "rules", rules))
            .await?;
        Ok(())
    }

    async fn save_plan(&self, plan: &Plan) -> Result<(), HrStoreError> {
        let pk = plan_partition(plan.tenant_id, plan.id);
        let mut header = plan.clone();
        header.steps = Vec::new();
        let mut ops: Vec<Operation> = plan
            .steps
            .chunks(STEPS_PER_ROW)
            .enumerate()
            .map(|(i, chunk)| Operation::Insert(row(pk.clone(), format!("steps-{i:06}"), &chunk)))
            .collect();
        // the header last: a plan without it was never saved whole and is not found
        ops.push(Operation::Insert(row(pk.clone(), "plan", &header)));
        self.table.transact_chunked(ops).await?;
        Ok(())
    }

    async fn plan(&self, tenant: Uuid, id: Uuid) -> Result<Option<Plan>, HrStoreError> {
        let pk = plan_partition(tenant, id);
        let Some(mut plan) = self.get::<Plan>(&pk, "plan").await? else {
            return Ok(None);
        };
        for e in self.table.query_all(prefix(&pk, "steps-")).await? {
            let steps: Vec<Step> = parse(&e)?;
            plan.steps.extend(steps);
        }
        plan.steps.sort_by_key(|s| s.index);
        Ok(Some(plan))
    }

    async fn connection(&self, tenant: Uuid) -> Result<Option<Connection>, HrStoreError> {
        self.get(&tenant.to_string(), "connection").await
    }

    async fn put_connection(&self, connection: &Connection) -> Result<(), HrStoreError> {
        self.table
            .upsert_replace(&row(
                connection.tenant_id.to_string(),
                "connection",
                connection,
            ))
            .await?;
        Ok(())
    }

    async fn delete_connection(&self, tenant: Uuid) -> Result<bool, HrStoreError> {
        match self
            .table
            .delete(&tenant.to_string(), "connection", IfMatch::Any)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn note_outcome(&self, tenant: Uuid, error: Option<String>) -> Result<(), HrStoreError> {
        let pk = tenant.to_string();
        let Some(e) = self.table.try_get(&pk, "connection").await? else {
            return Ok(());
        };
        let mut c: Connection = parse(&e)?;
        match error {
            None => c.last_success = Some(OffsetDateTime::now_utc()),
            Some(why) => c.last_error = Some(why),
        }
        let etag = e.etag.clone().map(IfMatch::ETag).unwrap_or(IfMatch::Any);
        match self.table.replace(&row(pk, "connection", &c), etag).await {
            // a concurrent change (relinked, removed) wins over a note
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn connected_tenants(&self) -> Result<Vec<Uuid>, HrStoreError> {
        let rows = self
            .table
            .query_all(Query {
                select: Some(vec!["PartitionKey".into()]),
                ..Query::filter("RowKey eq 'connection'")
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|e| Uuid::try_parse(&e.partition_key).ok())
            .collect())
    }

    async fn put_link(&self, state_hash: &str, link: &DelegatedLink) -> Result<(), HrStoreError> {
        self.table.insert(&row(LINKS, state_hash, link)).await?;
        Ok(())
    }

    async fn take_link(&self, state_hash: &str) -> Result<Option<DelegatedLink>, HrStoreError> {
        let Some(e) = self.table.try_get(LINKS, state_hash).await? else {
            return Ok(None);
        };
        let etag = e.etag.clone().map(IfMatch::ETag).unwrap_or(IfMatch::Any);
        match self.table.delete(LINKS, state_hash, etag).await {
            Ok(_) => parse(&e).map(Some),
            // taken by a concurrent callback
            Err(err) if err.is_not_found() || err.is_precondition_failed() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

#[async_trait]
impl StepJournal for TableHrStore {
    async fn states(
        &self,
        tenant: Uuid,
        plan: Uuid,
    ) -> Result<HashMap<usize, StepState>, HrStoreError> {
        let pk = plan_partition(tenant, plan);
        let mut out = HashMap::new();
        for e in self.table.query_all(prefix(&pk, "step-")).await? {
            let index = e
                .row_key
                .strip_prefix("step-")
                .and_then(|i| i.parse().ok())
                .ok_or_else(|| HrStoreError::Corrupt(e.row_key.clone()))?;
            out.insert(index, parse(&e)?);
        }
        Ok(out)
    }

    async fn record_states(
        &self,
        tenant: Uuid,
        plan: Uuid,
        states: &[(usize, StepState)],
    ) -> Result<(), HrStoreError> {
        let pk = plan_partition(tenant, plan);
        let ops = states
            .iter()
            .map(|(i, s)| Operation::UpsertReplace(row(pk.clone(), format!("step-{i:06}"), s)))
            .collect();
        self.table.transact_chunked(ops).await?;
        Ok(())
    }
}

#[async_trait]
impl AppliedStore for TableHrStore {
    async fn applied(&self, tenant: Uuid) -> Result<HashMap<String, Applied>, HrStoreError> {
        let mut out = HashMap::new();
        for e in self
            .table
            .query_all(prefix(&tenant.to_string(), "applied-"))
            .await?
        {
            let key = e.row_key.strip_prefix("applied-").unwrap_or_default();
            let id =
                tables::key::decode(key).map_err(|_| HrStoreError::Corrupt(e.row_key.clone()))?;
            out.insert(id, parse(&e)?);
        }
        Ok(out)
    }

    async fn record_applied(
        &self,
        tenant: Uuid,
        entries: &[(String, Applied)],
    ) -> Result<(), HrStoreError> {
        let pk = tenant.to_string();
        let ops = entries
            .iter()
            .map(|(id, a)| Operation::UpsertReplace(row(pk.clone(), applied_key(id), a)))
            .collect();
        self.table.transact_chunked(ops).await?;
        Ok(())
    }
}
