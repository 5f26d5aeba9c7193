//! The one choice that differs between Centrifugo's JSON and Protobuf clients: how the
//! protocol's messages are put into bytes. A connection picks its [`Encoding`] once, at the
//! upgrade; everything above it (the driver, its transports) works with the protocol's
//! model types and asks the encoding for bytes.

use bytes::Bytes;
use switchboard_core::Publication as CorePublication;

use super::{protobuf, Command, DecodeError, Push, Reply};

/// How a Centrifugo connection encodes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Newline-delimited JSON in text frames.
    #[default]
    Json,
    /// Length-delimited Protobuf in binary frames.
    Protobuf,
}

impl Encoding {
    /// The encoding a client asks for at the upgrade, as Centrifugo reads it: the query
    /// parameter `cf_protocol=protobuf` (or the older `format=protobuf`), or the WebSocket
    /// subprotocol `centrifuge-protobuf` the SDKs offer.
    pub fn negotiate(query: Option<&str>, subprotocol: Option<&str>) -> Encoding {
        let asks_protobuf = |name: &str| {
            query.into_iter().flat_map(|q| q.split('&')).any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, v)| k == name && v == "protobuf")
            })
        };
        if subprotocol == Some(protobuf::SUBPROTOCOL)
            || asks_protobuf("cf_protocol")
            || asks_protobuf("format")
        {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }

    /// The protocol name connections of this encoding are recorded and counted under.
    pub fn protocol(self) -> &'static str {
        match self {
            Encoding::Json => super::PROTOCOL,
            Encoding::Protobuf => protobuf::PROTOCOL,
        }
    }

    /// Whether frames are binary WebSocket messages (else text).
    pub fn is_binary(self) -> bool {
        self == Encoding::Protobuf
    }

    /// One reply, ready to be batched with others.
    pub fn reply(self, reply: &Reply) -> Bytes {
        match self {
            Encoding::Json => reply.encode(),
            Encoding::Protobuf => protobuf::encode_reply(reply),
        }
    }

    /// One push, ready to be batched with others.
    pub fn push(self, push: &Push) -> Bytes {
        match self {
            Encoding::Json => push.encode(),
            Encoding::Protobuf => protobuf::encode_push(push),
        }
    }

    /// The `pub` push of a publication: encoded once per publication and encoding, shared
    /// by every subscriber.
    pub fn publication_push(self, publication: &CorePublication) -> Bytes {
        match self {
            Encoding::Json => super::encode_publication_push(publication),
            Encoding::Protobuf => protobuf::encode_publication_push(publication),
        }
    }

    /// Several replies and pushes as one frame.
    pub fn batch<I>(self, messages: I) -> Bytes
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        match self {
            Encoding::Json => super::encode_batch(messages),
            Encoding::Protobuf => protobuf::encode_batch(messages),
        }
    }

    /// The server's ping.
    pub fn ping(self) -> Bytes {
        match self {
            Encoding::Json => super::ping_frame(),
            Encoding::Protobuf => Bytes::from_static(protobuf::PING),
        }
    }

    /// The commands of one client frame, lazily (see [`super::commands`] and
    /// [`protobuf::commands`]).
    pub fn commands(self, frame: &Bytes) -> EncodedCommands<'_> {
        match self {
            Encoding::Json => EncodedCommands::Json(super::commands(frame)),
            Encoding::Protobuf => EncodedCommands::Protobuf(protobuf::commands(frame.clone())),
        }
    }
}

/// The commands of one frame in either encoding; see [`Encoding::commands`].
#[derive(Debug, Clone)]
pub enum EncodedCommands<'a> {
    /// JSON lines.
    Json(super::Commands<'a>),
    /// Length-delimited Protobuf.
    Protobuf(protobuf::Commands),
}

impl Iterator for EncodedCommands<'_> {
    type Item = Result<Command, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EncodedCommands::Json(c) => c.next(),
            EncodedCommands::Protobuf(c) => c.next(),
        }
    }
}

impl std::iter::FusedIterator for EncodedCommands<'_> {}
