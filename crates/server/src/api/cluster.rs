//! API methods that act on every node: a command sent to the other nodes through the broker
//! and applied here, and a survey of the channels every node has members in. The Pusher
//! HTTP API uses them too.
use serde_json::{json, Value};
use switchboard_core::NodeError;

use crate::broker::control::{self, Answer, Command, Question};
use crate::state::Shared;

/// Applies `command` to the connections of every node: sends it to the other nodes, then
/// applies it here. A command aimed at one client that is connected here is applied here
/// only (client ids are unique across nodes). Sending first means that when the broker is
/// unreachable (a temporary error, 503) nothing was done anywhere.
pub(crate) async fn cluster_command(shared: &Shared, command: Command) -> Result<Value, NodeError> {
    let targets_one_client = matches!(
        command,
        Command::Disconnect {
            client: Some(_),
            ..
        } | Command::Subscribe {
            client: Some(_),
            ..
        } | Command::Unsubscribe {
            client: Some(_),
            ..
        }
    );
    if matches!(
        command,
        Command::Disconnect {
            user: None,
            client: None
        }
    ) {
        return Ok(json!({}));
    }
    if targets_one_client && control::apply(shared, &command) > 0 {
        return Ok(json!({}));
    }
    shared.node.control(command.encode()).await?;
    if !targets_one_client {
        control::apply(shared, &command);
    }
    Ok(json!({}))
}

/// The channels with members on every node whose names match `pattern`, with the member
/// counts summed over the nodes.
pub(crate) async fn cluster_channels(
    shared: &Shared,
    pattern: String,
) -> Result<std::collections::BTreeMap<String, usize>, NodeError> {
    let answers = shared
        .node
        .survey(
            Question::Channels {
                pattern: pattern.clone(),
            }
            .encode(),
        )
        .await?;
    let mut channels = control::local_channels(shared, &pattern);
    for a in answers {
        match Answer::decode(&a.data) {
            Some(answer) => control::merge(&mut channels, answer),
            None => tracing::debug!(node = %a.node, "channels answer not understood; skipped"),
        }
    }
    Ok(channels)
}
