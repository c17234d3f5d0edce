//! Entity group transactions (`$batch`): up to 100 operations on one partition, atomic.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use reqwest::Method;

use crate::client::Call;
use crate::entity::{ETag, Entity, IfMatch};
use crate::{Error, Table, key};

/// Most operations in one transaction.
pub const MAX_OPERATIONS: usize = 100;
/// Largest transaction body the service accepts (4 MiB).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Operation {
    Insert(Entity),
    Replace(Entity, IfMatch),
    Merge(Entity, IfMatch),
    UpsertReplace(Entity),
    UpsertMerge(Entity),
    Delete {
        partition_key: String,
        row_key: String,
        if_match: IfMatch,
    },
}

impl Operation {
    /// The write that turns `old` into `new` (same keys), guarded by `if_match`: a Merge of
    /// the properties that changed when `new` drops none of `old`'s (the outcome is the
    /// same entity as a Replace; Azurite's Replace is a delete plus an insert, several times
    /// the cost of its in-place Merge on a large table), else a Replace.
    pub fn update(old: &Entity, new: Entity, if_match: IfMatch) -> Operation {
        let keeps_all = old
            .properties
            .keys()
            .all(|k| new.properties.contains_key(k));
        if !keeps_all {
            return Operation::Replace(new, if_match);
        }
        let mut changed = Entity::new(new.partition_key, new.row_key);
        changed.properties = new
            .properties
            .into_iter()
            .filter(|(k, v)| old.properties.get(k) != Some(v))
            .collect();
        Operation::Merge(changed, if_match)
    }

    fn keys(&self) -> (&str, &str) {
        match self {
            Operation::Insert(e)
            | Operation::Replace(e, _)
            | Operation::Merge(e, _)
            | Operation::UpsertReplace(e)
            | Operation::UpsertMerge(e) => (&e.partition_key, &e.row_key),
            Operation::Delete {
                partition_key,
                row_key,
                ..
            } => (partition_key, row_key),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        match self {
            Operation::Delete {
                partition_key,
                row_key,
                ..
            } => {
                key::validate("PartitionKey", partition_key)?;
                key::validate("RowKey", row_key)
            }
            Operation::Insert(e)
            | Operation::Replace(e, _)
            | Operation::Merge(e, _)
            | Operation::UpsertReplace(e)
            | Operation::UpsertMerge(e) => e.validate(),
        }
    }

    /// Writes this operation as one `application/http` part of the changeset.
    fn write(&self, out: &mut String, base: &str, table: &str) {
        let (method, resource, if_match, entity) = match self {
            Operation::Insert(e) => ("POST", table.to_string(), None, Some(e)),
            Operation::Replace(e, m) => (
                "PUT",
                key::entity_path(table, &e.partition_key, &e.row_key),
                Some(m),
                Some(e),
            ),
            Operation::Merge(e, m) => (
                "MERGE",
                key::entity_path(table, &e.partition_key, &e.row_key),
                Some(m),
                Some(e),
            ),
            Operation::UpsertReplace(e) => (
                "PUT",
                key::entity_path(table, &e.partition_key, &e.row_key),
                None,
                Some(e),
            ),
            Operation::UpsertMerge(e) => (
                "MERGE",
                key::entity_path(table, &e.partition_key, &e.row_key),
                None,
                Some(e),
            ),
            Operation::Delete {
                partition_key,
                row_key,
                if_match,
            } => (
                "DELETE",
                key::entity_path(table, partition_key, row_key),
                Some(if_match),
                None,
            ),
        };
        out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n");
        out.push_str(&format!("{method} {base}/{resource} HTTP/1.1\r\n"));
        out.push_str(
            "Accept: application/json;odata=minimalmetadata\r\nDataServiceVersion: 3.0\r\n",
        );
        if let Some(m) = if_match {
            out.push_str(&format!("If-Match: {}\r\n", m.header_value()));
        }
        match entity {
            Some(e) => {
                let body = crate::entity::wire_json(&e.to_json());
                if method == "POST" {
                    out.push_str("Prefer: return-no-content\r\n");
                }
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\r\n",
                    body.len()
                ));
            }
            None => out.push_str("\r\n"),
        }
    }
}

