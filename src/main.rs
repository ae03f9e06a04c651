//! The fwdgate binary: parse the command line, load the configuration, run, exit.

use anyhow::Context;
use clap::Parser;
use fwdgate::cli::{Cli, Command};
use fwdgate::config::{Config, LogFormat};
use fwdgate::logfile::LogFile;
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
            // The gateway's file, when given, tells the topic suffix (unless the flag
            // does) and the keys that find each `batch` record's container id and line.
            let file = match &cli.gateway.config {
                Some(path) => Config::from_file(path)?,
                None => Config::default(),
            };
            let suffix = cli
                .gateway
                .topic_suffix
                .clone()
                .unwrap_or(file.output.topic_suffix);
            let filter = fwdgate::tail::Filter {
                tenant: &args.tenant,
                service: args.service.as_deref(),
                topic_suffix: &suffix,
            };
            let stdout = &mut std::io::stdout().lock();
            fwdgate::tail::tail(&args.connect, &filter, &file.route, stdout)?;
            Ok(())
        }
        Command::Run => {
            let config = cli.gateway.load()?;
            let log_file = init_logging(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("fwdgate-io")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                reopen_on_sighup(log_file)?;
                // The handlers are installed before the gateway reports ready, so a
                // SIGTERM sent right after "fwdgate ready" drains instead of killing.
                let shutdown = shutdown_signal()?;
                fwdgate::server::run(config, shutdown).await?;
                Ok(())
            })
        }
    }
}

/// Installs the log subscriber; returns the log file when logging to one.
fn init_logging(config: &Config) -> anyhow::Result<Option<LogFile>> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.file.is_empty() {
        let builder = builder.with_writer(std::io::stderr);
        match config.log.format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return Ok(None);
    }
    let file = LogFile::open(config.log.file.as_ref())
        .with_context(|| format!("cannot open log file {}", config.log.file))?;
    let builder = builder.with_writer(file.clone()).with_ansi(false);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(Some(file))
}

/// SIGHUP reopens the log file (and no longer ends the process, its default action).
fn reopen_on_sighup(log_file: Option<LogFile>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &log_file {
                Some(file) => match file.reopen() {
                    Ok(()) => tracing::info!("SIGHUP: log file reopened"),
                    Err(e) => eprintln!("fwdgate: cannot reopen the log file: {e}"),
                },
                None => tracing::info!("SIGHUP: logging to standard error, nothing to reopen"),
            }
        }
    });
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on
/// the first of them, which starts a graceful drain. A second signal during the drain
/// ends the process at once.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
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
    })
}
