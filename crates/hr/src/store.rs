//! Where HR data is kept: records, rules, plans and their step journals, what applies did
//! per employee, and connections. Traits that speak the domain, and one Table Storage
//! implementation: per tenant a partition (`record-*`, `applied-*`, `rules`,
//! `connection`, `import-commit`), per plan a partition (`plan`, `steps-*`, `waiting-*` and
//! `skipped-*` chunks, `step-*` journal), and per bulk import a staging partition (`rows-*`
//! chunks) until it is in.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tables::{Entity, IfMatch, Operation, Query, Table};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{AppliedStore, StepJournal, StepState};
use crate::connection::{Connection, DelegatedLink};
use crate::plan::{Applied, Plan, Skipped, Step, Waiting};
use crate::record::HrRecord;
use crate::rules::Rules;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum HrStoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] tables::Error),
    #[error("stored HR data is unreadable: {0}")]
    Corrupt(String),
    /// Larger than Table Storage keeps (a record past 32K characters of JSON): sending it
    /// again cannot work, it must be made smaller.
    #[error("too large to store: {0}")]
    TooLarge(String),
    /// Another instance is copying an import in and did not finish in time.
    #[error("busy: {0}")]
    Busy(String),
}

impl From<tables::Error> for HrStoreError {
    fn from(e: tables::Error) -> HrStoreError {
        fn too_large(e: &tables::Error) -> bool {
            match e {
                tables::Error::TooLarge(_) => true,
                tables::Error::Rejected { status: 413, .. } => true,
                tables::Error::Batch { source, .. } => too_large(source),
                _ => false,
            }
        }
        if too_large(&e) {
            return HrStoreError::TooLarge(e.to_string());
        }
        HrStoreError::Unavailable(e)
    }
}

/// HR records.
#[async_trait]
pub trait HrRecordStore: Send + Sync {
    /// Creates or replaces records (up to 100 per transaction; repeating a call is
    /// harmless), after any committed import is in. Not atomic past one transaction: a
    /// bulk import goes through [`Self::import_records`].
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

/// The property of a record row naming the import it was copied from (none: written by
/// `put_records`), so a finisher taking over a copy skips what is in already.
const FROM_IMPORT: &str = "Import";

/// How long a finisher's claim on a commit holds without renewal: another finisher waits
/// for it that long before taking over.
const LEASE: Duration = Duration::from_secs(30);
/// A claim is renewed between transactions once this much of it has passed.
const RENEW_AFTER: Duration = Duration::from_secs(10);
/// How often a waiter looks whether the finisher is done.
const POLL: Duration = Duration::from_millis(200);
/// The longest a read or write of records waits for another finisher.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// A committed import.
#[derive(serde::Serialize, serde::Deserialize)]
struct ImportCommit {
    import_id: Uuid,
    /// Staged rows, to tell a staging partition read whole from one read short.
    rows: usize,
    /// When the commit was written: the Timestamp of the row as inserted, kept here by the
    /// first claim (a claim rewrites the row). A record row written at or after it is
    /// newer than the import and is not copied over.
    #[serde(default, with = "time::serde::rfc3339::option")]
    committed_at: Option<OffsetDateTime>,
    /// The finisher copying it, by call, and until when its claim holds.
    #[serde(default)]
    owner: Option<Uuid>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    lease_until: Option<OffsetDateTime>,
}

/// How a finisher's copy ended.
enum CopyEnd {
    /// Copied in and the commit dropped (by it or a concurrent finisher).
    Done,
    /// Its claim lapsed and another finisher took the commit over: wait for that one.
    Lost,
}

/// Chunk rows of `items`: JSON arrays packed up to what one string property holds (32K
/// UTF-16 units), so records of several positions or long steps never overflow a row.
/// `name` says which item is too large for any row.
fn packed_rows<T: serde::Serialize>(
    items: &[T],
    name: impl Fn(&T) -> String,
) -> Result<Vec<String>, HrStoreError> {
    let max = tables::entity::MAX_STRING_UTF16;
    let mut rows = Vec::new();
    let mut row = String::from("[");
    let mut units = 1;
    for item in items {
        let json = serde_json::to_string(item).expect("serializes");
        let n = json.encode_utf16().count();
        if n + 2 > max {
            return Err(HrStoreError::TooLarge(format!(
                "{} is {n} characters as JSON; at most {} are kept",
                name(item),
                max - 2
            )));
        }
        // a comma before it unless first, and the closing bracket after
        if units > 1 && units + 1 + n + 1 > max {
            row.push(']');
            rows.push(std::mem::replace(&mut row, String::from("[")));
            units = 1;
        }
        if units > 1 {
            row.push(',');
            units += 1;
        }
        row.push_str(&json);
        units += n;
    }
    if units > 1 {
        row.push(']');
        rows.push(row);
    }
    Ok(rows)
}

fn if_match(e: &Entity) -> IfMatch {
    e.etag.clone().map(IfMatch::ETag).unwrap_or(IfMatch::Any)
}

fn import_partition(tenant: Uuid, import: Uuid) -> String {
    format!("import-{tenant}-{import}")
}

/// The partition of delegated links in progress.
const LINKS: &str = "delegated-links";

/// All of the above on one table.
pub struct TableHrStore {
    table: Table,
    /// A pause after claiming an import's commit, before copying (tests only).
    copy_pause: Option<Duration>,
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
        TableHrStore {
            table,
            copy_pause: None,
        }
    }