/// Builds the multipart body; returns it with the batch boundary.
fn build_body(ops: &[Operation], base: &str, table: &str) -> (String, String) {
    let batch = format!("batch_{}", uuid::Uuid::new_v4());
    let changeset = format!("changeset_{}", uuid::Uuid::new_v4());
    let mut out = String::new();
    out.push_str(&format!(
        "--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
    ));
    for op in ops {
        out.push_str(&format!("--{changeset}\r\n"));
        op.write(&mut out, base, table);
    }
    out.push_str(&format!("--{changeset}--\r\n\r\n--{batch}--\r\n"));
    (out, batch)
}

/// One operation's answer inside the batch response.
#[derive(Debug)]
struct PartAnswer {
    status: u16,
    etag: Option<ETag>,
    body: String,
}

/// Reads every embedded `HTTP/1.1 NNN` answer from a multipart batch response, in order.
fn parse_response(body: &str) -> Vec<PartAnswer> {
    let mut answers = Vec::new();
    let mut lines = body.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some(status) = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|code| code.parse().ok())
        else {
            continue;
        };
        let mut etag = None;
        for header in lines.by_ref() {
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("etag")
            {
                etag = Some(ETag(value.trim().to_string()));
            }
        }
        let mut body_text = String::new();
        while let Some(next) = lines.peek() {
            if next.starts_with("--") {
                break;
            }
            body_text.push_str(lines.next().unwrap_or_default());
        }
        answers.push(PartAnswer {
            status,
            etag,
            body: body_text,
        });
    }
    answers
}

/// Which operation failed: the service prefixes the error message with `index:`.
fn failed_index(part: &PartAnswer, position: usize) -> usize {
    let (_, message) = crate::error::parse_odata_error(part.body.as_bytes());
    message
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(position)
}

impl Table {
    /// [`Table::transact`], where an unconditional delete (`IfMatch::Any`) may find its row
    /// gone already (a concurrent cleanup, a replay took it): that delete is dropped and the
    /// rest run again, so only the other operations decide the outcome. The ETags answered
    /// are those of the operations that ran.
    pub async fn transact_tolerant(&self, ops: &[Operation]) -> Result<Vec<Option<ETag>>, Error> {
        let mut ops = ops.to_vec();
        loop {
            match self.transact(&ops).await {
                Err(Error::Batch { index, source })
                    if source.is_not_found()
                        && matches!(
                            ops.get(index),
                            Some(Operation::Delete {
                                if_match: IfMatch::Any,
                                ..
                            })
                        ) =>
                {
                    ops.remove(index);
                }
                other => return other,
            }
        }
    }

