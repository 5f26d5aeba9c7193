//! What nodes ask of each other through the broker's control channel, so that HTTP API
//! methods acting on connections or listing channels cover every node, not just the one
//! that answers the request.
//!
//! * **Commands** ([`Command`]): `disconnect`, `subscribe` and `unsubscribe` of a user's (or
//!   one client's) connections. The node answering the API request sends the command to the
//!   others ([`switchboard_core::Node::control`]) and applies it to its own connections
//!   ([`apply`]); the others apply it on receipt. The broker never echoes a command back to
//!   its sender, so no node applies it twice.
//! * **Questions** ([`Question`]): `channels` — every other live node answers with its
//!   channels that have members and their counts ([`Answer`]), within a bounded wait
//!   ([`switchboard_core::Node::survey`]); the asking node adds its own and sums.
//!
//! The bytes are small JSON objects with a version `v` (the major version: a node ignores
//! a message with a version it does not know) and an `op`. A message with an unknown `op`
//! or shape is ignored with a debug log, so a newer node may send something an older one
//! does not understand during a rolling upgrade. Fields unknown to a node are ignored.
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_core::ControlHandler;

use crate::sessions;
use crate::state::Shared;
use switchboard_core::Control;

/// The version this node speaks.
const VERSION: u32 = 1;

/// A command for the connections of every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Disconnect `user`'s connections (only `client`, when given), telling them to
    /// reconnect; or, without a user, the connection `client` whatever its protocol.
    Disconnect {
        /// The user whose connections to close.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Only this connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
    },
    /// Subscribe `user`'s Centrifugo connections (only `client`, when given) to `channel`.
    Subscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
        /// Only this connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
    },
    /// Unsubscribe `user`'s Centrifugo connections (only `client`, when given) from
    /// `channel`.
    Unsubscribe {
        /// The user.
        user: String,
        /// The channel.
        channel: String,
        /// Only this connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<u64>,
    },
}

/// A question for every other node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Question {
    /// The node's channels with at least one member whose name matches `pattern` (a glob
    /// with `*`, empty for all), with their member counts.
    Channels {
        /// The glob.
        #[serde(default)]
        pattern: String,
    },
}

/// A node's answer to [`Question::Channels`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The version of the answering node.
    pub v: u32,
    /// Channel name → members on the answering node.
    #[serde(default)]
    pub channels: BTreeMap<String, usize>,
}

/// `{ "v": 1, "op": ..., fields... }`.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

fn encode<T: Serialize>(body: T) -> Bytes {
    let v = Versioned { v: VERSION, body };
    // Serializing these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Option<T> {
    #[derive(Deserialize)]
    struct Head {
        v: u32,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head { v: VERSION }) => {}
        Ok(Head { v }) => {
            tracing::debug!(version = v, "{what} of an unknown version ignored");
            return None;
        }
        Err(e) => {
            tracing::debug!("undecodable {what} ignored: {e}");
            return None;
        }
    }
    match serde_json::from_slice::<Versioned<T>>(bytes) {
        Ok(v) => Some(v.body),
        Err(e) => {
            tracing::debug!("unknown {what} ignored: {e}");
            None
        }
    }
}

impl Command {
    /// The bytes sent to the other nodes.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// A command from another node; `None` (logged) for one this version does not know.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        decode(bytes, "control command")
    }
}

impl Question {
    /// The bytes sent to the other nodes.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// A question from another node; `None` (logged) for one this version does not know.
    pub fn decode(bytes: &[u8]) -> Option<Question> {
        decode(bytes, "control question")
    }
}

impl Answer {
    /// The bytes sent back.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Another node's answer; `None` for one this version does not understand (an empty
    /// answer, from a node that did not understand the question, included).
    pub fn decode(bytes: &[u8]) -> Option<Answer> {
        serde_json::from_slice::<Answer>(bytes)
            .ok()
            .filter(|a| a.v == VERSION)
    }
}

/// Applies `command` to this node's connections; returns how many it reached.
pub(crate) fn apply(shared: &Shared, command: &Command) -> usize {
    let hub = &shared.hub;
    match command {
        Command::Disconnect {
            user: Some(user),
            client,
        } => sessions::disconnect_user(hub, user, *client),
        Command::Disconnect {
            user: None,
            client: Some(id),
        } => usize::from(sessions::disconnect_client(hub, *id)),
        Command::Disconnect {
            user: None,
            client: None,
        } => 0,
        Command::Subscribe {
            user,
            channel,
            client,
        } => sessions::tell_user(hub, user, *client, &Control::Subscribe(channel.clone())),
        Command::Unsubscribe {
            user,
            channel,
            client,
        } => sessions::tell_user(hub, user, *client, &Control::Unsubscribe(channel.clone())),
    }
}

