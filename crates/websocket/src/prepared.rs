//! TODO
/// Placeholder.
pub struct PreparedMessage;
