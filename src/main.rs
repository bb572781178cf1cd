//! The `brunnr` binary: `serve`, `config check`, the client commands and the load benchmark.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

// glibc's malloc spent a sixth of the CPU of the load benchmark; mimalloc suits many small,
// short-lived allocations across threads (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "brunnr", version, about = "Event fan-out hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server.
    Serve {
        /// The YAML configuration (none: the defaults, listening on 127.0.0.1:6600).
        #[arg(long, env = "BRUNNR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manages norns on a running server.
    Norn {
        #[command(flatten)]
        server: brunnr::client::ServerArgs,
        #[command(subcommand)]
        command: brunnr::client::NornCommand,
    },
    /// Posts one WRP event to a running server.
    Publish {
        #[command(flatten)]
        server: brunnr::client::ServerArgs,
        #[command(flatten)]
        args: brunnr::client::PublishArgs,
    },
    /// Prints the live events of one or more keys as they come (one JSON envelope per line).
    Tail {
        #[command(flatten)]
        server: brunnr::client::ServerArgs,
        #[command(flatten)]
        args: brunnr::client::TailArgs,
    },
    /// Load and latency benchmark against a local receiver (see docs/benchmarks.md).
    Bench(brunnr::bench::BenchArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Checks a configuration file (and BRUNNR_ variables) without starting.
    Check { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BRUNNR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve { config } => {
            let config = brunnr::config::Config::load(config.as_deref(), std::env::vars())?;
            runtime.block_on(serve(config))
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            brunnr::config::Config::load(Some(&file), std::env::vars())?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Norn { server, command } => {
            runtime.block_on(brunnr::client::norn(&server, command))
        }
        Command::Publish { server, args } => {
            runtime.block_on(brunnr::client::publish(&server, args))
        }
        Command::Tail { server, args } => runtime.block_on(brunnr::client::tail(&server, args)),
        Command::Bench(args) => runtime.block_on(brunnr::bench::run(args)),
    }
}

async fn serve(config: brunnr::config::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    brunnr::run(config, listener, shutdown_signal()).await?;
    tracing::info!("Stopped.");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
