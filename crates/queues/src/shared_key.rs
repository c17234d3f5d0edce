//! Shared Key signing for the Queue service, as a pipeline policy of the official client.
//!
//! `azure_storage_queue` only authenticates with a token credential, which Azurite does not
//! accept over plain http; connection strings carry the account key instead. The Queue
//! service's string to sign (the Blob/Queue/File form, not Table's shorter one) is
//! `VERB\nContent-Encoding\nContent-Language\nContent-Length\nContent-MD5\nContent-Type\n
//! Date\nIf-Modified-Since\nIf-Match\nIf-None-Match\nIf-Unmodified-Since\nRange\n` followed
//! by the canonicalized `x-ms-*` headers and the canonicalized resource.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use time::OffsetDateTime;
use url::Url;

/// Signs every attempt with the account key (placed after the retry policy, so each retry
/// gets a fresh `x-ms-date`).
pub(crate) struct SharedKeyPolicy {
    account: String,
    key: hmac::Key,
}

impl std::fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedKeyPolicy({}, key redacted)", self.account)
    }
}

impl SharedKeyPolicy {
    pub(crate) fn new(account: &str, key: &[u8]) -> SharedKeyPolicy {
        SharedKeyPolicy {
            account: account.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    fn sign(&self, string_to_sign: &str) -> String {
        let tag = hmac::sign(&self.key, string_to_sign.as_bytes());
        format!("SharedKey {}:{}", self.account, BASE64.encode(tag.as_ref()))
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        request.insert_header(
            "x-ms-date",
            azure_core::time::to_rfc7231(&OffsetDateTime::now_utc()),
        );
        // a retried attempt must not carry the previous signature into its own
        request.headers_mut().remove("authorization");
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .map(|(_, v)| v.as_str().to_string())
                .unwrap_or_default()
        };
        let content_length = request.body().len().unwrap_or(0);
        let standard = StandardHeaders {
            content_encoding: header("content-encoding"),
            content_language: header("content-language"),
            content_length,
            content_md5: header("content-md5"),
            content_type: header("content-type"),
            date: header("date"),
            if_modified_since: header("if-modified-since"),
            if_match: header("if-match"),
            if_none_match: header("if-none-match"),
            if_unmodified_since: header("if-unmodified-since"),
            range: header("range"),
        };
        let ms_headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_str().to_string()))
            .collect();
        let to_sign = string_to_sign(
            request.method().as_ref(),
            &standard,
            &ms_headers,
            &self.account,
            request.url(),
        );
        request.insert_header("authorization", self.sign(&to_sign));
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The standard headers that take part in the signature, empty when absent.
#[derive(Default)]
pub(crate) struct StandardHeaders {
    pub content_encoding: String,
    pub content_language: String,
    pub content_length: u64,
    pub content_md5: String,
    pub content_type: String,
    pub date: String,
    pub if_modified_since: String,
    pub if_match: String,
    pub if_none_match: String,
    pub if_unmodified_since: String,
    pub range: String,
}

/// The Blob/Queue/File Shared Key string to sign (service version 2015-02-21 or later).
pub(crate) fn string_to_sign(
    method: &str,
    standard: &StandardHeaders,
    headers: &[(String, String)],
    account: &str,
    url: &Url,
) -> String {
    // since 2015-02-21 a zero Content-Length is signed as an empty line
    let length = match standard.content_length {
        0 => String::new(),
        n => n.to_string(),
    };
    let mut s = [
        method.to_ascii_uppercase().as_str(),
        &standard.content_encoding,
        &standard.content_language,
        &length,
        &standard.content_md5,
        &standard.content_type,
        &standard.date,
        &standard.if_modified_since,
        &standard.if_match,
        &standard.if_none_match,
        &standard.if_unmodified_since,
        &standard.range,
    ]
    .join("\n");
    s.push('\n');
    s.push_str(&canonicalized_headers(headers));
    s.push_str(&canonicalized_resource(account, url));
    s
}

/// Every `x-ms-` header, lowercase, sorted by name, `name:value\n`, with runs of whitespace
/// in values folded to one space.
fn canonicalized_headers(headers: &[(String, String)]) -> String {
    let mut ms: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.clone()))
        .filter(|(n, _)| n.starts_with("x-ms-"))
        .map(|(n, v)| (n, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    ms.sort();
    ms.iter().map(|(n, v)| format!("{n}:{v}\n")).collect()
}

/// `/account/encoded-path`, then each query parameter as `\nname:value` with names
/// lowercased and sorted, values decoded, repeated names joined by commas (values sorted).
/// Path-style URLs (Azurite's `/devstoreaccount1/queue`) repeat the account name.
fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut s = format!("/{account}{}", url.path());
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in url.query_pairs() {
        let name = name.to_ascii_lowercase();
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value.into_owned()),
            None => params.push((name, vec![value.into_owned()])),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut values) in params {
        values.sort();
        s.push('\n');
        s.push_str(&name);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_has_the_twelve_standard_lines_then_headers_then_resource() {
        let url = Url::parse(
            "http://127.0.0.1:10001/devstoreaccount1/work/messages?visibilitytimeout=30&numofmessages=16",
        )
        .unwrap();
        let headers = vec![
            ("x-ms-version".to_string(), "2026-04-06".to_string()),
            (
                "x-ms-date".to_string(),
                "Tue, 24 Nov 2026 10:00:00 GMT".to_string(),
            ),
            ("accept".to_string(), "application/xml".to_string()),
            ("x-ms-client-request-id".to_string(), "a  b".to_string()),
        ];
        let s = string_to_sign(
            "get",
            &StandardHeaders::default(),
            &headers,
            "devstoreaccount1",
            &url,
        );
        assert_eq!(
            s,
            "GET\n\n\n\n\n\n\n\n\n\n\n\n\
             x-ms-client-request-id:a b\n\
             x-ms-date:Tue, 24 Nov 2026 10:00:00 GMT\n\
             x-ms-version:2026-04-06\n\
             /devstoreaccount1/devstoreaccount1/work/messages\n\
             numofmessages:16\n\
             visibilitytimeout:30"
        );
    }

    #[test]
    fn a_body_signs_its_length_and_type_and_query_values_are_decoded() {
        let url = Url::parse(
            "https://acct.queue.core.windows.net/q/messages/id1?popreceipt=AgAA%2Bx%3D%3D",
        )
        .unwrap();
        let standard = StandardHeaders {
            content_length: 42,
            content_type: "application/xml".into(),
            ..StandardHeaders::default()
        };
        let s = string_to_sign("PUT", &standard, &[], "acct", &url);
        assert_eq!(
            s,
            "PUT\n\n\n42\n\napplication/xml\n\n\n\n\n\n\n/acct/q/messages/id1\npopreceipt:AgAA+x=="
        );
    }

    #[test]
    fn repeated_query_names_are_joined_sorted() {
        let url =
            Url::parse("https://a.queue.core.windows.net/?comp=list&Include=b&include=a").unwrap();
        assert_eq!(
            canonicalized_resource("a", &url),
            "/a/\ncomp:list\ninclude:a,b"
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_string_with_the_key() {
        let policy = SharedKeyPolicy::new("acct", b"key");
        // HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog")
        assert_eq!(
            policy.sign("The quick brown fox jumps over the lazy dog"),
            "SharedKey acct:97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg="
        );
        assert!(!format!("{policy:?}").contains("key\""));
    }
}
