//! Where events are kept and how they are read back: the store trait, the query and its
//! cursor, and the Table Storage layout.
//!
//! Layout: a table per day, `{base}{yyyymmdd}` (for example `Audit20261201`), beside the
//! base table that lists the days.
//! - events: in the day's table, PartitionKey `{tenant}`, RowKey
//!   `e{tenant}{inverted µs}{id}`, so a partition holds one tenant's day and reads newest
//!   first;
//! - a copy per target in the same partition (and the same transaction), RowKey
//!   `t{tenant}{target id}|{inverted µs}{id}`, so a filter on one object reads only its
//!   events;
//! - the tenant in the row key too: a store that looks row keys up before partitions
//!   (Azurite) then reads one tenant's rows of that kind;
//! - in the base table, the tenant's days (PartitionKey `{tenant}`, RowKey
//!   `{inverted day}`), so a query skips days without events, and every day with a table
//!   (PartitionKey `days`, RowKey `yyyymmdd`), so retention drops whole tables, the
//!   cheapest trim there is: nothing is read or deleted row by row, whichever tenant
//!   (even one since removed) wrote them.
//!
//! A table per day also bounds what a store that scans a whole table for each query
//! (Azurite's LokiJS collections) reads: one day of events, not the retention's.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use tables::{Entity, IfMatch, Operation, Query, Table, Value};
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::event::{Actor, ActorKind, Change, Event, Outcome, Target};

/// Why the audit trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit storage: {0}")]
    Storage(#[from] tables::Error),
    #[error("malformed audit cursor")]
    BadCursor,
    #[error("stored audit event is malformed: {0}")]
    Malformed(String),
}

/// Which events a query returns; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Events before this time.
    pub until: Option<OffsetDateTime>,
    /// Actions starting with this (`scim.user` matches `scim.user.create`).
    pub action_prefix: Option<String>,
    /// The actor's id, or its kind (`graph-sync`).
    pub actor: Option<String>,
    /// Events about this object only.
    pub target_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
}

/// One page of events, newest first, and where the next starts.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<Event>,
    /// Opaque; None when there is nothing older.
    pub next: Option<String>,
}

/// The audit trail's storage.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Stores events; writing the same event (tenant, time, id) again stores it once.
    async fn append(&self, events: &[Event]) -> Result<(), AuditError>;
    /// Replaces a stored `pending` event by `done` (same tenant, time and id), in one
    /// transaction; the per-target row moves when the target's id became known.
    async fn complete(&self, pending: &Event, done: &Event) -> Result<(), AuditError>;
    /// Up to `limit` events matching `query`, newest first, after `cursor`.
    async fn page(
        &self,
        tenant: Uuid,
        query: &AuditQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage, AuditError>;
    /// Deletes every event of the days before `keep_from` (retention is the deployment's,
    /// not a tenant's), and the listed tenants' records of those days.
    async fn trim(&self, keep_from: Date, tenants: &[Uuid]) -> Result<Trimmed, AuditError>;
}

/// The Table Storage implementation.
pub struct TableAuditStore {
    /// The base table: the days lists; events live in the day tables named after it.
    table: Table,
    /// Day rows this process has written, so each is written once per day.
    days_written: Mutex<HashSet<(Uuid, u32)>>,
    /// Days whose table this process has listed (`days` rows).
    tables_listed: Mutex<HashSet<u32>>,
    /// Concurrent writes share transactions.
    commit: crate::commit::GroupCommit,
}

/// What a trim removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Day tables dropped (every tenant's events of those days).
    pub days: usize,
    /// Tenants' day rows removed from the base table.
    pub day_rows: usize,
}

/// Day tables a query reads at once.
const DAYS_AT_ONCE: usize = 4;