    /// The same store pausing `pause` after it claims an import's commit and before it
    /// copies (for tests of concurrent writes; never set in the service).
    #[doc(hidden)]
    pub fn with_copy_pause(mut self, pause: Duration) -> TableHrStore {
        self.copy_pause = Some(pause);
        self
    }

    /// Copies a committed import's staged records in, then drops the commit (and the
    /// staged rows, best effort). Nothing to do without a commit. One finisher copies: it
    /// claims the commit row (ETag-guarded, with a lease it renews); others wait until the
    /// row is gone, or take over when the lease lapses. A record row written after the
    /// commit (a `put_records` that did not see it) is newer and is kept.
    async fn finish_import(&self, tenant: Uuid) -> Result<(), HrStoreError> {
        let pk = tenant.to_string();
        let me = Uuid::new_v4();
        let started = Instant::now();
        loop {
            let Some(commit_row) = self.table.try_get(&pk, IMPORT_COMMIT).await? else {
                return Ok(());
            };
            let mut commit: ImportCommit = parse(&commit_row)?;
            let now = OffsetDateTime::now_utc();
            if commit.owner.is_some() && commit.lease_until.is_some_and(|t| t > now) {
                // another finisher is copying: its records must be in before ours are read
                // or written
                if started.elapsed() > MAX_WAIT {
                    return Err(HrStoreError::Busy(format!(
                        "import {} is still being copied in",
                        commit.import_id
                    )));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            if commit.committed_at.is_none() {
                commit.committed_at = commit_row.timestamp;
            }
            commit.owner = Some(me);
            commit.lease_until = Some(now + LEASE);
            let claimed = self
                .table
                .replace(
                    &row(pk.clone(), IMPORT_COMMIT, &commit),
                    if_match(&commit_row),
                )
                .await;
            let mut lease = match claimed {
                Ok(etag) => etag,
                // claimed or finished by a concurrent finisher: look again
                Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            match self.copy_import(tenant, &mut commit, &mut lease).await {
                Ok(CopyEnd::Done) => return Ok(()),
                Ok(CopyEnd::Lost) => continue,
                Err(e) => {
                    // the claim goes, so the next read or write takes over at once rather
                    // than waiting out the lease (best effort: else it lapses)
                    commit.owner = None;
                    commit.lease_until = None;
                    self.table
                        .replace(
                            &row(pk.clone(), IMPORT_COMMIT, &commit),
                            IfMatch::ETag(lease),
                        )
                        .await
                        .ok();
                    return Err(e);
                }
            }
        }
    }

    /// The copy of a commit this call has claimed (`lease`: the claimed row's ETag, kept
    /// current as the claim is renewed).
    async fn copy_import(
        &self,
        tenant: Uuid,
        commit: &mut ImportCommit,
        lease: &mut tables::ETag,
    ) -> Result<CopyEnd, HrStoreError> {
        let pk = tenant.to_string();
        let staging = import_partition(tenant, commit.import_id);
        let staged = self.table.query_all(prefix(&staging, "rows-")).await?;
        if staged.len() != commit.rows {
            // a concurrent finisher may have dropped the staged rows after copying them
            let now = self.table.try_get(&pk, IMPORT_COMMIT).await?;
            if now.is_none_or(|e| {
                parse::<ImportCommit>(&e).ok().map(|c| c.import_id) != Some(commit.import_id)
            }) {
                return Ok(CopyEnd::Done);
            }
            return Err(HrStoreError::Corrupt(format!(
                "import {} committed {} staged rows, {} found",
                commit.import_id,
                commit.rows,
                staged.len()
            )));
        }
        if let Some(pause) = self.copy_pause {
            tokio::time::sleep(pause).await;
        }
        let Some(committed_at) = commit.committed_at else {
            return Err(HrStoreError::Corrupt(format!(
                "import {} has a commit without a Timestamp",
                commit.import_id
            )));
        };
        let import = commit.import_id.to_string();
        // read after the claim: a row written since has another ETag, and its write wins
        let current: HashMap<String, Entity> = self
            .table
            .query_all(prefix(&pk, "record-"))
            .await?
            .into_iter()
            .map(|e| (e.row_key.clone(), e))
            .collect();
        let mut records = BTreeMap::new();
        for e in &staged {
            for r in parse::<Vec<HrRecord>>(e)? {
                records.insert(record_key(&r.employee_id), r);
            }
        }
        let mut ops = Vec::new();
        for (key, r) in &records {
            let new = row(pk.clone(), key.clone(), r).with(FROM_IMPORT, import.as_str());
            match current.get(key) {
                None => ops.push(Operation::Insert(new)),
                // copied in already by a finisher whose claim lapsed
                Some(old) if old.get_str(FROM_IMPORT) == Some(import.as_str()) => {}
                // written after the commit: newer than the import
                Some(old) if old.timestamp.is_some_and(|t| t >= committed_at) => {}
                Some(old) => ops.push(Operation::Replace(new, if_match(old))),
            }
        }
        let mut renewed = Instant::now();
        for chunk in ops.chunks(tables::batch::MAX_OPERATIONS) {
            if renewed.elapsed() > RENEW_AFTER {
                commit.lease_until = Some(OffsetDateTime::now_utc() + LEASE);
                match self
                    .table
                    .replace(
                        &row(pk.clone(), IMPORT_COMMIT, &*commit),
                        IfMatch::ETag(lease.clone()),
                    )
                    .await
                {
                    Ok(etag) => *lease = etag,
                    Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                        return Ok(CopyEnd::Lost);
                    }
                    Err(e) => return Err(e.into()),
                }
                renewed = Instant::now();
            }
            self.write_fitting(chunk, true).await?;
        }
        match self
            .table
            .delete(&pk, IMPORT_COMMIT, IfMatch::ETag(lease.clone()))
            .await
        {
            Ok(_) => {}
            // our claim lapsed and another finisher took over; it drops the commit
            Err(e) if e.is_not_found() || e.is_precondition_failed() => return Ok(CopyEnd::Lost),
            Err(e) => return Err(e.into()),
        }
        let drops: Vec<Operation> = staged
            .iter()
            .map(|e| Operation::Delete {
                partition_key: e.partition_key.clone(),
                row_key: e.row_key.clone(),
                if_match: IfMatch::Any,
            })
            .collect();
        if let Err(e) = self.write_all(&drops).await {
            tracing::warn!(%tenant, import = %commit.import_id, error = %e, "a finished import's staged rows were left");
        }
        Ok(CopyEnd::Done)
    }

    /// Runs operations of one partition in transactions of at most 100 that fit the
    /// transaction body limit (4 MiB).
    async fn write_all(&self, ops: &[Operation]) -> Result<(), HrStoreError> {
        for chunk in ops.chunks(tables::batch::MAX_OPERATIONS) {
            self.write_fitting(chunk, false).await?;
        }
        Ok(())
    }

    /// Runs up to 100 operations of one partition, halving any transaction too large to
    /// send (records of many positions or non-ASCII names are large). With `keep_newer`,
    /// a transaction refused for an If-Match (412) or an insert of an existing row (409)
    /// runs again one operation at a time, leaving those out: that row was written after
    /// it was read, and the newer write stays.
    async fn write_fitting(&self, ops: &[Operation], keep_newer: bool) -> Result<(), HrStoreError> {
        let mut pending: Vec<&[Operation]> = vec![ops];
        while let Some(chunk) = pending.pop() {
            if chunk.is_empty() {
                continue;
            }
            match self.table.transact(chunk).await {
                Ok(_) => {}
                Err(tables::Error::TooLarge(_)) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    pending.push(b);
                    pending.push(a);
                }
                Err(e) if keep_newer && (e.is_precondition_failed() || e.is_conflict()) => {
                    for op in chunk {
                        let one = match op {
                            Operation::Insert(e) => self.table.insert(e).await.map(drop),
                            Operation::Replace(e, m) => {
                                self.table.replace(e, m.clone()).await.map(drop)
                            }
                            other => self
                                .table
                                .transact(std::slice::from_ref(other))
                                .await
                                .map(drop),
                        };
                        match one {
                            Ok(()) => {}
                            Err(e) if e.is_precondition_failed() || e.is_conflict() => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
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
        // an import committed before this write is older: it goes in first (or, being
        // copied by another call, is waited for)
        self.finish_import(tenant).await?;
        let pk = tenant.to_string();
        let ops: Vec<Operation> = records
            .iter()
            .map(|r| Operation::UpsertReplace(row(pk.clone(), record_key(&r.employee_id), r)))
            .collect();
        self.write_all(&ops).await
    }

    async fn import_records(
        &self,
        tenant: Uuid,
        import: Uuid,
        records: &[HrRecord],
    ) -> Result<(), HrStoreError> {
        // staged apart, where no read looks: a failure here leaves the records as they were
        let staging = import_partition(tenant, import);
        let ops: Vec<Operation> = packed_rows(records, |r| {
            format!("the record of employee {:?}", r.employee_id)
        })?
        .into_iter()
        .enumerate()
        .map(|(i, json)| {
            Operation::UpsertReplace(
                Entity::new(staging.clone(), format!("rows-{i:06}")).with("Json", json),
            )
        })
        .collect();
        let rows = ops.len();
        self.write_all(&ops).await?;
        // the commit: one row, so the import is in whole or not at all; an earlier commit
        // not copied in yet goes first (a commit never replaces one)
        let commit = row(
            tenant.to_string(),
            IMPORT_COMMIT,
            &ImportCommit {
                import_id: import,
                rows,
                committed_at: None,
                owner: None,
                lease_until: None,
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
        // the lists in chunk rows of their own: a header holding thousands of waiting hires
        // would overflow its row
        header.steps = Vec::new();
        header.waiting = Vec::new();
        header.skipped = Vec::new();
        let chunks = |kind: &str, rows: Vec<String>| -> Vec<Operation> {
            rows.into_iter()
                .enumerate()
                .map(|(i, json)| {
                    Operation::Insert(
                        Entity::new(pk.clone(), format!("{kind}-{i:06}")).with("Json", json),
                    )
                })
                .collect()
        };
        let mut ops = chunks(
            "steps",
            packed_rows(&plan.steps, |s| format!("step {}", s.index))?,
        );
        ops.extend(chunks(
            "waiting",
            packed_rows(&plan.waiting, |w| {
                format!("the wait of employee {:?}", w.employee_id)
            })?,
        ));
        ops.extend(chunks(
            "skipped",
            packed_rows(&plan.skipped, |w| {
                format!("the skip of employee {:?}", w.employee_id)
            })?,
        ));
        // the header last: a plan without it was never saved whole and is not found
        ops.push(Operation::Insert(row(pk.clone(), "plan", &header)));
        self.write_all(&ops).await
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
        // in key order, so in the order computed (a plan saved before these rows has its
        // lists in the header)
        for e in self.table.query_all(prefix(&pk, "waiting-")).await? {
            plan.waiting.extend(parse::<Vec<Waiting>>(&e)?);
        }
        for e in self.table.query_all(prefix(&pk, "skipped-")).await? {
            plan.skipped.extend(parse::<Vec<Skipped>>(&e)?);
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
