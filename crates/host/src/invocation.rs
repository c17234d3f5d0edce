//! What the Functions host posts to `/{FunctionName}` for non-HTTP triggers, and what the
//! handler answers. Parsing is lenient where hosts differ and strict where it matters.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// A malformed invocation body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// One invocation: the trigger and input binding values, and the trigger metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvocationRequest {
    /// Binding values by binding name (`timer`, a queue trigger's name...).
    pub data: Map<String, Value>,
    /// Trigger metadata (`sys.MethodName`, `sys.UtcNow`, queue `DequeueCount`...).
    pub metadata: Map<String, Value>,
}

impl InvocationRequest {
    /// Parses the host's JSON body. `Data` and `Metadata` may each be missing or null.
    pub fn from_slice(body: &[u8]) -> Result<InvocationRequest, PayloadError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| PayloadError(format!("the invocation body is not JSON: {e}")))?;
        InvocationRequest::from_value(value)
    }

    /// Reads an already-parsed body; every non-HTTP invocation goes through here.
    pub fn from_value(value: Value) -> Result<InvocationRequest, PayloadError> {
        let Value::Object(mut root) = value else {
            return Err(PayloadError(
                "the invocation body is not a JSON object".into(),
            ));
        };
        let mut take = |name: &str| match root.remove(name) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(PayloadError(format!("`{name}` is not a JSON object"))),
        };
        Ok(InvocationRequest {
            data: take("Data")?,
            metadata: take("Metadata")?,
        })
    }

    /// The body the host would send, for the standalone runtime and for tests.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "Data": self.data, "Metadata": self.metadata })
    }

    /// The timer trigger value under `binding` (usually `timer`).
    pub fn timer(&self, binding: &str) -> Result<TimerInfo, PayloadError> {
        let value = self
            .data
            .get(binding)
            .ok_or_else(|| PayloadError(format!("no `{binding}` timer value in Data")))?;
        TimerInfo::from_value(value)
    }

    /// The queue trigger under `binding` with its metadata, read leniently (see [`QueueTrigger`]).
    pub fn queue_trigger(&self, binding: &str) -> Result<QueueTrigger, PayloadError> {
        let raw = self
            .data
            .get(binding)
            .ok_or_else(|| PayloadError(format!("no `{binding}` queue message in Data")))?;
        let text = |name: &str| self.metadata.get(name).and_then(metadata_string);
        let stamp = |name: &str| text(name).as_deref().and_then(parse_timestamp);
        let dequeue_count = match text("DequeueCount") {
            None => 1,
            Some(n) => n
                .trim()
                .parse()
                .map_err(|_| PayloadError(format!("`DequeueCount` {n:?} is not a count")))?,
        };
        Ok(QueueTrigger {
            message: unwrap_json_strings(raw.clone()),
            id: text("Id").unwrap_or_default(),
            dequeue_count,
            insertion_time: stamp("InsertionTime"),
            expiration_time: stamp("ExpirationTime"),
            next_visible_time: stamp("NextVisibleTime"),
            pop_receipt: text("PopReceipt").unwrap_or_default(),
        })
    }

    /// The host's clock at invocation (`Metadata.sys.UtcNow`), when it parses.
    pub fn utc_now(&self) -> Option<OffsetDateTime> {
        self.metadata
            .get("sys")
            .and_then(|s| s.get("UtcNow"))
            .and_then(Value::as_str)
            .and_then(parse_timestamp)
    }
}

/// A queue trigger's message and metadata.
///
/// The Functions host's HTTP worker writes every non-object value with
/// `JsonConvert.SerializeObject` before putting it in the body, so a queue message's text,
/// and the string metadata (`Id`, `PopReceipt`, timestamps), arrive as JSON strings that hold
/// a JSON-quoted string, and `DequeueCount` as a string of digits (see
/// `ScriptInvocationContextExtensions.GetHttpScriptInvocationContextValue` in
/// azure-functions-host). The standalone runtime sends the same shape; reading accepts it and
/// the plain one.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueTrigger {
    /// The message: its JSON value, or a string when the text is not JSON.
    pub message: Value,
    pub id: String,
    /// Receipts of this message so far, this one included (1 on the first attempt).
    pub dequeue_count: u32,
    pub insertion_time: Option<OffsetDateTime>,
    pub expiration_time: Option<OffsetDateTime>,
    pub next_visible_time: Option<OffsetDateTime>,
    pub pop_receipt: String,
}

