//! A data message framed once (and compressed once) for broadcast.
use bytes::Bytes;

use crate::deflate::DeflateParams;
use crate::message::Message;

/// A data message framed once for broadcast; cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct PreparedMessage {
    _p: std::sync::Arc<()>,
}

impl PreparedMessage {
    /// Text or Binary only; builds the unmasked server frame at once.
    pub fn new(msg: Message) -> PreparedMessage {
        let _ = msg;
        todo!()
    }

    /// Header + payload, uncompressed, server role.
    pub fn frame(&self) -> &Bytes {
        todo!()
    }

    /// The frame to send on a connection with the given deflate parameters.
    pub fn frame_for(&self, deflate: Option<&DeflateParams>, threshold: usize) -> Bytes {
        let _ = (deflate, threshold);
        todo!()
    }

    /// The unframed payload.
    pub fn payload(&self) -> &Bytes {
        todo!()
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        todo!()
    }
}
