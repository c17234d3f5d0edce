//! A log of timer runs: the latest run of each timer function, and a history that
//! housekeeping trims.

use async_trait::async_trait;
use tables::{Entity, IfMatch, Operation, Query, Table, Value};
use time::OffsetDateTime;

use super::StoreError;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed(String),
}

/// One run of a timer function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub started_at: OffsetDateTime,
    pub finished_at: OffsetDateTime,
    pub outcome: RunOutcome,
    /// The host said the run was late (the app was not running at its scheduled time).
    pub past_due: bool,
    /// A one-line summary of what the run did.
    pub summary: String,
}

/// Records and reads timer runs.
#[async_trait]
pub trait RunLog: Send + Sync {
    /// Records a run as the function's latest and in its history, atomically.
    async fn record(&self, function: &str, run: &RunRecord) -> Result<(), StoreError>;
    /// The function's latest run, if it ever ran.
    async fn latest(&self, function: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Deletes history entries of runs that started before `cutoff`; returns how many.
    async fn purge_history(
        &self,
        function: &str,
        cutoff: OffsetDateTime,
    ) -> Result<usize, StoreError>;
}

/// [`RunLog`] on Table Storage: one partition per function; row `latest` plus history
/// rows `run-<inverted start time>` so the newest sort first.
#[derive(Debug, Clone)]
pub struct TableRunLog {
    table: Table,
}

const LATEST: &str = "latest";
const HISTORY_PREFIX: &str = "run-";
/// Sorts just after every `run-...` row key.
const HISTORY_END: &str = "run.";

impl TableRunLog {
    /// A run log in `table`.
    pub fn new(table: Table) -> TableRunLog {
        TableRunLog { table }
    }