/// Up to `most` rows of a query, following continuations; a dropped day's table reads as
/// empty.
async fn read_up_to(table: &Table, mut q: Query, most: usize) -> Result<Vec<Entity>, AuditError> {
    let mut rows = Vec::new();
    let mut continuation = None;
    loop {
        q.page_size = Some((most - rows.len()).min(1000) as u32);
        let page = table.query_page(&q, continuation.as_ref()).await?;
        rows.extend(page.entities);
        match page.continuation {
            Some(c) if rows.len() < most => continuation = Some(c),
            _ => {
                rows.truncate(most);
                return Ok(rows);
            }
        }
    }
}

/// The base table's partition that lists the days with a table.
const DAYS_PARTITION: &str = "days";

/// Whether a day (`yyyymmdd`) is today or yesterday (UTC). Only those are remembered as
/// listed: an older day may have been trimmed by another process since, so its rows are
/// written again rather than trusted (else a late event would land in a table no query or
/// trim finds).
fn recent(day: u32) -> bool {
    let today = OffsetDateTime::now_utc().date();
    day >= day_number(today.previous_day().unwrap_or(today))
}

/// The UTC date of a time (a query's bounds may carry another offset).
fn utc_date(t: OffsetDateTime) -> Date {
    t.to_offset(time::UtcOffset::UTC).date()
}

/// `yyyymmdd` of a date.
fn day_number(date: Date) -> u32 {
    date.year() as u32 * 10_000 + u8::from(date.month()) as u32 * 100 + date.day() as u32
}

fn inverted_day(date: Date) -> String {
    format!("{:08}", 99_999_999 - day_number(date))
}

fn date_of_inverted(s: &str) -> Option<Date> {
    let n = 99_999_999u32.checked_sub(s.parse().ok()?)?;
    let month = time::Month::try_from((n / 100 % 100) as u8).ok()?;
    Date::from_calendar_date((n / 10_000) as i32, month, (n % 100) as u8).ok()
}

/// Microseconds since the epoch, inverted so that newer sorts first.
fn inverted_micros(t: OffsetDateTime) -> String {
    let micros = (t.unix_timestamp_nanos() / 1000).max(0) as u64;
    format!("{:016}", 9_999_999_999_999_999u64.saturating_sub(micros))
}

fn event_row(tenant: Uuid, stamp: &str) -> String {
    format!("e{}{stamp}", tenant.simple())
}

fn target_prefix(tenant: Uuid, target: &str) -> String {
    format!("t{}{}|", tenant.simple(), target_key(target))
}

/// Longest target id kept readable in a row key; longer ones are hashed (a key is at most
/// 1 KiB, and a failed create may name a value far longer than any valid id).
const MAX_TARGET_KEY: usize = 256;

/// A target id as a key part: encoded, and without the `|` that ends it.
fn target_key(id: &str) -> String {
    let encoded = tables::key::encode(id).replace('|', "~7C");
    if encoded.len() <= MAX_TARGET_KEY {
        return encoded;
    }
    // `~H` never comes out of the encoding (its escapes are two hex digits)
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("~H{hex}")
}

/// The first string after every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    match chars.pop() {
        Some(last) => {
            let next = char::from_u32(last as u32 + 1).unwrap_or(char::MAX);
            chars.push(next);
            chars.into_iter().collect()
        }
        None => "\u{ffff}".into(),
    }
}

fn literal(s: &str) -> String {
    Value::from(s).filter_literal()
}

/// The most characters stored for the changes (a Table string property holds 32K).
const MAX_CHANGES_CHARS: usize = 30_000;

/// The most characters kept of a free-text value (a name, a display, a reason): a Table
/// string property holds 32K, and a value past that would make the event, and the
/// change it records, fail.
const MAX_TEXT_CHARS: usize = 1024;

