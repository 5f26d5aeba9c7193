//! Centrifugo's proxy format (JSON over HTTP POST), so backends written for Centrifugo
//! work unchanged: one request body per kind, and one answer shape for every kind —
//! `{"result": {...}}`, `{"error": {"code", "message", "temporary"}}` or
//! `{"disconnect": {"code", "reason"}}`.
//!
//! Client `data` is embedded JSON (as in Centrifugo's JSON protocol); binary data goes as
//! `b64data` (standard base64). Result `data`/`info` likewise come back as embedded JSON or
//! `b64data`/`b64info`.
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_core::{Payload, PayloadKind};

/// The body of one proxy call. Which fields are set depends on the kind (see
/// docs/protocols.md); empty ones are left out.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ProxyRequest {
    /// The connection's client id (empty before a connect succeeded).
    pub(crate) client: String,
    /// `websocket` or `polling`.
    pub(crate) transport: &'static str,
    /// The wire format, as in Centrifugo: always `json`.
    pub(crate) protocol: &'static str,
    /// The payload encoding: always `json`.
    pub(crate) encoding: &'static str,
    /// Which client protocol the connection speaks (`centrifugo-json`, `socket.io`, `raw`);
    /// a field of ours, which backends written for Centrifugo ignore.
    pub(crate) client_protocol: &'static str,
    /// The user id, once known (not for `connect`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) user: String,
    /// The SDK's name (`connect`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    /// The SDK's version (`connect`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) version: String,
    /// The channel (`subscribe`, `publish`, `sub_refresh`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) channel: String,
    /// The RPC method (`rpc`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) method: String,
    /// A subscription token the client sent (`subscribe`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) token: String,
    /// The client's data as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Box<RawValue>>,
    /// The client's binary data, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) b64data: Option<String>,
    /// Channels the client asked for (`connect`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) channels: Vec<String>,
    /// In `connect` requests: extra context for protocols without a JSON `data` field of
    /// their own (the raw upgrade's path and query, the Socket.IO namespace). In a
    /// Centrifugo connection's later requests (`refresh`, `subscribe`, `sub_refresh`,
    /// `publish`, `rpc`): the connection's meta, as the connect answer or the token set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) meta: Option<serde_json::Value>,
}

impl ProxyRequest {
    /// A request of `protocol` over `transport` for client `client`.
    pub(crate) fn new(protocol: &'static str, transport: &'static str, client: String) -> Self {
        ProxyRequest {
            client,
            transport,
            protocol: "json",
            encoding: "json",
            client_protocol: protocol,
            ..Default::default()
        }
    }

    /// Sets `data` from a payload: text that is JSON goes as is, other text as a JSON
    /// string, binary as `b64data`.
    pub(crate) fn with_payload(mut self, payload: &Payload) -> Self {
        match payload.kind {
            PayloadKind::Text => {
                let text = String::from_utf8_lossy(&payload.data);
                self.data = RawValue::from_string(text.to_string())
                    .ok()
                    .or_else(|| serde_json::value::to_raw_value(&text).ok());
            }
            PayloadKind::Binary => {
                self.b64data = Some(base64::engine::general_purpose::STANDARD.encode(&payload.data))
            }
        }
        self
    }

    /// [`Self::with_payload`] when the client sent data: a JSON client's JSON goes as it
    /// came, a Protobuf client's bytes as `b64data`.
    pub(crate) fn with_client_data(self, payload: Option<Payload>) -> Self {
        match payload {
            Some(p) => self.with_payload(&p),
            None => self,
        }
    }
}

/// A backend's answer (exactly one of the three is expected; `error` and `disconnect` win
/// over `result`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProxyResponse {
    #[serde(default)]
    result: Option<ProxyResult>,
    #[serde(default)]
    error: Option<BackendError>,
    #[serde(default)]
    disconnect: Option<BackendDisconnect>,
}

/// What a backend's answer says.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Accepted, with these result fields (all optional).
    Ok(ProxyResult),
    /// Refused with this error (passed to the client).
    Error(BackendError),
    /// Refused: the client is to be disconnected with this code and reason.
    Disconnect(BackendDisconnect),
}

impl ProxyResponse {
    /// The answer in a body, or `None` when the body is not the proxy format.
    pub(crate) fn parse(body: &[u8]) -> Option<Answer> {
        let r: ProxyResponse = serde_json::from_slice(body).ok()?;
        if let Some(d) = r.disconnect {
            return Some(Answer::Disconnect(d));
        }
        if let Some(e) = r.error {
            return Some(Answer::Error(e));
        }
        // `{}` or `{"result": {}}`: accepted with nothing to add.
        Some(Answer::Ok(r.result.unwrap_or_default()))
    }
}