    fn history_key(started_at: OffsetDateTime) -> String {
        let nanos = i64::try_from(started_at.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        format!("{HISTORY_PREFIX}{:019}", i64::MAX - nanos.max(0))
    }

    fn to_entity(function: &str, row_key: &str, run: &RunRecord) -> Entity {
        let (outcome, error) = match &run.outcome {
            RunOutcome::Succeeded => ("succeeded", None),
            RunOutcome::Failed(message) => ("failed", Some(message.clone())),
        };
        let mut entity = Entity::new(tables::key::encode(function), row_key)
            .with("StartedAt", run.started_at)
            .with("FinishedAt", run.finished_at)
            .with("Outcome", outcome)
            .with("PastDue", run.past_due)
            .with("Summary", truncate(&run.summary, 1024));
        if let Some(error) = error {
            entity.set("Error", truncate(&error, 4096));
        }
        entity
    }

    fn from_entity(entity: &Entity) -> Result<RunRecord, StoreError> {
        let time = |name: &str| {
            entity
                .get_datetime(name)
                .ok_or_else(|| StoreError::Corrupt(format!("run record without {name}")))
        };
        let outcome = match entity.get_str("Outcome") {
            Some("succeeded") => RunOutcome::Succeeded,
            Some("failed") => {
                RunOutcome::Failed(entity.get_str("Error").unwrap_or_default().to_string())
            }
            other => return Err(StoreError::Corrupt(format!("run outcome {other:?}"))),
        };
        Ok(RunRecord {
            started_at: time("StartedAt")?,
            finished_at: time("FinishedAt")?,
            outcome,
            past_due: entity.get_bool("PastDue").unwrap_or(false),
            summary: entity.get_str("Summary").unwrap_or_default().to_string(),
        })
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[async_trait]
impl RunLog for TableRunLog {
    async fn record(&self, function: &str, run: &RunRecord) -> Result<(), StoreError> {
        let latest = Self::to_entity(function, LATEST, run);
        let history = Self::to_entity(function, &Self::history_key(run.started_at), run);
        self.table
            .transact(&[
                Operation::UpsertReplace(latest),
                Operation::UpsertReplace(history),
            ])
            .await?;
        Ok(())
    }

    async fn latest(&self, function: &str) -> Result<Option<RunRecord>, StoreError> {
        match self
            .table
            .try_get(&tables::key::encode(function), LATEST)
            .await?
        {
            Some(entity) => Self::from_entity(&entity).map(Some),
            None => Ok(None),
        }
    }

    async fn purge_history(
        &self,
        function: &str,
        cutoff: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let partition = tables::key::encode(function);
        // history keys invert time: everything older than the cutoff sorts after its key
        let filter = format!(
            "PartitionKey eq {} and RowKey gt {} and RowKey lt {}",
            Value::from(partition.as_str()).filter_literal(),
            Value::from(Self::history_key(cutoff)).filter_literal(),
            Value::from(HISTORY_END).filter_literal(),
        );
        let query = Query {
            filter: Some(filter),
            select: Some(vec![]),
            ..Query::default()
        };
        let old = self.table.query_all(query).await?;
        let deletes: Vec<Operation> = old
            .into_iter()
            .map(|e| Operation::Delete {
                partition_key: e.partition_key,
                row_key: e.row_key,
                if_match: IfMatch::Any,
            })
            .collect();
        Ok(self.table.transact_chunked(deletes).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn history_keys_sort_newest_first() {
        let older = TableRunLog::history_key(datetime!(2026-11-24 10:00:00 UTC));
        let newer = TableRunLog::history_key(datetime!(2026-11-24 10:15:00 UTC));
        assert!(newer < older);
        assert!(older.as_str() < HISTORY_END && newer.starts_with(HISTORY_PREFIX));
    }

    #[test]
    fn run_records_round_trip_through_entities() {
        let run = RunRecord {
            started_at: datetime!(2026-11-24 10:00:00 UTC),
            finished_at: datetime!(2026-11-24 10:00:01 UTC),
            outcome: RunOutcome::Failed("storage said no".into()),
            past_due: true,
            summary: "purged 0".into(),
        };
        let entity = TableRunLog::to_entity("Housekeeping", LATEST, &run);
        assert_eq!(TableRunLog::from_entity(&entity).unwrap(), run);
    }

    fn run_at(started_at: OffsetDateTime, summary: &str) -> RunRecord {
        RunRecord {
            started_at,
            finished_at: started_at + time::Duration::seconds(1),
            outcome: RunOutcome::Succeeded,
            past_due: false,
            summary: summary.into(),
        }
    }

    #[tokio::test]
    async fn housekeeping_history_is_recorded_and_purged_in_azurite() {
        let azurite = system_tests::Azurite::shared();
        let log = TableRunLog::new(azurite.client().table(system_tests::unique_table("runs")));
        assert_eq!(log.latest("Housekeeping").await.unwrap(), None);

        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        for (days_ago, summary) in [(35, "oldest"), (31, "old"), (0, "today")] {
            log.record(
                "Housekeeping",
                &run_at(now - time::Duration::days(days_ago), summary),
            )
            .await
            .unwrap();
        }
        log.record(
            "Other",
            &run_at(now - time::Duration::days(40), "other function"),
        )
        .await
        .unwrap();
        assert_eq!(
            log.latest("Housekeeping").await.unwrap().unwrap().summary,
            "today"
        );

        let purged = log
            .purge_history("Housekeeping", now - time::Duration::days(30))
            .await
            .unwrap();
        assert_eq!(purged, 2, "the two runs older than 30 days");
        assert_eq!(
            log.purge_history("Housekeeping", now - time::Duration::days(30))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            log.latest("Housekeeping").await.unwrap().unwrap().summary,
            "today",
            "latest survives"
        );
        let history = log
            .table
            .query_all(Query::partition("Housekeeping"))
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "latest plus today's history row");
        assert!(
            log.latest("Other").await.unwrap().is_some(),
            "other functions are untouched"
        );
    }
}