impl QueueTrigger {
    /// The invocation body the host sends for this message to a function whose trigger
    /// binding is `binding`: `text` is the message's decoded text (sent as is, whatever
    /// `self.message` says), `sys` the `Metadata.sys` object.
    pub fn host_body(&self, binding: &str, text: &str, sys: Value) -> Value {
        let metadata = self;
        let quoted = |s: &str| Value::String(Value::String(s.to_string()).to_string());
        let stamp = |t: Option<OffsetDateTime>| t.map(|t| quoted(&format_timestamp(t)));
        let mut meta = Map::new();
        meta.insert(
            "DequeueCount".into(),
            Value::String(metadata.dequeue_count.to_string()),
        );
        meta.insert("Id".into(), quoted(&metadata.id));
        for (name, value) in [
            ("InsertionTime", stamp(metadata.insertion_time)),
            ("ExpirationTime", stamp(metadata.expiration_time)),
            ("NextVisibleTime", stamp(metadata.next_visible_time)),
        ] {
            if let Some(v) = value {
                meta.insert(name.into(), v);
            }
        }
        meta.insert("PopReceipt".into(), quoted(&metadata.pop_receipt));
        meta.insert("sys".into(), sys);
        serde_json::json!({ "Data": { binding: quoted(text) }, "Metadata": meta })
    }
}

/// Removes the host's extra layers of JSON-string quoting from a value.
fn unwrap_json_strings(mut value: Value) -> Value {
    // two layers are what the host adds; a third guards a message that is itself quoted text
    for _ in 0..3 {
        match value {
            Value::String(ref s) => match serde_json::from_str::<Value>(s) {
                Ok(inner) => value = inner,
                Err(_) => return value,
            },
            other => return other,
        }
    }
    value
}

/// A metadata string, with the host's JSON quoting removed.
fn metadata_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::String(inner)) => Some(inner),
            _ => Some(s.clone()),
        },
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The timer trigger's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerInfo {
    /// When this run is late (the app was down at its scheduled time).
    pub is_past_due: bool,
    /// Last and next occurrences, when the host tracks them (`ScheduleStatus` may be null).
    pub last: Option<OffsetDateTime>,
    pub next: Option<OffsetDateTime>,
}

impl TimerInfo {
    fn from_value(value: &Value) -> Result<TimerInfo, PayloadError> {
        let Value::Object(map) = value else {
            return Err(PayloadError("the timer value is not a JSON object".into()));
        };
        let is_past_due = match map.get("IsPastDue") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => return Err(PayloadError("`IsPastDue` is not a boolean".into())),
        };
        let status = map.get("ScheduleStatus").and_then(Value::as_object);
        // Unparseable timestamps are dropped rather than failing the run: they are informational.
        let stamp = |name: &str| {
            status
                .and_then(|s| s.get(name))
                .and_then(Value::as_str)
                .and_then(parse_timestamp)
        };
        Ok(TimerInfo {
            is_past_due,
            last: stamp("Last"),
            next: stamp("Next"),
        })
    }

    /// The host's JSON for this value.
    pub fn to_value(&self) -> Value {
        let status = match (self.last, self.next) {
            (None, None) => Value::Null,
            (last, next) => serde_json::json!({
                "Last": last.map(format_timestamp),
                "Next": next.map(format_timestamp),
                "LastUpdated": last.map(format_timestamp),
            }),
        };
        serde_json::json!({
            "Schedule": { "AdjustForDST": true },
            "ScheduleStatus": status,
            "IsPastDue": self.is_past_due,
        })
    }
}

