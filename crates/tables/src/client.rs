//! The HTTP side: signing, retries, timeouts, and every entity and table operation.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use url::Url;

use crate::account::{Credential, StorageAccount, is_loopback};
use crate::entity::{ETag, Entity, IfMatch};
use crate::{Error, auth, key};

/// The REST API version this client speaks.
const API_VERSION: &str = "2019-02-02";
/// Minimal metadata: entities come back with `odata.etag` and `@odata.type` annotations.
const ACCEPT: &str = "application/json;odata=minimalmetadata";
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Query values are percent-encoded strictly (no `+` for spaces).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Timeouts and the retry budget.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
    /// Most attempts per operation (first try included).
    pub max_attempts: u32,
    /// Total time an operation may spend, retries and back-off included.
    pub total_budget: Duration,
    /// First back-off delay; doubled per retry.
    pub initial_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(10),
            max_attempts: 3,
            total_budget: Duration::from_secs(15),
            initial_backoff: Duration::from_millis(200),
        }
    }
}

/// A client for one storage account's Table service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TableServiceClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    account: StorageAccount,
    http: reqwest::Client,
    options: ClientOptions,
    requests: AtomicU64,
    known_tables: Mutex<HashSet<String>>,
}

/// One answer, after status mapping.
pub(crate) struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One request, before signing.
pub(crate) struct Call<'a> {
    pub method: Method,
    /// Path under the table endpoint, already percent-encoded (`Tables`, `t(PartitionKey=..)`).
    pub resource: &'a str,
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(HeaderName, String)>,
    pub content_type: String,
    pub body: Option<Bytes>,
    /// Whether a request that may have reached the service can be sent again.
    pub idempotent: bool,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, resource: &'a str) -> Call<'a> {
        let idempotent = method != Method::POST;
        Call {
            method,
            resource,
            query: Vec::new(),
            headers: Vec::new(),
            content_type: String::new(),
            body: None,
            idempotent,
        }
    }

    fn json(mut self, body: &serde_json::Value) -> Call<'a> {
        self.content_type = "application/json".into();
        self.body = Some(Bytes::from(crate::entity::wire_json(body)));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Call<'a> {
        self.headers
            .push((HeaderName::from_static(name), value.into()));
        self
    }
}

impl TableServiceClient {
    /// A client with default options.
    pub fn new(account: StorageAccount) -> Result<TableServiceClient, Error> {
        TableServiceClient::with_options(account, ClientOptions::default())
    }