fn shortened(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

pub(crate) fn to_entity(event: &Event, partition: &str, row: String) -> Entity {
    let mut changes = serde_json::to_string(&event.changes).unwrap_or_else(|_| "[]".into());
    if changes.len() > MAX_CHANGES_CHARS {
        // keep the attribute names readable: drop values, which are what grows
        let names: Vec<Change> = event
            .changes
            .iter()
            .map(|c| Change::new(c.attribute.clone(), None, None))
            .collect();
        changes = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
        if changes.len() > MAX_CHANGES_CHARS {
            // still too long: the names of as many changes as fit (a cut inside the JSON
            // would lose them all, one inside a character would panic)
            let mut kept = names;
            while serde_json::to_string(&kept).map_or(0, |j| j.len()) > MAX_CHANGES_CHARS {
                kept.truncate(kept.len() / 2);
            }
            changes = serde_json::to_string(&kept).unwrap_or_else(|_| "[]".into());
        }
    }
    let mut e = Entity::new(partition, row)
        .with("Id", event.id.as_str())
        .with("Time", Value::DateTime(event.time))
        .with("Action", event.action.as_str())
        .with("ActorKind", event.actor.kind.as_str())
        .with("ActorId", event.actor.id.as_str())
        .with("TargetType", event.target.kind.as_str())
        .with("TargetId", shortened(&event.target.id))
        .with("Outcome", event.outcome.as_str())
        .with("Changes", changes);
    let optional = [
        ("ActorName", event.actor.name.as_deref()),
        ("TargetDisplay", event.target.display.as_deref()),
        ("InvocationId", event.invocation_id.as_deref()),
        ("Correlation", event.correlation.as_deref()),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            e.set(name, shortened(v));
        }
    }
    if let Outcome::Failure { code, reason } = &event.outcome {
        e.set("Code", shortened(code));
        e.set("Reason", shortened(reason));
    }
    e
}

pub(crate) fn from_entity(tenant: Uuid, e: &Entity) -> Result<Event, AuditError> {
    let text = |name: &str| e.get_str(name).map(str::to_string);
    let need = |name: &str| text(name).ok_or_else(|| AuditError::Malformed(format!("no {name}")));
    let kind = need("ActorKind")?;
    let outcome = match e.get_str("Outcome") {
        Some("failure") => Outcome::Failure {
            code: text("Code").unwrap_or_default(),
            reason: text("Reason").unwrap_or_default(),
        },
        Some("pending") => Outcome::Pending,
        _ => Outcome::Success,
    };
    Ok(Event {
        id: need("Id")?,
        time: e
            .get_datetime("Time")
            .ok_or_else(|| AuditError::Malformed("no Time".into()))?,
        tenant,
        actor: Actor {
            kind: ActorKind::parse(&kind)
                .ok_or_else(|| AuditError::Malformed(format!("actor kind {kind}")))?,
            id: need("ActorId")?,
            name: text("ActorName"),
        },
        action: need("Action")?,
        target: Target {
            kind: need("TargetType")?,
            id: need("TargetId")?,
            display: text("TargetDisplay"),
        },
        outcome,
        changes: e
            .get_str("Changes")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default(),
        invocation_id: text("InvocationId"),
        correlation: text("Correlation"),
    })
}

/// Where a query stopped: the day partition and the last row key returned.
fn encode_cursor(day: &str, row: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{day}|{row}"))
}

fn decode_cursor(cursor: &str) -> Result<(String, String), AuditError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| AuditError::BadCursor)?;
    let raw = String::from_utf8(raw).map_err(|_| AuditError::BadCursor)?;
    let (day, row) = raw.split_once('|').ok_or(AuditError::BadCursor)?;
    if day.len() != 8 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuditError::BadCursor);
    }
    Ok((day.to_string(), row.to_string()))
}

impl TableAuditStore {
    /// The store over one table.
    pub fn new(table: Table) -> TableAuditStore {
        TableAuditStore {
            table,
            days_written: Mutex::new(HashSet::new()),
            tables_listed: Mutex::new(HashSet::new()),
            commit: Default::default(),
        }
    }

    /// The table holding one day's events (`yyyymmdd`).
    fn day_table(&self, day: u32) -> Table {
        self.table
            .client()
            .table(format!("{}{day:08}", self.table.name()))
    }