/// The `result` object of a backend's answer; which fields matter depends on the kind.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProxyResult {
    /// `connect`: the user id ("" for anonymous).
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// `connect`, `refresh`, `subscribe`, `sub_refresh`: Unix time the connection or
    /// subscription expires at (0: never).
    #[serde(default)]
    pub(crate) expire_at: Option<u64>,
    /// `refresh`, `sub_refresh`: the session is over.
    #[serde(default)]
    pub(crate) expired: bool,
    /// `connect`: connection info; `subscribe`: channel info (JSON).
    #[serde(default)]
    pub(crate) info: Option<Box<RawValue>>,
    /// Binary variant of `info`.
    #[serde(default)]
    pub(crate) b64info: Option<String>,
    /// `connect`: data for the client; `subscribe`: data for the subscriber; `publish`:
    /// the data to publish instead; `rpc`: the answer.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
    /// Binary variant of `data`.
    #[serde(default)]
    pub(crate) b64data: Option<String>,
    /// `connect`: server-side subscriptions.
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    /// `connect`: data attached to the connection, never sent to the client, sent back as
    /// `meta` in the connection's later proxy requests. Only a JSON object is kept.
    #[serde(default)]
    pub(crate) meta: Option<serde_json::Value>,
    /// `subscribe`: namespace options changed for this one subscription.
    #[serde(default, rename = "override")]
    pub(crate) overrides: SubscribeOverride,
    /// `publish`: deliver the publication without storing it in the channel's history.
    #[serde(default)]
    pub(crate) skip_history: bool,
}

/// The `override` object of a subscribe answer: each field is `{"value": bool}` and
/// replaces the namespace's option of that name for this subscription only; absent ones
/// leave the namespace's option in force.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct SubscribeOverride {
    /// `presence`: whether the subscriber shows in the channel's presence.
    #[serde(default, deserialize_with = "bool_value")]
    pub(crate) presence: Option<bool>,
    /// `join_leave`: whether the subscriber's join and leave are announced.
    #[serde(default, deserialize_with = "bool_value")]
    pub(crate) join_leave: Option<bool>,
    /// `force_push_join_leave`: whether the subscriber gets join and leave pushes.
    #[serde(default, deserialize_with = "bool_value")]
    pub(crate) force_push_join_leave: Option<bool>,
    /// `force_recovery`: the subscription is recoverable even when the client did not ask.
    #[serde(default, deserialize_with = "bool_value")]
    pub(crate) force_recovery: Option<bool>,
    /// `force_positioning`: the subscription is positioned even when the client did not ask.
    #[serde(default, deserialize_with = "bool_value")]
    pub(crate) force_positioning: Option<bool>,
}

/// Centrifugo's `BoolValue` wrapper, `{"value": true}` (`null`: absent).
fn bool_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    struct BoolValue {
        #[serde(default)]
        value: bool,
    }
    Ok(Option::<BoolValue>::deserialize(d)?.map(|b| b.value))
}

impl ProxyResult {
    /// `data` (or `b64data`) as a payload; `None` when neither is set or `b64data` is not
    /// base64.
    pub(crate) fn data_payload(&self) -> Option<Payload> {
        payload_of(self.data.as_deref(), self.b64data.as_deref())
    }

    /// `meta` when it is a JSON object (Centrifugo's type for it); anything else is
    /// dropped.
    pub(crate) fn meta_object(&self) -> Option<serde_json::Value> {
        self.meta.clone().filter(serde_json::Value::is_object)
    }

    /// `info` (or `b64info`) as bytes.
    pub(crate) fn info_bytes(&self) -> Option<Bytes> {
        payload_of(self.info.as_deref(), self.b64info.as_deref()).map(|p| p.data)
    }
}

