//! `switchboard connect URL`: an interactive WebSocket client (not implemented yet).
use std::process::ExitCode;

use clap::Args;

/// Flags of the `connect` command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// `ws://` or `wss://` URL to connect to.
    pub url: String,
}

/// Run the client until the connection ends.
pub fn run(_args: ConnectArgs) -> ExitCode {
    eprintln!("error: connect is not implemented yet");
    ExitCode::FAILURE
}
