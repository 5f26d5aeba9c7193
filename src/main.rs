//! The `switchboard` binary: `serve` (the default) runs the server, `connect` is a client.
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::ServeArgs;
use switchboard::connect::ConnectArgs;
use switchboard_server::{shutdown, Server};

/// A real-time WebSocket server: rooms, broadcast, heartbeat, compression, TLS.
#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, the flags of `serve` apply.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<ServeArgs>),
    /// Connect to a WebSocket URL, send stdin lines, print what arrives.
    Connect(ConnectArgs),
    /// Load-test a server on this machine (echo, fanout, conns, slow).
    Bench(switchboard::bench::BenchArgs),
    /// Mint a development JWT: a connection token, or a subscription token with --channel.
    Token(switchboard::token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Connect(args)) => switchboard::connect::run(args),
        Some(Command::Bench(args)) => switchboard::bench::run(args),
        Some(Command::Token(args)) => switchboard::token::run(args),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = switchboard::logging::init(config.log_format, &config.log_level) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let server = Server::builder().config(config).build()?.bind().await?;
        // The one stdout line tests and scripts wait for; everything else goes to stderr.
        let mut out = std::io::stdout().lock();
        writeln!(out, "Switchboard listening on {}", server.url())?;
        out.flush()?;
        drop(out);
        server
            .run_until(async {
                shutdown::os_signal().await;
                // A second signal during the graceful drain means "now": exit at once.
                tokio::spawn(async {
                    shutdown::os_signal().await;
                    eprintln!("second signal: exiting without waiting for connections");
                    std::process::exit(130);
                });
            })
            .await
    });
    // Connections still lingering past the shutdown timeout are abandoned, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
