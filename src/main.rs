//! The fwdgate binary: parse the command line, load the configuration, run, exit.

use anyhow::Context;
use clap::Parser;
use fwdgate::cli::{Cli, Command};
use fwdgate::config::{Config, LogFormat};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fwdgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            let config = cli.gateway.load()?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Tail(args) => {
            let suffix = cli.gateway.topic_suffix.clone().unwrap_or_default();
            let filter = fwdgate::tail::Filter {
                tenant: &args.tenant,
                service: args.service.as_deref(),
                topic_suffix: &suffix,
            };
            fwdgate::tail::tail(&args.connect, &filter, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Run => {
            let config = cli.gateway.load()?;
            init_logging(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("fwdgate-io")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(fwdgate::server::run(config, shutdown_signal()))?;
            Ok(())
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT, which starts a graceful drain. A second
/// signal during the drain ends the process at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal received: exiting without finishing the drain");
        std::process::exit(1);
    });
}