    /// A client with explicit timeouts and retry budget.
    pub fn with_options(
        account: StorageAccount,
        options: ClientOptions,
    ) -> Result<TableServiceClient, Error> {
        if matches!(account.credential, Credential::Token(_)) && !is_secure(&account.table_endpoint)
        {
            return Err(Error::Invalid(
                "bearer tokens are only sent over https".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.attempt_timeout)
            .connect_timeout(options.attempt_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(Error::Transport)?;
        Ok(TableServiceClient {
            inner: Arc::new(Inner {
                account,
                http,
                options,
                requests: AtomicU64::new(0),
                known_tables: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The account this client talks to.
    pub fn account(&self) -> &StorageAccount {
        &self.inner.account
    }

    /// HTTP requests sent so far (retries included); benchmarks read it per operation.
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// A handle on one table; nothing is sent until an operation runs.
    pub fn table(&self, name: impl Into<String>) -> Table {
        Table {
            client: self.clone(),
            name: name.into(),
        }
    }

    /// Creates a table unless it exists; remembered, so repeated calls send nothing.
    pub async fn create_table_if_not_exists(&self, name: &str) -> Result<(), Error> {
        validate_table_name(name)?;
        if self
            .inner
            .known_tables
            .lock()
            .expect("table set lock")
            .contains(name)
        {
            return Ok(());
        }
        let call = Call::new(Method::POST, "Tables")
            .json(&serde_json::json!({ "TableName": name }))
            .header("prefer", "return-no-content");
        match self.send(call).await {
            Ok(_) => {}
            Err(Error::Conflict { code, .. }) if code == "TableAlreadyExists" => {}
            Err(e) => return Err(e),
        }
        self.inner
            .known_tables
            .lock()
            .expect("table set lock")
            .insert(name.to_string());
        Ok(())
    }

    /// Forgets that a table exists, so the next create sends its request: called whenever
    /// the service answers `TableNotFound`, since the table may have been deleted under us.
    pub(crate) fn forget_table(&self, name: &str) {
        self.inner
            .known_tables
            .lock()
            .expect("table set lock")
            .remove(name);
    }

    /// Deletes a table and everything in it. A missing table, or one already being deleted,
    /// is not an error.
    pub async fn delete_table(&self, name: &str) -> Result<(), Error> {
        validate_table_name(name)?;
        let resource = format!("Tables('{name}')");
        self.forget_table(name);
        match self.send(Call::new(Method::DELETE, &resource)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_table_being_deleted() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends one call with signing, timeouts and the bounded retry policy.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Answer, Error> {
        let options = &self.inner.options;
        let started = Instant::now();
        let url = self.url(call.resource, &call.query)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = self.build(&call, &url).await?;
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.inner.http.execute(request).await;
            // 503 (server busy) and connection failures mean the request was not processed;
            // 408, 500 and timeouts may hide a write that landed, so only idempotent calls
            // (reads, unconditional upserts, deletes) are sent again after them
            let retryable = match &outcome {
                Ok(response) => match response.status().as_u16() {
                    503 => true,
                    408 | 500 => call.idempotent,
                    _ => false,
                },
                Err(e) => e.is_connect() || (call.idempotent && (e.is_timeout() || e.is_request())),
            };
            let delay = options.initial_backoff * 2u32.saturating_pow(attempt - 1);
            let out_of_budget = attempt >= options.max_attempts
                || started.elapsed() + delay >= options.total_budget;
            if !retryable || out_of_budget {
                let answer = finish(outcome, options.attempt_timeout).await;
                // per request, for finding where time goes: the table, never keys or bodies
                // (row keys can hold user names)
                tracing::trace!(
                    method = %call.method,
                    table = call.resource.split('(').next().unwrap_or_default(),
                    query = call.query.iter().any(|(k, _)| *k == "$filter"),
                    ok = answer.is_ok(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "table request"
                );
                return answer;
            }
            tracing::debug!(attempt, status = ?outcome.as_ref().map(|r| r.status().as_u16()).ok(), "table request retried");
            tokio::time::sleep(delay).await;
        }
    }

    fn url(&self, resource: &str, query: &[(&'static str, String)]) -> Result<Url, Error> {
        let base = self
            .inner
            .account
            .table_endpoint
            .as_str()
            .trim_end_matches('/');
        let mut s = format!("{base}/{resource}");
        for (i, (name, value)) in query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(name);
            s.push('=');
            s.push_str(&utf8_percent_encode(value, QUERY_VALUE).to_string());
        }
        Url::parse(&s).map_err(|e| Error::Invalid(format!("request URL: {e}")))
    }

    async fn build(&self, call: &Call<'_>, url: &Url) -> Result<reqwest::Request, Error> {
        let date = httpdate(OffsetDateTime::now_utc());
        let mut request = reqwest::Request::new(call.method.clone(), url.clone());
        let headers = request.headers_mut();
        headers.insert("x-ms-date", header_value(&date)?);
        headers.insert("x-ms-version", HeaderValue::from_static(API_VERSION));
        headers.insert("accept", HeaderValue::from_static(ACCEPT));
        headers.insert("dataserviceversion", HeaderValue::from_static("3.0"));
        headers.insert(
            "maxdataserviceversion",
            HeaderValue::from_static("3.0;NetFx"),
        );
        if !call.content_type.is_empty() {
            headers.insert("content-type", header_value(&call.content_type)?);
        }
        for (name, value) in &call.headers {
            headers.insert(name.clone(), header_value(value)?);
        }
        let authorization = match &self.inner.account.credential {
            Credential::SharedKey { account, key } => {
                let comp = url
                    .query_pairs()
                    .find(|(k, _)| k == "comp")
                    .map(|(_, v)| v.into_owned());
                let to_sign = auth::string_to_sign(
                    call.method.as_str(),
                    &call.content_type,
                    &date,
                    account,
                    url.path(),
                    comp.as_deref(),
                );
                auth::authorization(account, key, &to_sign)
            }
            Credential::Token(credential) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| Error::Auth(e.to_string()))?;
                format!("Bearer {}", token.token.secret())
            }
        };
        let mut authorization = header_value(&authorization)?;
        authorization.set_sensitive(true);
        headers.insert("authorization", authorization);
        if let Some(body) = &call.body {
            *request.body_mut() = Some(body.clone().into());
        }
        Ok(request)
    }
}

async fn finish(
    outcome: Result<reqwest::Response, reqwest::Error>,
    timeout: Duration,
) -> Result<Answer, Error> {
    let mut response = outcome.map_err(|e| transport(e, timeout))?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = response.bytes().await.map_err(|e| transport(e, timeout))?;
    if status.is_success() {
        Ok(Answer { headers, body })
    } else {
        Err(Error::from_response(status, &body))
    }
}

fn transport(e: reqwest::Error, timeout: Duration) -> Error {
    if e.is_timeout() {
        Error::Timeout(timeout)
    } else {
        Error::Transport(e)
    }
}

fn is_secure(url: &Url) -> bool {
    url.scheme() == "https" || is_loopback(url)
}

fn header_value(s: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(s).map_err(|_| Error::Invalid("a header value is not valid ASCII".into()))
}

/// `x-ms-date` format: RFC 1123 in GMT.
pub(crate) fn httpdate(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(format)
        .expect("a UTC timestamp always formats")
}

/// Table names: 3-63 alphanumeric characters, starting with a letter.
pub fn validate_table_name(name: &str) -> Result<(), Error> {
    let ok = (3..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "table name {name:?}: 3-63 letters and digits, starting with a letter"
        )))
    }
}

fn etag_of(answer: &Answer) -> Option<ETag> {
    answer
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|s| ETag(s.to_string()))
}

/// A query: filter, projection, page size.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// An OData `$filter` expression; build literals with [`crate::Value::filter_literal`].
    pub filter: Option<String>,
    /// Properties to return (`$select`); PartitionKey, RowKey and the ETag always come back.
    pub select: Option<Vec<String>>,
    /// Entities per page (`$top`, at most 1000).
    pub page_size: Option<u32>,
    /// Stop after this many entities in all.
    pub limit: Option<usize>,
}

impl Query {
    /// Every entity matching the filter.
    pub fn filter(filter: impl Into<String>) -> Query {
        Query {
            filter: Some(filter.into()),
            ..Query::default()
        }
    }

    /// All entities of one partition.
    pub fn partition(partition_key: &str) -> Query {
        Query::filter(format!(
            "PartitionKey eq {}",
            crate::Value::from(partition_key).filter_literal()
        ))
    }
}

/// Where the next page of a query starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continuation {
    pub next_partition_key: Option<String>,
    pub next_row_key: Option<String>,
}

/// One page of query results.
#[derive(Debug, Clone)]
pub struct Page {
    pub entities: Vec<Entity>,
    /// Present when more results may follow (a page can be empty and still have one).
    pub continuation: Option<Continuation>,
}

/// One table of the account.
#[derive(Clone, Debug)]
pub struct Table {
    client: TableServiceClient,
    name: String,
}

impl Table {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service client this table belongs to.
    pub fn client(&self) -> &TableServiceClient {
        &self.client
    }

    /// Creates the table unless it exists.
    pub async fn create_if_not_exists(&self) -> Result<(), Error> {
        self.client.create_table_if_not_exists(&self.name).await
    }

    /// Reads one entity; `Error::NotFound` when it (or the table) does not exist.
    pub async fn get(&self, partition_key: &str, row_key: &str) -> Result<Entity, Error> {
        key::validate("PartitionKey", partition_key)?;
        key::validate("RowKey", row_key)?;
        let resource = key::entity_path(&self.name, partition_key, row_key);
        let answer = self.client.send(Call::new(Method::GET, &resource)).await?;
        let json: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| Error::Protocol(format!("entity body: {e}")))?;
        let mut entity = Entity::from_json(&json)?;
        if let Some(etag) = etag_of(&answer) {
            entity.etag = Some(etag);
        }
        Ok(entity)
    }

    /// Reads one entity, `None` when it does not exist.
    pub async fn try_get(
        &self,
        partition_key: &str,
        row_key: &str,
    ) -> Result<Option<Entity>, Error> {
        match self.get(partition_key, row_key).await {
            Ok(e) => Ok(Some(e)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Inserts a new entity; `Error::Conflict` (`EntityAlreadyExists`) when the keys are taken.
    pub async fn insert(&self, entity: &Entity) -> Result<ETag, Error> {
        entity.validate()?;
        let body = entity.to_json();
        self.write_creating_table(|| {
            Call::new(Method::POST, &self.name)
                .json(&body)
                .header("prefer", "return-no-content")
        })
        .await
    }

    /// Replaces an existing entity (all properties), if it still matches `if_match`.
    pub async fn replace(&self, entity: &Entity, if_match: IfMatch) -> Result<ETag, Error> {
        self.update(Method::PUT, entity, Some(if_match)).await
    }

    /// Merges properties into an existing entity, if it still matches `if_match`.
    pub async fn merge(&self, entity: &Entity, if_match: IfMatch) -> Result<ETag, Error> {
        self.update(merge_method(), entity, Some(if_match)).await
    }

    /// Inserts or replaces, unconditionally.
    pub async fn upsert_replace(&self, entity: &Entity) -> Result<ETag, Error> {
        self.update(Method::PUT, entity, None).await
    }

    /// Inserts or merges, unconditionally.
    pub async fn upsert_merge(&self, entity: &Entity) -> Result<ETag, Error> {
        self.update(merge_method(), entity, None).await
    }

    /// Deletes an entity if it still matches `if_match`; `Error::NotFound` when absent.
    pub async fn delete(
        &self,
        partition_key: &str,
        row_key: &str,
        if_match: IfMatch,
    ) -> Result<(), Error> {
        key::validate("PartitionKey", partition_key)?;
        key::validate("RowKey", row_key)?;
        let resource = key::entity_path(&self.name, partition_key, row_key);
        let mut call =
            Call::new(Method::DELETE, &resource).header("if-match", if_match.header_value());
        // a conditional delete that landed would answer 404 when resent
        call.idempotent = matches!(if_match, IfMatch::Any);
        self.client.send(call).await.map(|_| ())
    }

    async fn update(
        &self,
        method: Method,
        entity: &Entity,
        if_match: Option<IfMatch>,
    ) -> Result<ETag, Error> {
        entity.validate()?;
        let resource = key::entity_path(&self.name, &entity.partition_key, &entity.row_key);
        let body = entity.to_json();
        let upsert = if_match.is_none();
        let build = || {
            let call = Call::new(method.clone(), &resource).json(&body);
            match &if_match {
                Some(m) => {
                    let mut call = call.header("if-match", m.header_value());
                    // resending a conditional write that landed would answer 412 for our own change
                    call.idempotent = matches!(m, IfMatch::Any);
                    call
                }
                None => call,
            }
        };
        if upsert {
            self.write_creating_table(build).await
        } else {
            let answer = self.client.send(build()).await?;
            etag_of(&answer)
                .ok_or_else(|| Error::Protocol("an update answered without an ETag".into()))
        }
    }

    /// Sends a write; when the table does not exist yet, creates it and sends the write again.
    async fn write_creating_table<'c>(
        &'c self,
        build: impl Fn() -> Call<'c>,
    ) -> Result<ETag, Error> {
        let answer = match self.client.send(build()).await {
            Err(Error::NotFound { code }) if code == "TableNotFound" => {
                // first use, or the table was deleted since this client created it
                self.client.forget_table(&self.name);
                self.create_if_not_exists().await?;
                self.client.send(build()).await?
            }
            other => other?,
        };
        etag_of(&answer).ok_or_else(|| Error::Protocol("a write answered without an ETag".into()))
    }

    /// Reads one page of a query, starting at `from`. A missing table reads as empty.
    pub async fn query_page(
        &self,
        query: &Query,
        from: Option<&Continuation>,
    ) -> Result<Page, Error> {
        let resource = format!("{}()", self.name);
        let mut call = Call::new(Method::GET, &resource);
        if let Some(filter) = &query.filter {
            call.query.push(("$filter", filter.clone()));
        }
        if let Some(select) = &query.select {
            // keys always come back, so every entity read can be addressed again
            let mut fields = vec!["PartitionKey", "RowKey"];
            fields.extend(
                select
                    .iter()
                    .map(String::as_str)
                    .filter(|f| *f != "PartitionKey" && *f != "RowKey"),
            );
            call.query.push(("$select", fields.join(",")));
        }
        let remaining = query.limit.map(|l| l.min(1000) as u32);
        if let Some(top) = match (query.page_size, remaining) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        } {
            call.query.push(("$top", top.clamp(1, 1000).to_string()));
        }
        if let Some(from) = from {
            if let Some(pk) = &from.next_partition_key {
                call.query.push(("NextPartitionKey", pk.clone()));
            }
            if let Some(rk) = &from.next_row_key {
                call.query.push(("NextRowKey", rk.clone()));
            }
        }
        let answer = match self.client.send(call).await {
            // Table Storage takes 40 s or more to delete a table and answers 409
            // TableBeingDeleted meanwhile: either way there is nothing to read
            Err(e)
                if matches!(&e, Error::NotFound { code } if code == "TableNotFound")
                    || e.is_table_being_deleted() =>
            {
                self.client.forget_table(&self.name);
                return Ok(Page {
                    entities: Vec::new(),
                    continuation: None,
                });
            }
            other => other?,
        };
        let json: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| Error::Protocol(format!("query body: {e}")))?;
        let entities = json
            .get("value")
            .and_then(|v| v.as_array())
            .ok_or_else(|| Error::Protocol("a query answer has no value array".into()))?
            .iter()
            .map(Entity::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let continuation = Continuation {
            next_partition_key: header("x-ms-continuation-nextpartitionkey"),
            next_row_key: header("x-ms-continuation-nextrowkey"),
        };
        Ok(Page {
            entities,
            continuation: (continuation != Continuation::default()).then_some(continuation),
        })
    }

    /// Streams a query page by page across continuation tokens, honouring `limit`.
    pub fn query(&self, query: Query) -> impl Stream<Item = Result<Page, Error>> + Send + '_ {
        struct State {
            next: Option<Continuation>,
            done: bool,
            seen: usize,
        }
        let start = State {
            next: None,
            done: false,
            seen: 0,
        };
        futures::stream::try_unfold(start, move |state| {
            let query = query.clone();
            async move {
                if state.done {
                    return Ok(None);
                }
                let mut page_query = query.clone();
                page_query.limit = query.limit.map(|l| l - state.seen);
                let mut page = self.query_page(&page_query, state.next.as_ref()).await?;
                if let Some(limit) = query.limit {
                    page.entities.truncate(limit - state.seen);
                }
                let seen = state.seen + page.entities.len();
                let done = page.continuation.is_none() || query.limit.is_some_and(|l| seen >= l);
                let next = State {
                    next: page.continuation.clone(),
                    done,
                    seen,
                };
                Ok(Some((page, next)))
            }
        })
    }

    /// Runs a query to the end (or its `limit`) and collects the entities.
    pub async fn query_all(&self, query: Query) -> Result<Vec<Entity>, Error> {
        use futures::TryStreamExt as _;
        let pages: Vec<Page> = self.query(query).try_collect().await?;
        Ok(pages.into_iter().flat_map(|p| p.entities).collect())
    }
}

fn merge_method() -> Method {
    Method::from_bytes(b"MERGE").expect("MERGE is a valid method token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn x_ms_date_is_rfc1123_gmt() {
        assert_eq!(
            httpdate(datetime!(2026-11-24 10:00:05 UTC)),
            "Tue, 24 Nov 2026 10:00:05 GMT"
        );
    }

    #[test]
    fn table_names_follow_the_service_rules() {
        assert!(validate_table_name("Housekeeping").is_ok());
        assert!(validate_table_name("t1").is_err());
        assert!(validate_table_name("1abc").is_err());
        assert!(validate_table_name("has-dash").is_err());
    }

    #[test]
    fn query_values_are_strictly_percent_encoded() {
        let client =
            TableServiceClient::new(StorageAccount::development("127.0.0.1", 10002, 10001))
                .unwrap();
        let url = client
            .url("t()", &[("$filter", "PartitionKey eq 'a+b'".to_string())])
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:10002/devstoreaccount1/t()?$filter=PartitionKey%20eq%20%27a%2Bb%27"
        );
    }
}