/// This node's channels with members whose names match `pattern`, with their counts.
pub(crate) fn local_channels(shared: &Shared, pattern: &str) -> BTreeMap<String, usize> {
    shared
        .hub
        .channels_with_members(|name| glob_match(pattern, name))
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect()
}

/// The server as the node's [`ControlHandler`] (weak: the node must not keep the server
/// alive).
pub(crate) struct Handler(pub(crate) Weak<Shared>);

impl ControlHandler for Handler {
    fn on_command(&self, command: &[u8]) {
        let (Some(shared), Some(command)) = (self.0.upgrade(), Command::decode(command)) else {
            return;
        };
        let reached = apply(&shared, &command);
        tracing::debug!(
            ?command,
            reached,
            "control command from another node applied"
        );
    }

    fn on_survey(&self, request: &[u8]) -> Bytes {
        let Some(shared) = self.0.upgrade() else {
            return Bytes::new();
        };
        match Question::decode(request) {
            Some(Question::Channels { pattern }) => Answer {
                v: VERSION,
                channels: local_channels(&shared, &pattern),
            }
            .encode(),
            // An empty answer: the asking node is not kept waiting, and skips it.
            None => Bytes::new(),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes and every other
/// byte matches itself; an empty pattern matches everything.
///
/// Greedy with one backtrack point (the latest `*`): on a mismatch the latest star takes
/// one more byte and matching resumes after it. Earlier stars never need to be revisited,
/// so this is O(pattern × name) at worst, with no recursion.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // (position after the latest `*` in the pattern, name position it resumes from)
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            pi += 1;
            star = Some((pi, ni));
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Sums the channel counts of several nodes' answers into `into`.
pub(crate) fn merge(into: &mut BTreeMap<String, usize>, answer: Answer) {
    for (name, n) in answer.channels {
        *into.entry(name).or_default() += n;
    }
}

/// Installs the server as `shared.node`'s control handler.
pub(crate) fn install(shared: &Arc<Shared>) {
    shared
        .node
        .set_control_handler(Arc::new(Handler(Arc::downgrade(shared))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_versioned_json() {
        let commands = [
            Command::Disconnect {
                user: Some("alice".into()),
                client: None,
            },
            Command::Disconnect {
                user: None,
                client: Some(u64::MAX),
            },
            Command::Subscribe {
                user: "bob".into(),
                channel: "news:1".into(),
                client: Some(7),
            },
            Command::Unsubscribe {
                user: "".into(),
                channel: "a\"b\n".into(),
                client: None,
            },
        ];
        for c in commands {
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        let wire: serde_json::Value = serde_json::from_slice(
            &Command::Subscribe {
                user: "u".into(),
                channel: "c".into(),
                client: None,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"v": 1, "op": "subscribe", "user": "u", "channel": "c"})
        );
        let q = Question::Channels {
            pattern: "chat:*".into(),
        };
        assert_eq!(Question::decode(&q.encode()), Some(q));
    }

    #[test]
    fn unknown_versions_ops_and_shapes_are_ignored_and_new_fields_tolerated() {
        for bad in [
            &br#"{"v":2,"op":"disconnect","user":"u"}"#[..],
            br#"{"v":1,"op":"rename_user","user":"u"}"#,
            br#"{"v":1,"op":"subscribe","user":"u"}"#,
            br#"{"op":"disconnect","user":"u"}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                Command::decode(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            Command::decode(br#"{"v":1,"op":"disconnect","user":"u","reason":"later field"}"#),
            Some(Command::Disconnect {
                user: Some("u".into()),
                client: None
            })
        );
        assert_eq!(Question::decode(br#"{"v":1,"op":"connections"}"#), None);
        assert_eq!(
            Question::decode(br#"{"v":1,"op":"channels"}"#),
            Some(Question::Channels {
                pattern: String::new()
            })
        );
    }

    #[test]
    fn answers_merge_by_summing_counts() {
        let a = Answer {
            v: VERSION,
            channels: [("x".to_string(), 2), ("y".to_string(), 1)].into(),
        };
        let b = Answer::decode(&a.encode()).unwrap();
        assert_eq!(b, a);
        let mut all = BTreeMap::new();
        merge(&mut all, a);
        merge(
            &mut all,
            Answer {
                v: VERSION,
                channels: [("y".to_string(), 3), ("z".to_string(), 4)].into(),
            },
        );
        assert_eq!(
            all,
            [
                ("x".to_string(), 2),
                ("y".to_string(), 4),
                ("z".to_string(), 4)
            ]
            .into()
        );
        // A node that did not understand the question answers nothing usable.
        assert_eq!(Answer::decode(b""), None);
        assert_eq!(Answer::decode(br#"{"v":2,"channels":{}}"#), None);
    }
}
