//! How core payloads become Centrifugo JSON `data` and back.
//!
//! In the JSON protocol every `bytes` field of the schema (`data`, `conn_info`, `chan_info`)
//! is *embedded JSON*: the field's value is the application's JSON document itself, not a
//! string holding it. The rules (also in the module docs):
//!
//! * text that is valid JSON is embedded as is (insignificant whitespace is stripped only
//!   when it contains a line break, because a line break would split the reply in the
//!   newline-delimited batch);
//! * any other text becomes a JSON string;
//! * binary becomes a JSON string holding standard base64 (with padding);
//! * incoming `data` becomes a text payload holding the raw JSON bytes exactly as the client
//!   sent them.

use std::fmt;
use std::sync::OnceLock;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::{Payload, PayloadKind};

/// A `data`, `conn_info` or `chan_info` field: embedded JSON in the JSON encoding, bytes in
/// the Protobuf one.
///
/// It holds either the JSON text a JSON client sent (kept exactly as it appears on the wire,
/// never parsed into a tree and re-serialised), or a core [`Payload`] (a publication's, a
/// backend's answer, the bytes a Protobuf client sent). A payload becomes JSON only when a
/// JSON encoder asks for it (then once), and goes out as its own bytes in Protobuf, so
/// binary stays binary for Protobuf clients.
#[derive(Clone)]
pub struct Data(Repr);

#[derive(Clone)]
enum Repr {
    /// JSON text from the wire.
    Json(Box<RawValue>),
    /// A payload, with its JSON form made on first use.
    Payload {
        payload: Payload,
        json: OnceLock<Box<RawValue>>,
    },
}

impl Data {
    /// Parses `json` as one JSON document (surrounding whitespace is dropped).
    pub fn from_json(json: impl Into<String>) -> Result<Data, serde_json::Error> {
        RawValue::from_string(json.into()).map(|raw| Data(Repr::Json(raw)))
    }

    /// The data a payload is delivered as to Centrifugo clients: its bytes in Protobuf,
    /// [`payload_to_data`]'s JSON in the JSON encoding.
    pub fn from_payload(payload: &Payload) -> Data {
        Data(Repr::Payload {
            payload: payload.clone(),
            json: OnceLock::new(),
        })
    }

    /// Bytes a Protobuf client sent: a binary payload.
    pub fn from_bytes(bytes: Bytes) -> Data {
        Data::from_payload(&Payload {
            kind: PayloadKind::Binary,
            data: bytes,
        })
    }

    /// The JSON text (for a payload, its JSON form: see [`payload_to_data`]).
    pub fn get(&self) -> &str {
        self.raw().get()
    }

    fn raw(&self) -> &RawValue {
        match &self.0 {
            Repr::Json(raw) => raw,
            Repr::Payload { payload, json } => {
                json.get_or_init(|| match payload_to_data(payload).0 {
                    Repr::Json(raw) => raw,
                    // `payload_to_data` always makes JSON.
                    Repr::Payload { .. } => RawValue::NULL.to_owned(),
                })
            }
        }
    }

    /// The bytes the Protobuf encoding carries: a payload's own bytes, or the JSON text.
    pub fn wire_bytes(&self) -> Bytes {
        match &self.0 {
            Repr::Json(raw) => Bytes::copy_from_slice(raw.get().as_bytes()),
            Repr::Payload { payload, .. } => payload.data.clone(),
        }
    }

    /// The payload this data is published as (see [`data_to_payload`]), without consuming
    /// it.
    pub fn to_payload(&self) -> Payload {
        self.clone().into_payload()
    }

    /// The payload published for this data: JSON text as a text payload holding it
    /// verbatim (no copy), a payload as itself.
    pub fn into_payload(self) -> Payload {
        data_to_payload(self)
    }
}

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Data, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|raw| Data(Repr::Json(raw)))
    }
}

impl PartialEq for Data {
    /// Two payloads are equal when they are the same payload; otherwise equality is
    /// textual (the same JSON on the wire).
    fn eq(&self, other: &Data) -> bool {
        match (&self.0, &other.0) {
            (Repr::Payload { payload: a, .. }, Repr::Payload { payload: b, .. }) => a == b,
            _ => self.get() == other.get(),
        }
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

/// The JSON `data` a payload is delivered as to Centrifugo clients.
pub fn payload_to_data(payload: &Payload) -> Data {
    match payload.kind {
        PayloadKind::Text => match std::str::from_utf8(&payload.data) {
            Ok(text) => text_to_data(text),
            // A text payload is UTF-8 by contract; should one slip through, base64 keeps
            // every byte instead of failing the whole publication.
            Err(_) => binary_to_data(&payload.data),
        },
        PayloadKind::Binary => binary_to_data(&payload.data),
    }
}

/// The payload published for a client's `data` (from `publish`): a text payload holding the
/// raw JSON text verbatim, without copying it.
pub fn data_to_payload(data: Data) -> Payload {
    match data.0 {
        Repr::Json(raw) => {
            let text: Box<str> = raw.into();
            Payload {
                kind: PayloadKind::Text,
                data: Bytes::from(String::from(text)),
            }
        }
        Repr::Payload { payload, .. } => payload,
    }
}

/// `text` as embedded JSON: verbatim when it is a JSON document, else a JSON string.
pub fn text_to_data(text: &str) -> Data {
    let trimmed = text.trim_matches(is_json_whitespace);
    if !trimmed.is_empty() {
        let candidate = if trimmed.contains(['\n', '\r']) {
            strip_whitespace(trimmed)
        } else {
            trimmed.to_owned()
        };
        // Parsing is the only reliable "is this JSON?" test; it runs once per publication
        // because the encoding is cached.
        if let Ok(raw) = RawValue::from_string(candidate) {
            return Data(Repr::Json(raw));
        }
    }
    string_data(text)
}

/// `bytes` as a JSON string of standard base64.
#[allow(
    clippy::expect_used,
    reason = "base64 between quotes is always a JSON string"
)]
pub fn binary_to_data(bytes: &[u8]) -> Data {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    // Base64 needs no escaping: quoting it is enough to make a JSON string.
    Data(Repr::Json(
        RawValue::from_string(format!("\"{encoded}\"")).expect("a quoted base64 string is JSON"),
    ))
}

/// `text` as a JSON string value.
#[allow(
    clippy::expect_used,
    reason = "serde_json writes any `str` as a valid JSON string"
)]
fn string_data(text: &str) -> Data {
    let quoted = serde_json::to_string(text).expect("a string always serialises");
    Data(Repr::Json(
        RawValue::from_string(quoted).expect("a serialised string is JSON"),
    ))
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Removes whitespace outside JSON strings. Callers pass text that is JSON if anything; for
/// valid JSON the result is the same document on one line (JSON strings cannot contain raw
/// line breaks, so every line break is insignificant whitespace).
fn strip_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !is_json_whitespace(c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_whitespace_inside_strings() {
        assert_eq!(
            strip_whitespace("{\n  \"a b\": \"x \\\" y\",\n  \"c\" : [1, 2]\n}"),
            "{\"a b\":\"x \\\" y\",\"c\":[1,2]}"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed_from_json_text() {
        assert_eq!(text_to_data("  {\"a\":1} ").get(), "{\"a\":1}");
        assert_eq!(text_to_data("").get(), "\"\"");
        assert_eq!(text_to_data("   ").get(), "\"   \"");
    }
}
