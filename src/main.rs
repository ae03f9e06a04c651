//! The fwdgate binary: parse the command line, load the configuration, run, exit.

use anyhow::Context;
use clap::CommandFactory;
use fwdgate::cli::{error_chain, Cli, Command, ParseOutcome, ProxyArgs, TailArgs};
use fwdgate::config::{Config, LogFormat};
use fwdgate::logfile::LogFile;
use fwdgate::tail::Stopped;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// The global allocator, when a feature asks for one other than the C library's
/// (BENCHMARKS.md, "Allocators"). Only Rust's allocations go through it; libzmq and
/// zstd, being C, keep the C library's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With the C library's allocator (glibc): blocks of 4 MiB and more are mapped when
/// allocated and unmapped when freed. By default glibc raises that threshold to the
/// size of a mapped block it frees (up to 32 MiB) and its trim threshold to twice that,
/// so after large short-lived buffers (gzip bombs being decompressed and refused) it
/// may keep tens of MB free in its arenas for good: in one soak, RSS went from 18 to 89
/// MB and stayed there after the load. A fixed threshold turns that off; 4 MiB keeps
/// the read buffers of large requests (hundreds of KiB) in the arenas, where they are
/// cheap. BENCHMARKS.md, "Allocators".
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
))]
fn tune_malloc() {
    // SAFETY: mallopt only sets a parameter of the C library's allocator; it is called
    // first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(any(feature = "jemalloc", feature = "mimalloc"))
)))]
fn tune_malloc() {}

/// Exit status of every failure: a bad flag, variable or file, a port already taken, a
/// runtime error. 0 is success, and help or version printed.
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    tune_malloc();
    let cli = match fwdgate::cli::parse(std::env::args_os()) {
        ParseOutcome::Parsed(cli) => cli,
        ParseOutcome::Clap(e) => {
            // help and --version go to stdout and are no failure
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
        ParseOutcome::BadVariable(message) => {
            eprintln!("fwdgate: error: {message}");
            return ExitCode::from(FAILURE);
        }
    };
    match run(*cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fwdgate: error: {}", error_chain(e.as_ref()));
            ExitCode::from(FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::CheckConfig(args)) => {
            let config = args.load()?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Some(Command::Tail(args)) => tail(args),
        Some(Command::Proxy(args)) => proxy(args),
        Some(Command::Completions { shell }) => {
            let out = &mut std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "fwdgate", out);
            Ok(out.flush()?)
        }
        Some(Command::Man { out_dir: None }) => {
            let out = &mut std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command()).render(out)?;
            Ok(out.flush()?)
        }
        Some(Command::Man { out_dir: Some(dir) }) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
            Ok(())
        }
        Some(Command::Run(_)) | None => {
            let args = cli.gateway_args().clone();
            let config = args.load()?;
            let log_file = init_logging(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("fwdgate-io")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let reloads = on_sighup(log_file, args)?;
                // The handlers are installed before the gateway reports ready, so a
                // SIGTERM sent right after "fwdgate ready" drains instead of killing.
                let shutdown = shutdown_signal()?;
                fwdgate::server::run(config, shutdown, reloads).await?;
                Ok(())
            })
        }
    }
}

/// `fwdgate tail`: prints until SIGTERM or SIGINT (then exits 0), or until its reader
/// goes away.
fn tail(args: &TailArgs) -> anyhow::Result<()> {
    // The gateway's file, when given, tells the topic suffix (unless the flag does) and
    // the keys that find each `batch` record's container id and line.
    let file = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let suffix = args
        .topic_suffix
        .clone()
        .unwrap_or(file.output.topic_suffix);
    let filter = fwdgate::tail::Filter {
        tenant: &args.tenant,
        service: args.service.as_deref(),
        topic_suffix: &suffix,
    };
    // Handlers, not the default action: as PID 1 of a container a signal without a
    // handler is ignored, and `docker stop` would wait and then kill.
    let (stop, stop_writer) =
        std::os::unix::net::UnixStream::pair().context("cannot make the signal pipe")?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let writer = stop_writer
            .try_clone()
            .context("cannot make the signal pipe")?;
        signal_hook::low_level::pipe::register(signal, writer)
            .with_context(|| format!("cannot install the handler of signal {signal}"))?;
    }
    let stdout = &mut std::io::stdout().lock();
    match fwdgate::tail::tail(&args.connect, &filter, &file.route, &stop, stdout)? {
        Stopped::OnRequest | Stopped::OutputClosed => Ok(()),
    }
}

/// `fwdgate proxy`: forwards until SIGTERM or SIGINT, then stops and exits 0.
fn proxy(args: &ProxyArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "{}: invalid log level {:?}",
            args.origin_of("log_level"),
            args.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_in_colour());
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // One thread is plenty for the HTTP endpoint; libzmq's own threads do the work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // Installed before anything is bound, so a SIGTERM right after "fwdgate proxy
        // ready" stops the proxy instead of killing it.
        let shutdown = shutdown_signal()?;
        let proxy = fwdgate::proxy::Proxy::start(&args.settings())?;
        proxy.run(shutdown).await?;
        Ok(())
    });
    // The stop is bounded inside `run`; a thread still closing sockets past that bound
    // is not waited for (dropping the runtime would wait for it).
    runtime.shutdown_background();
    result
}

/// Colour in the log only for a person at a terminal, and never with NO_COLOR set
/// (https://no-color.org: present and not empty).
fn log_in_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Installs the log subscriber; returns the log file when logging to one.
fn init_logging(config: &Config) -> anyhow::Result<Option<LogFile>> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log level {:?}", config.log.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if config.log.file.is_empty() {
        let builder = builder
            .with_writer(std::io::stderr)
            .with_ansi(log_in_colour());
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

/// SIGHUP reopens the log file (for logrotate) and loads the configuration again (file,
/// variables and flags, as at start), which the gateway applies as far as it can while
/// running (and SIGHUP no longer ends the process, its default action). Returns where
/// the loaded configurations go.
fn on_sighup(
    log_file: Option<LogFile>,
    args: fwdgate::cli::GatewayArgs,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<Config>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &log_file {
                Some(file) => match file.reopen() {
                    Ok(()) => tracing::info!("SIGHUP: log file reopened"),
                    Err(e) => eprintln!("fwdgate: cannot reopen the log file: {e}"),
                },
                None => tracing::info!("SIGHUP: logging to standard error, nothing to reopen"),
            }
            match args.load() {
                Ok(config) => {
                    if tx.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    error = %error_chain(&e),
                    "SIGHUP: configuration not reloaded; the gateway goes on as it was"
                ),
            }
        }
    });
    Ok(rx)
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