    /// Runs up to 100 operations on one partition as one atomic transaction. Returns each
    /// operation's new ETag (none for deletes). On failure nothing was applied and
    /// `Error::Batch` says which operation failed and why.
    pub async fn transact(&self, ops: &[Operation]) -> Result<Vec<Option<ETag>>, Error> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        if ops.len() > MAX_OPERATIONS {
            return Err(Error::Invalid(format!(
                "{} operations in one transaction; at most {MAX_OPERATIONS} (use transact_chunked)",
                ops.len()
            )));
        }
        let partition = ops[0].keys().0;
        let mut rows = HashSet::new();
        for op in ops {
            op.validate()?;
            let (pk, rk) = op.keys();
            if pk != partition {
                return Err(Error::Invalid(
                    "a transaction spans one PartitionKey".into(),
                ));
            }
            if !rows.insert(rk) {
                return Err(Error::Invalid(format!(
                    "RowKey {rk:?} appears twice in one transaction"
                )));
            }
        }
        let base = self
            .client()
            .account()
            .table_endpoint
            .as_str()
            .trim_end_matches('/')
            .to_string();
        let (body, boundary) = build_body(ops, &base, self.name());
        if body.len() > MAX_BODY_BYTES {
            return Err(Error::TooLarge(format!(
                "transaction body is {} bytes; at most {MAX_BODY_BYTES}",
                body.len()
            )));
        }
        let body = Bytes::from(body);
        let send = || {
            let mut call = Call::new(Method::POST, "$batch");
            call.content_type = format!("multipart/mixed; boundary={boundary}");
            call.body = Some(body.clone());
            call
        };
        let mut created = false;
        let parts = loop {
            let answer = self.client().send(send()).await?;
            let parts = parse_response(&String::from_utf8_lossy(&answer.body));
            let Some((position, failed)) = parts.iter().enumerate().find(|(_, p)| p.status >= 300)
            else {
                break parts;
            };
            let index = failed_index(failed, position).min(ops.len() - 1);
            let status = reqwest::StatusCode::from_u16(failed.status)
                .unwrap_or(reqwest::StatusCode::BAD_REQUEST);
            let error = Error::from_response(status, failed.body.as_bytes());
            if !created && matches!(&error, Error::NotFound { code } if code == "TableNotFound") {
                // first use of the table, or it was deleted under us: create it and run
                // the transaction again
                self.client().forget_table(self.name());
                self.create_if_not_exists().await?;
                created = true;
                continue;
            }
            return Err(Error::Batch {
                index,
                source: Box::new(error),
            });
        };
        if parts.len() != ops.len() {
            return Err(Error::Protocol(format!(
                "a transaction of {} operations answered {} parts",
                ops.len(),
                parts.len()
            )));
        }
        Ok(parts.into_iter().map(|p| p.etag).collect())
    }

    /// Runs any number of operations: grouped by PartitionKey and split into transactions
    /// of at most 100. Each transaction is atomic; the whole set is not. Stops at the first
    /// failed transaction; what earlier transactions applied stays applied.
    pub async fn transact_chunked(&self, ops: Vec<Operation>) -> Result<usize, Error> {
        let mut by_partition: BTreeMap<String, Vec<Operation>> = BTreeMap::new();
        for op in ops {
            by_partition
                .entry(op.keys().0.to_string())
                .or_default()
                .push(op);
        }
        let mut applied = 0;
        for (_, group) in by_partition {
            for chunk in group.chunks(MAX_OPERATIONS) {
                self.transact(chunk).await?;
                applied += chunk.len();
            }
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_merges_what_changed_unless_a_property_goes() {
        let old = Entity::new("p", "r").with("a", 1).with("b", "x");
        match Operation::update(
            &old,
            old.clone().with("b", "y").with("c", true),
            IfMatch::Any,
        ) {
            Operation::Merge(e, _) => {
                assert_eq!(e.properties.len(), 2, "{e:?}");
                assert!(e.properties.contains_key("b") && e.properties.contains_key("c"));
            }
            other => panic!("{other:?}"),
        }
        let dropped = Entity::new("p", "r").with("a", 1);
        match Operation::update(&old, dropped, IfMatch::Any) {
            Operation::Replace(e, _) => assert_eq!(e.properties.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_is_a_changeset_of_http_parts() {
        let ops = vec![
            Operation::Insert(Entity::new("p", "a").with("n", 1)),
            Operation::Delete {
                partition_key: "p".into(),
                row_key: "O'b".into(),
                if_match: IfMatch::Any,
            },
        ];
        let (body, boundary) = build_body(&ops, "http://h/acct", "T");
        assert!(body.starts_with(&format!(
            "--{boundary}\r\nContent-Type: multipart/mixed; boundary=changeset_"
        )));
        assert!(body.contains("POST http://h/acct/T HTTP/1.1\r\n"));
        assert!(body.contains(
            "DELETE http://h/acct/T(PartitionKey='p',RowKey='O%27%27b') HTTP/1.1\r\nAccept"
        ));
        assert!(body.contains("If-Match: *\r\n"));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    }

    #[test]
    fn response_parts_are_read_in_order_with_etags() {
        let body = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n\
            --changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
            HTTP/1.1 204 No Content\r\nETag: W/\"1\"\r\n\r\n\r\n\
            --changesetresponse_2\r\nContent-Type: application/http\r\n\r\n\
            HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n\r\n\
            {\"odata.error\":{\"code\":\"EntityAlreadyExists\",\"message\":{\"value\":\"1:The specified entity already exists.\"}}}\r\n\
            --changesetresponse_2--\r\n--batchresponse_1--\r\n";
        let parts = parse_response(body);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].status, 204);
        assert_eq!(parts[0].etag, Some(ETag("W/\"1\"".into())));
        assert_eq!(parts[1].status, 409);
        assert_eq!(failed_index(&parts[1], 0), 1);
    }
}