/// Parses the timestamp formats hosts have sent: RFC 3339 with any offset or fraction,
/// ISO 8601 without an offset (taken as UTC), and the .NET invariant `MM/dd/yyyy HH:mm:ss`.
pub fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    // checked: a far-future time with a negative offset would overflow year 9999
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return t.checked_to_offset(UtcOffset::UTC);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc2822) {
        return t.checked_to_offset(UtcOffset::UTC);
    }
    let naive_formats = [
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"
        ),
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        time::macros::format_description!("[month]/[day]/[year] [hour]:[minute]:[second]"),
        time::macros::format_description!(
            "[month padding:none]/[day padding:none]/[year] [hour repr:12 padding:none]:[minute]:[second] [period]"
        ),
    ];
    // A trailing `Z` on an otherwise naive form, or a .NET 7-digit fraction, is also accepted.
    let trimmed = s.strip_suffix('Z').unwrap_or(s);
    naive_formats
        .iter()
        .find_map(|f| PrimitiveDateTime::parse(trimmed, f).ok())
        .map(PrimitiveDateTime::assume_utc)
}

/// RFC 3339 in UTC, as current hosts send it.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .expect("an OffsetDateTime always formats as RFC 3339")
}

/// The handler's answer to an invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvocationResponse {
    /// Output binding values by binding name.
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    /// Lines the host forwards to Application Insights.
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    /// The `$return` binding value.
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResponse {
    /// An empty successful answer.
    pub fn new() -> InvocationResponse {
        InvocationResponse::default()
    }

    /// Adds a log line for the host.
    pub fn log(&mut self, line: impl Into<String>) -> &mut Self {
        self.logs.push(line.into());
        self
    }

    /// Queues a message on the queue output binding `binding`. Messages are JSON objects,
    /// never bare strings, because the host base64-decodes strings that look like base64.
    pub fn queue(&mut self, binding: &str, message: Map<String, Value>) -> &mut Self {
        match self
            .outputs
            .entry(binding.to_string())
            .or_insert(Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(Value::Object(message)),
            other => *other = Value::Array(vec![Value::Object(message)]),
        }
        self
    }

    /// The messages queued on `binding` (an array output, or a single value).
    pub fn queued(&self, binding: &str) -> Vec<Value> {
        match self.outputs.get(binding) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(single) => vec![single.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// The timer payload exactly as ../shared/reference/functions-host.md shows it.
    const HOST_TIMER: &str = r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},
                  "ScheduleStatus":{"Last":"2026-11-24T10:00:00+00:00","Next":"2026-11-24T10:15:00+00:00","LastUpdated":"2026-11-24T10:00:00+00:00"},
                  "IsPastDue":false}},
 "Metadata":{"sys":{"MethodName":"DirectorySync","UtcNow":"2026-11-24T10:15:00.012Z","RandGuid":"0f8fad5b-d9cb-469f-a165-70867728950e"}}}"#;

    #[test]
    fn reference_timer_payload_parses() {
        let req = InvocationRequest::from_slice(HOST_TIMER.as_bytes()).unwrap();
        let timer = req.timer("timer").unwrap();
        assert!(!timer.is_past_due);
        assert_eq!(timer.last, Some(datetime!(2026-11-24 10:00:00 UTC)));
        assert_eq!(timer.next, Some(datetime!(2026-11-24 10:15:00 UTC)));
        assert_eq!(req.utc_now(), Some(datetime!(2026-11-24 10:15:00.012 UTC)));
    }

    #[test]
    fn null_schedule_status_and_missing_metadata_are_accepted() {
        let body = br#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":true}}}"#;
        let req = InvocationRequest::from_slice(body).unwrap();
        let timer = req.timer("timer").unwrap();
        assert!(timer.is_past_due);
        assert_eq!(timer.last, None);
        assert!(req.metadata.is_empty());
        let empty = InvocationRequest::from_slice(br#"{"Data":null,"Metadata":null}"#).unwrap();
        assert!(empty.data.is_empty());
    }

    #[test]
    fn timestamps_in_every_host_format_parse() {
        let expected = datetime!(2026-11-24 10:00:00 UTC);
        for s in [
            "2026-11-24T10:00:00+00:00",
            "2026-11-24T10:00:00Z",
            "2026-11-24T11:00:00+01:00",
            "2026-11-24T10:00:00",
            "2026-11-24T10:00:00.0000000Z",
            "2026-11-24T10:00:00.0000000",
            "2026-11-24 10:00:00",
            "11/24/2026 10:00:00",
            "11/24/2026 10:00:00 AM",
        ] {
            assert_eq!(parse_timestamp(s), Some(expected), "{s}");
        }
        assert_eq!(
            parse_timestamp("11/24/2026 1:05:00 PM"),
            Some(datetime!(2026-11-24 13:05:00 UTC))
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(
            parse_timestamp("9999-12-31T23:59:59-01:00"),
            None,
            "out of range, not a panic"
        );
    }

    #[test]
    fn unparseable_schedule_status_is_dropped_not_fatal() {
        let body = br#"{"Data":{"timer":{"ScheduleStatus":{"Last":"soon","Next":42},"IsPastDue":"True"}}}"#;
        let timer = InvocationRequest::from_slice(body)
            .unwrap()
            .timer("timer")
            .unwrap();
        assert!(timer.is_past_due);
        assert_eq!(timer.last, None);
    }

    #[test]
    fn malformed_bodies_are_errors_with_a_reason() {
        for (body, reason) in [
            (&b"not json"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"Data":"x"}"#, "`Data`"),
            (br#"{"Data":{"timer":5}}"#, "timer value"),
        ] {
            let err = InvocationRequest::from_slice(body)
                .and_then(|r| r.timer("timer"))
                .unwrap_err();
            assert!(err.0.contains(reason), "{err} should mention {reason}");
        }
        let no_timer = InvocationRequest::from_slice(b"{}")
            .unwrap()
            .timer("timer")
            .unwrap_err();
        assert!(no_timer.0.contains("no `timer`"));
    }

    #[test]
    fn response_serializes_with_the_host_field_names() {
        let mut res = InvocationResponse::new();
        res.log("sync started for 3 tenants");
        let mut message = Map::new();
        message.insert("tenant_id".into(), Value::String("t1".into()));
        res.queue("work", message.clone()).queue("work", message);
        let json = serde_json::to_value(&res).unwrap();
        assert_eq!(json["Logs"][0], "sync started for 3 tenants");
        assert_eq!(json["Outputs"]["work"].as_array().unwrap().len(), 2);
        assert_eq!(json["Outputs"]["work"][0]["tenant_id"], "t1");
        assert!(json["ReturnValue"].is_null());
        assert_eq!(res.queued("work").len(), 2);
        assert!(res.queued("other").is_empty());
    }

    /// A queue invocation as azure-functions-host's HTTP worker serializes it: the trigger
    /// value and string metadata JSON-quoted once more, the dequeue count as digits.
    const HOST_QUEUE: &str = r#"{"Data":{"msg":"\"{\\\"tenant_id\\\":\\\"t1\\\"}\""},
 "Metadata":{"DequeueCount":"3","Id":"\"800ae4b3-bdd2-4c08-badd-f08e5a34b865\"",
  "InsertionTime":"\"2026-11-24T10:00:00+00:00\"","ExpirationTime":"2026-12-01T10:00:00+00:00",
  "NextVisibleTime":"\"2026-11-24T10:01:00+00:00\"","PopReceipt":"\"AgAAAAMAAAAAAAAAAgtnj8x+1QE=\"",
  "sys":{"MethodName":"SyncTenant","UtcNow":"2026-11-24T10:00:00.5Z","RandGuid":"0f8fad5b-d9cb-469f-a165-70867728950e"}}}"#;

    #[test]
    fn a_host_queue_invocation_reads_through_the_extra_quoting() {
        let req = InvocationRequest::from_slice(HOST_QUEUE.as_bytes()).unwrap();
        assert_eq!(
            req.data["msg"],
            Value::String(r#""{\"tenant_id\":\"t1\"}""#.into()),
            "the fixture has the host's two layers"
        );
        let q = req.queue_trigger("msg").unwrap();
        assert_eq!(q.message, serde_json::json!({"tenant_id": "t1"}));
        assert_eq!(q.dequeue_count, 3);
        assert_eq!(q.id, "800ae4b3-bdd2-4c08-badd-f08e5a34b865");
        assert_eq!(q.pop_receipt, "AgAAAAMAAAAAAAAAAgtnj8x+1QE=");
        assert_eq!(q.insertion_time, Some(datetime!(2026-11-24 10:00:00 UTC)));
        assert_eq!(q.expiration_time, Some(datetime!(2026-12-01 10:00:00 UTC)));
        assert_eq!(
            q.next_visible_time,
            Some(datetime!(2026-11-24 10:01:00 UTC))
        );
    }

    #[test]
    fn plain_queue_invocations_and_text_messages_read_too() {
        let plain = br#"{"Data":{"msg":{"tenant_id":"t1"}},"Metadata":{"DequeueCount":1,"Id":"a","PopReceipt":"p"}}"#;
        let q = InvocationRequest::from_slice(plain)
            .unwrap()
            .queue_trigger("msg")
            .unwrap();
        assert_eq!(q.message["tenant_id"], "t1");
        assert_eq!((q.dequeue_count, q.id.as_str()), (1, "a"));
        let text = br#"{"Data":{"msg":"\"hello world\""}}"#;
        let q = InvocationRequest::from_slice(text)
            .unwrap()
            .queue_trigger("msg")
            .unwrap();
        assert_eq!(q.message, Value::String("hello world".into()));
        let missing = InvocationRequest::from_slice(b"{}").unwrap();
        assert!(
            missing
                .queue_trigger("msg")
                .unwrap_err()
                .0
                .contains("no `msg`")
        );
        let bad = br#"{"Data":{"msg":"x"},"Metadata":{"DequeueCount":"many"}}"#;
        assert!(
            InvocationRequest::from_slice(bad)
                .unwrap()
                .queue_trigger("msg")
                .is_err()
        );
    }

    #[test]
    fn the_standalone_queue_body_is_the_host_shape_and_reads_back() {
        let trigger = QueueTrigger {
            message: Value::Null,
            id: "id-1".into(),
            dequeue_count: 2,
            insertion_time: Some(datetime!(2026-11-24 10:00:00 UTC)),
            expiration_time: Some(datetime!(2026-12-01 10:00:00 UTC)),
            next_visible_time: Some(datetime!(2026-11-24 10:01:00 UTC)),
            pop_receipt: "AgAA+/x==".into(),
        };
        let body = trigger.host_body(
            "msg",
            r#"{"tenant_id":"t1"}"#,
            serde_json::json!({"MethodName": "SyncTenant"}),
        );
        let fixture: Value = serde_json::from_str(HOST_QUEUE).unwrap();
        assert_eq!(body["Data"]["msg"], fixture["Data"]["msg"]);
        assert_eq!(body["Metadata"]["DequeueCount"], "2");
        assert_eq!(body["Metadata"]["Id"], "\"id-1\"");
        let back = InvocationRequest::from_value(body)
            .unwrap()
            .queue_trigger("msg")
            .unwrap();
        assert_eq!(
            back,
            QueueTrigger {
                message: serde_json::json!({"tenant_id": "t1"}),
                ..trigger
            }
        );
    }

    #[test]
    fn timer_value_round_trips_through_the_host_shape() {
        let timer = TimerInfo {
            is_past_due: false,
            last: Some(datetime!(2026-11-24 10:00:00 UTC)),
            next: Some(datetime!(2026-11-24 10:15:00 UTC)),
        };
        assert_eq!(TimerInfo::from_value(&timer.to_value()).unwrap(), timer);
        assert!(TimerInfo::default().to_value()["ScheduleStatus"].is_null());
    }
}
