//! Messages shared by commands, replies and pushes: stream positions, client info and
//! publications.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_core::Publication as CorePublication;

use super::{is_zero_u64, wire_epoch, Data};

/// A position in a channel's stream: `{"offset":5,"epoch":"xyz"}`.
///
/// Offsets are only comparable within one epoch; a changed epoch means the history the
/// client knew is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the last publication (0: none yet).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Identifies the stream's lifetime.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

impl StreamPosition {
    /// The position right after `publication`.
    pub fn of(publication: &CorePublication) -> StreamPosition {
        StreamPosition {
            offset: publication.offset,
            epoch: wire_epoch(publication.epoch),
        }
    }
}

/// Who a connection is, as shown in presence, join and leave:
/// `{"user":"42","client":"c1","conn_info":{...}}`.
///
/// `user` and `client` are always written (an anonymous user is `""`), the info fields only
/// when set, as the reference encoder does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// User id from the token (`sub`), `""` for anonymous connections.
    #[serde(default)]
    pub user: String,
    /// Client (connection) id.
    #[serde(default)]
    pub client: String,
    /// Connection info from the token (`info` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Data>,
    /// Channel info from the subscription token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Data>,
}

impl ClientInfo {
    /// The protocol's view of a core member or publisher. Info that is not valid JSON (it
    /// always is when it came from a token) is left out rather than sent broken.
    pub fn from_core(info: &switchboard_core::ClientInfo) -> ClientInfo {
        let json = |b: &Option<bytes::Bytes>| {
            b.as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| Data::from_json(s.to_owned()).ok())
        };
        ClientInfo {
            user: info.user.clone(),
            client: info.client.clone(),
            conn_info: json(&info.conn_info),
            chan_info: json(&info.chan_info),
        }
    }
}

/// A publication as a client sees it: `{"data":{...},"offset":7}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The published data (see the module docs for how payloads map to JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// The publisher, when known and wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    /// Position in the channel (0: the channel keeps no positions).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    /// Free-form key/value tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl Publication {
    /// The client view of a core publication: its payload as `data`, its offset, and the
    /// publisher's client info when a client published it.
    pub fn from_core(publication: &CorePublication) -> Publication {
        Publication {
            data: Some(Data::from_payload(&publication.payload)),
            info: publication.info.as_deref().map(ClientInfo::from_core),
            offset: publication.offset,
            tags: BTreeMap::new(),
        }
    }
}