fn payload_of(json: Option<&RawValue>, b64: Option<&str>) -> Option<Payload> {
    if let Some(json) = json {
        return Some(Payload::text(json.get().to_owned()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64?)
        .ok()?;
    Some(Payload::binary(bytes))
}

/// `{"error": {...}}`: the backend refuses the operation.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BackendError {
    /// The error code for the client (Centrifugo: custom codes from 400 up).
    pub(crate) code: u32,
    /// The message for the client.
    #[serde(default)]
    pub(crate) message: String,
    /// Whether the client may retry.
    #[serde(default)]
    pub(crate) temporary: bool,
}

/// `{"disconnect": {...}}`: the backend wants the client gone.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BackendDisconnect {
    /// The close code (Centrifugo: 4000–4999 for the application).
    pub(crate) code: u16,
    /// The close reason.
    #[serde(default)]
    pub(crate) reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_every_shape() {
        let ok = ProxyResponse::parse(
            br#"{"result":{"user":"56","expire_at":1700000000,"info":{"n":1},"data":"hi"}}"#,
        );
        let Some(Answer::Ok(r)) = ok else {
            panic!("expected a result")
        };
        assert_eq!(r.user.as_deref(), Some("56"));
        assert_eq!(r.expire_at, Some(1_700_000_000));
        assert_eq!(r.info_bytes().unwrap(), Bytes::from_static(br#"{"n":1}"#));
        assert_eq!(
            r.data_payload().unwrap().data,
            Bytes::from_static(b"\"hi\"")
        );
        let bin = ProxyResponse::parse(br#"{"result":{"b64data":"AAE="}}"#);
        let Some(Answer::Ok(r)) = bin else { panic!() };
        assert_eq!(r.data_payload().unwrap().kind, PayloadKind::Binary);
        let err =
            ProxyResponse::parse(br#"{"error":{"code":1000,"message":"no","temporary":true}}"#);
        assert!(matches!(err, Some(Answer::Error(e)) if e.code == 1000 && e.temporary));
        let d = ProxyResponse::parse(br#"{"disconnect":{"code":4500,"reason":"bye"}}"#);
        assert!(matches!(d, Some(Answer::Disconnect(d)) if d.code == 4500 && d.reason == "bye"));
        assert!(matches!(ProxyResponse::parse(b"{}"), Some(Answer::Ok(_))));
        assert!(ProxyResponse::parse(b"<html>").is_none());
        assert!(ProxyResponse::parse(br#"{"error":"x"}"#).is_none());
    }

    #[test]
    fn override_skip_history_and_meta_are_read() {
        let Some(Answer::Ok(r)) = ProxyResponse::parse(
            br#"{"result":{"override":{"presence":{"value":false},"force_recovery":{"value":true},"join_leave":null}}}"#,
        ) else {
            panic!("expected a result")
        };
        assert_eq!(
            r.overrides,
            SubscribeOverride {
                presence: Some(false),
                force_recovery: Some(true),
                ..Default::default()
            }
        );
        assert!(!r.skip_history);
        let Some(Answer::Ok(r)) = ProxyResponse::parse(br#"{"result":{"skip_history":true}}"#)
        else {
            panic!("expected a result")
        };
        assert!(r.skip_history);
        assert_eq!(r.overrides, SubscribeOverride::default());
        let Some(Answer::Ok(r)) =
            ProxyResponse::parse(br#"{"result":{"user":"u","meta":{"tenant":7}}}"#)
        else {
            panic!("expected a result")
        };
        assert_eq!(r.meta_object(), Some(serde_json::json!({"tenant": 7})));
        // Centrifugo's meta is an object: other values are not kept.
        let Some(Answer::Ok(r)) = ProxyResponse::parse(br#"{"result":{"meta":"x"}}"#) else {
            panic!("expected a result")
        };
        assert_eq!(r.meta_object(), None);
        // A wrapper without its `value` is not the format.
        assert!(ProxyResponse::parse(br#"{"result":{"override":{"presence":true}}}"#).is_none());
    }

    #[test]
    fn requests_leave_out_what_is_empty() {
        let req = ProxyRequest::new("centrifugo", "websocket", "c1".into())
            .with_payload(&Payload::text("{\"a\":1}"));
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"client":"c1","transport":"websocket","protocol":"json","encoding":"json","client_protocol":"centrifugo","data":{"a":1}}"#
        );
        let req = ProxyRequest::new("raw", "websocket", String::new())
            .with_payload(&Payload::text("not json"));
        assert!(serde_json::to_string(&req)
            .unwrap()
            .contains(r#""data":"not json""#));
        let req = ProxyRequest::new("raw", "websocket", String::new())
            .with_payload(&Payload::binary(vec![0u8, 1]));
        assert!(serde_json::to_string(&req)
            .unwrap()
            .contains(r#""b64data":"AAE=""#));
    }
}