    /// The day table of an inverted day string (a tenant's day row, a cursor).
    fn day_table_of(&self, inverted: &str) -> Result<Table, AuditError> {
        let date =
            date_of_inverted(inverted).ok_or_else(|| AuditError::Malformed(inverted.into()))?;
        Ok(self.day_table(day_number(date)))
    }

    /// The tenant's days with events, newest first (inverted day strings).
    async fn days(&self, tenant: Uuid) -> Result<Vec<String>, AuditError> {
        let mut query = Query::partition(&tenant.to_string());
        query.select = Some(Vec::new());
        let rows = self.table.query_all(query).await?;
        let mut days: Vec<String> = rows.into_iter().map(|e| e.row_key).collect();
        days.sort();
        Ok(days)
    }

    /// The OData filter on the non-key properties.
    fn property_filter(query: &AuditQuery) -> Vec<String> {
        let mut parts = Vec::new();
        if let Some(prefix) = &query.action_prefix {
            parts.push(format!(
                "Action ge {} and Action lt {}",
                literal(prefix),
                literal(&prefix_end(prefix))
            ));
        }
        if let Some(actor) = &query.actor {
            if ActorKind::parse(actor).is_some() {
                parts.push(format!(
                    "(ActorKind eq {0} or ActorId eq {0})",
                    literal(actor)
                ));
            } else {
                parts.push(format!("ActorId eq {}", literal(actor)));
            }
        }
        if let Some(outcome) = &query.outcome {
            parts.push(format!("Outcome eq {}", literal(outcome)));
        }
        parts
    }
}

