//! Message text as the Functions host reads and writes it: with the host's default
//! `messageEncoding` (`base64`), a message is the base64 of its UTF-8 text, and our
//! messages' text is JSON.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// The largest message text the Queue service stores (64 KiB, after base64).
pub const MAX_MESSAGE_TEXT: usize = 64 * 1024;

/// Why a message's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not base64: written by a client that does not encode as the host does.
    #[error("the message is not base64 (the Functions host's messageEncoding)")]
    NotBase64,
    /// Base64 of bytes that are not UTF-8 text.
    #[error("the message is not UTF-8 text")]
    NotUtf8,
    /// UTF-8 text that is not JSON.
    #[error("the message text is not JSON: {0}")]
    NotJson(String),
}

/// The stored text of a JSON message: base64 of its compact JSON.
pub fn encode_json(message: &Value) -> String {
    encode_text(&message.to_string())
}

/// The stored text of a text message.
pub fn encode_text(text: &str) -> String {
    BASE64.encode(text.as_bytes())
}

/// The UTF-8 text of a stored message.
pub fn decode_text(stored: &str) -> Result<String, DecodeError> {
    let bytes = BASE64
        .decode(stored.trim().as_bytes())
        .map_err(|_| DecodeError::NotBase64)?;
    String::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)
}

/// The JSON value of a stored message.
pub fn decode_json(stored: &str) -> Result<Value, DecodeError> {
    let text = decode_text(stored)?;
    serde_json::from_str(&text).map_err(|e| DecodeError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_base64_of_its_utf8_text() {
        let message = json!({"tenant_id": "t1", "name": "Zoë"});
        let stored = encode_json(&message);
        assert_eq!(
            String::from_utf8(BASE64.decode(&stored).unwrap()).unwrap(),
            r#"{"name":"Zoë","tenant_id":"t1"}"#
        );
        assert_eq!(decode_json(&stored).unwrap(), message);
    }

    #[test]
    fn foreign_messages_say_why_they_cannot_be_read() {
        assert_eq!(decode_json("{\"a\":1}"), Err(DecodeError::NotBase64));
        assert_eq!(
            decode_json(&BASE64.encode([0xff, 0xfe])),
            Err(DecodeError::NotUtf8)
        );
        assert!(matches!(
            decode_json(&encode_text("plain words")),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(
            decode_text(&encode_text("plain words")).unwrap(),
            "plain words"
        );
    }
}