#[async_trait]
impl AuditStore for TableAuditStore {
    async fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        // one job per day table and tenant (a batch at midnight may span two days)
        let mut ops: Vec<((u32, Uuid), Vec<Operation>)> = Vec::new();
        let mut new_days = Vec::new();
        for event in events {
            let date = utc_date(event.time);
            let partition = event.tenant.to_string();
            let stamp = format!("{}{}", inverted_micros(event.time), event.id);
            let number = day_number(date);
            let job = (number, event.tenant);
            let ops = match ops.iter().position(|(j, _)| *j == job) {
                Some(i) => &mut ops[i].1,
                None => {
                    ops.push((job, Vec::with_capacity(events.len() * 2)));
                    &mut ops.last_mut().expect("just pushed").1
                }
            };
            ops.push(Operation::UpsertReplace(to_entity(
                event,
                &partition,
                event_row(event.tenant, &stamp),
            )));
            ops.push(Operation::UpsertReplace(to_entity(
                event,
                &partition,
                format!("{}{stamp}", target_prefix(event.tenant, &event.target.id)),
            )));
            let day = (event.tenant, day_number(date));
            let known = recent(day.1)
                && self
                    .days_written
                    .lock()
                    .expect("not poisoned")
                    .contains(&day);
            if !known && !new_days.contains(&day) {
                new_days.push(day);
            }
        }
        // the day rows first: an event is never stored where a query or trim cannot find it
        let mut days: Vec<u32> = ops.iter().map(|((day, _), _)| *day).collect();
        days.sort_unstable();
        days.dedup();
        for day in &days {
            if recent(*day)
                && self
                    .tables_listed
                    .lock()
                    .expect("not poisoned")
                    .contains(day)
            {
                continue;
            }
            self.table
                .upsert_replace(&Entity::new(DAYS_PARTITION, format!("{day:08}")))
                .await?;
            if recent(*day) {
                self.tables_listed
                    .lock()
                    .expect("not poisoned")
                    .insert(*day);
            }
        }
        for (tenant, day) in &new_days {
            let date = date_of_inverted(&format!("{:08}", 99_999_999 - day))
                .ok_or_else(|| AuditError::Malformed("day".into()))?;
            self.table
                .upsert_replace(&Entity::new(tenant.to_string(), inverted_day(date)))
                .await?;
        }
        self.days_written
            .lock()
            .expect("not poisoned")
            .extend(new_days.into_iter().filter(|(_, day)| recent(*day)));
        // the day's table is made by its first write
        let writes = ops.into_iter().map(|((day, tenant), ops)| {
            self.commit.write(crate::commit::Job {
                table: self.day_table(day),
                partition: tenant.to_string(),
                ops,
            })
        });
        for written in futures::future::join_all(writes).await {
            written?;
        }
        Ok(())
    }

    async fn complete(&self, pending: &Event, done: &Event) -> Result<(), AuditError> {
        let partition = done.tenant.to_string();
        let stamp = format!("{}{}", inverted_micros(done.time), done.id);
        let mut ops = vec![
            Operation::UpsertReplace(to_entity(done, &partition, event_row(done.tenant, &stamp))),
            Operation::UpsertReplace(to_entity(
                done,
                &partition,
                format!("{}{stamp}", target_prefix(done.tenant, &done.target.id)),
            )),
        ];
        if pending.target.id != done.target.id {
            ops.push(Operation::Delete {
                partition_key: partition.clone(),
                row_key: format!("{}{stamp}", target_prefix(done.tenant, &pending.target.id)),
                if_match: IfMatch::Any,
            });
        }
        self.commit
            .write(crate::commit::Job {
                table: self.day_table(day_number(utc_date(done.time))),
                partition,
                ops,
            })
            .await?;
        Ok(())
    }

    async fn page(
        &self,
        tenant: Uuid,
        query: &AuditQuery,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage, AuditError> {
        let limit = limit.clamp(1, 1000);
        let after = cursor.map(decode_cursor).transpose()?;
        let newest_day = query.until.map(|t| inverted_day(utc_date(t)));
        let oldest_day = query.since.map(|t| inverted_day(utc_date(t)));
        let mut days: Vec<String> = self
            .days(tenant)
            .await?
            .into_iter()
            .filter(|d| newest_day.as_ref().is_none_or(|n| d >= n))
            .filter(|d| oldest_day.as_ref().is_none_or(|o| d <= o))
            .filter(|d| after.as_ref().is_none_or(|(day, _)| d >= day))
            .collect();
        days.sort();
        let prefix = match &query.target_id {
            Some(id) => target_prefix(tenant, id),
            None => format!("e{}", tenant.simple()),
        };
        let properties = Self::property_filter(query);
        let partition = tenant.to_string();
        // each day's query: its table and its own key range
        let mut reads = Vec::with_capacity(days.len());
        for day in &days {
            let table = self.day_table_of(day)?;
            let date = date_of_inverted(day).ok_or_else(|| AuditError::Malformed(day.clone()))?;
            let day_start = date.midnight().assume_utc();
            let day_end = day_start + time::Duration::days(1);
            // the day's own keys: newer than its end sort before, older than its start after
            let newest = query.until.filter(|u| *u < day_end).unwrap_or(day_end);
            // `until` is exclusive: an event at that instant sorts just after the bound
            let mut lower = format!(
                "RowKey gt {}",
                literal(&format!("{prefix}{}~", inverted_micros(newest)))
            );
            if let Some((cursor_day, row)) = &after
                && cursor_day == day
            {
                lower = format!("RowKey gt {}", literal(row));
            }
            // inverted: older events have larger keys; `since` is inclusive
            let oldest = query.since.filter(|t| *t > day_start).unwrap_or(day_start);
            let upper = format!(
                "RowKey lt {}",
                literal(&format!("{prefix}{}~", inverted_micros(oldest)))
            );
            let mut filter = vec![
                format!("PartitionKey eq {}", literal(&partition)),
                lower,
                upper,
            ];
            filter.extend(properties.iter().cloned());
            reads.push((day.clone(), table, Query::filter(filter.join(" and "))));
        }
        // the newest day alone (it usually fills the page), then a few days at once (a
        // sparse filter or one target walks many days), taken in order, each asked for no
        // more than the page still needs; one row past the page says whether there is more
        let mut events = Vec::new();
        let mut last: Option<(String, String)> = None;
        let mut more = false;
        let mut reads = reads.into_iter();
        let mut window = 1;
        'days: loop {
            let need = limit - events.len() + 1;
            let batch: Vec<_> = reads.by_ref().take(window).collect();
            if batch.is_empty() {
                break;
            }
            window = DAYS_AT_ONCE;
            let mut rows = futures::stream::iter(batch)
                .map(|(day, table, q)| async move {
                    read_up_to(&table, q, need)
                        .await
                        .map(|entities| (day, entities))
                })
                .buffered(DAYS_AT_ONCE);
            while let Some(read) = rows.next().await {
                let (day, entities) = read?;
                for entity in &entities {
                    if events.len() == limit {
                        more = true;
                        break 'days;
                    }
                    events.push(from_entity(tenant, entity)?);
                    last = Some((day.clone(), entity.row_key.clone()));
                }
            }
        }
        Ok(AuditPage {
            events,
            next: if more {
                last.map(|(day, row)| encode_cursor(&day, &row))
            } else {
                None
            },
        })
    }

    async fn trim(&self, keep_from: Date, tenants: &[Uuid]) -> Result<Trimmed, AuditError> {
        let mut trimmed = Trimmed::default();
        // first the tenants' lists of the expiring days, so no query walks into a table
        // being dropped (inverted: older days have larger keys)
        let keep = inverted_day(keep_from);
        for tenant in tenants {
            for day in self.days(*tenant).await? {
                if day <= keep {
                    continue;
                }
                match self
                    .table
                    .delete(&tenant.to_string(), &day, IfMatch::Any)
                    .await
                {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
                if let Some(date) = date_of_inverted(&day) {
                    self.days_written
                        .lock()
                        .expect("not poisoned")
                        .remove(&(*tenant, day_number(date)));
                }
                trimmed.day_rows += 1;
            }
        }
        // then every day with a table before `keep_from`: the table goes whole, and its
        // row last, so an interrupted trim finds it again
        let mut query = Query::filter(format!(
            "PartitionKey eq {} and RowKey lt {}",
            literal(DAYS_PARTITION),
            literal(&format!("{:08}", day_number(keep_from)))
        ));
        query.select = Some(Vec::new());
        for row in self.table.query_all(query).await? {
            let day: u32 = row
                .row_key
                .parse()
                .map_err(|_| AuditError::Malformed(format!("day {}", row.row_key)))?;
            self.tables_listed
                .lock()
                .expect("not poisoned")
                .remove(&day);
            self.table
                .client()
                .delete_table(self.day_table(day).name())
                .await?;
            match self
                .table
                .delete(DAYS_PARTITION, &row.row_key, IfMatch::Any)
                .await
            {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
            trimmed.days += 1;
        }
        Ok(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn newer_days_and_times_sort_first() {
        assert!(inverted_day(date!(2026 - 12 - 02)) < inverted_day(date!(2026 - 12 - 01)));
        assert!(
            inverted_micros(datetime!(2026-12-01 10:00:01 UTC))
                < inverted_micros(datetime!(2026-12-01 10:00:00 UTC))
        );
        assert_eq!(
            date_of_inverted(&inverted_day(date!(2026 - 02 - 28))),
            Some(date!(2026 - 02 - 28))
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = encode_cursor("79739798", "e123abc");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            ("79739798".to_string(), "e123abc".to_string())
        );
        assert!(decode_cursor("not a cursor").is_err());
    }

    #[test]
    fn overlong_target_ids_are_hashed_into_a_short_key() {
        let long = "e".repeat(1100);
        let key = target_key(&long);
        assert!(key.len() < 100 && key.starts_with("~H"));
        assert_eq!(key, target_key(&long));
        assert_eq!(target_key("a|b"), "a~7Cb");
    }

    #[test]
    fn prefixes_end_just_after_their_last_character() {
        assert_eq!(prefix_end("scim.user"), "scim.uses");
        assert_eq!(prefix_end("t1|"), "t1}");
    }
}
