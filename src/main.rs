//! The `wsloop` binary: `wsloop server` and `wsloop client`.
//!
//! ```text
//! cargo run --release -- server                 # http://127.0.0.1:8080/
//! cargo run --release -- client --count 3       # three requests, then exit
//! ```
//!
//! The library does the work; this file only parses options, decides how
//! logs are printed, owns the executor threads and turns results into exit
//! codes.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use smol::Executor;
use wsloop::client::{self, ClientOptions, Event};
use wsloop::http::StaticFiles;
use wsloop::{encode, AccessPolicy, Config, Error, SeedHandler, Server};

use cli::{Command, Deployment, Verbosity};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("wsloop: {err}\n(see wsloop --help)");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Server {
            address,
            www,
            config,
            access,
            console,
            verbosity,
            deployment,
        } => {
            init_logging(verbosity);
            run_server(&address, www, config, access, console, &deployment)
                .map_err(|e| e.to_string())
        }
        Command::Client { options, verbosity } => {
            init_logging(verbosity);
            run_client(&options, verbosity)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wsloop: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGINT or SIGTERM, with one executor thread per core.
/// With `console`, each stdin line is broadcast to every client as a command.
fn run_server(
    address: &str,
    www: Option<std::path::PathBuf>,
    config: Config,
    access: AccessPolicy,
    console: bool,
    deployment: &Deployment,
) -> Result<(), Error> {
    let files = static_files(www)?;
    let ex = Arc::new(Executor::new());
    with_threads(&ex, async {
        let server = Server::bind(address, config)
            .await?
            .with_static_files(files)
            .with_access(access);
        let server = deploy(server, deployment)?;
        let scheme = if deployment.tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!(
            "wsloop server on {scheme}://{}/ (WebSocket at /server)",
            server.local_addr()?
        );
        // (The CLI refuses --console in a build without the feature.)
        #[cfg(not(feature = "console"))]
        let _ = console;
        #[cfg(feature = "console")]
        if console {
            ex.spawn(broadcast_stdin(Arc::clone(&ex), server.hub()))
                .detach();
        }
        // The seed's reply, for every request on every connection.
        server
            .run(&ex, SeedHandler::default(), shutdown_signal())
            .await
    })
}

/// Applies `--cert/--key`, `--trusted-proxy` and `--public-metrics` (the
/// CLI has refused those this build leaves out).
fn deploy(server: Server, deployment: &Deployment) -> Result<Server, Error> {
    #[cfg(feature = "tls")]
    let server = match &deployment.tls {
        Some((cert, key)) => {
            server.with_tls(wsloop::tls::server::ServerTls::from_pem_files(cert, key)?)
        }
        None => server,
    };
    #[cfg(feature = "trusted-proxy")]
    let server = {
        let mut proxies = wsloop::forwarded::TrustedProxies::new();
        for spec in &deployment.trusted_proxies {
            proxies.add(spec).map_err(Error::Config)?;
        }
        server.with_trusted_proxies(proxies)
    };
    Ok(server.with_public_metrics(deployment.public_metrics))
}

/// What `/` serves: the `--www` directory, else the built-in page.
#[cfg(feature = "static-files")]
fn static_files(www: Option<std::path::PathBuf>) -> Result<StaticFiles, Error> {
    match www {
        Some(dir) => StaticFiles::from_dir(&dir)
            .map_err(|e| Error::Config(format!("--www {}: {e}", dir.display()))),
        None => Ok(StaticFiles::builtin()),
    }
}

/// What `/` serves: the built-in page (the CLI refuses `--www` in a build
/// without the `static-files` feature).
#[cfg(not(feature = "static-files"))]
fn static_files(_: Option<std::path::PathBuf>) -> Result<StaticFiles, Error> {
    Ok(StaticFiles::builtin())
}

/// The `--console`: reads stdin lines and pushes each to every connected
/// client as a command, printing each client's reply as it arrives.
#[cfg(feature = "console")]
async fn broadcast_stdin(ex: Arc<Executor<'static>>, hub: Arc<wsloop::Hub>) {
    use futures_lite::{AsyncBufReadExt, StreamExt};
    let stdin = futures_lite::io::BufReader::new(smol::Unblock::new(std::io::stdin()));
    let mut lines = stdin.lines();
    println!("console: type a command and press Enter to send it to every client");
    while let Some(Ok(line)) = lines.next().await {
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        let pending = hub.broadcast_request(command);
        println!("console: sent {command:?} to {} client(s)", pending.len());
        for (client, request) in pending {
            // Each reply is awaited in its own task so a slow client does
            // not hold back the others' output.
            ex.spawn(async move {
                match request {
                    Ok(pending) => match pending.wait().await {
                        Ok(reply) => println!("client {client} replied: {}", encode(&reply)),
                        Err(err) => println!("client {client}: {err}"),
                    },
                    Err(err) => println!("client {client}: {err}"),
                }
            })
            .detach();
        }
    }
}

/// Runs the seed client; fails unless every request got a successful
/// reply when `--count` or `--stdin` bounds the run.
fn run_client(options: &ClientOptions, verbosity: Verbosity) -> Result<(), String> {
    // One thread: replies are then reported in the order they arrive.
    let ex = Executor::new();
    let loud = verbosity != Verbosity::Quiet;
    let summary = smol::block_on(ex.run(async {
        client::run(&ex, options, |event| match event {
            Event::Connected(addr) if loud => println!("Connected to ws://{addr}/server"),
            Event::Sent(request) if loud => println!("Sending request: {}", encode(request)),
            Event::Received(reply) => println!("Received from server: {}", encode(reply)),
            Event::Failed(id, err) => println!("Request {id} failed: {err}"),
            Event::Pushed(command) => println!("Command from server: {}", encode(command)),
            _ => {}
        })
        .await
    }))
    .map_err(|e| format!("client failed: {e}"))?;
    if summary.all_ok() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} requests did not get a successful reply",
            summary.sent - summary.succeeded,
            summary.sent
        ))
    }
}

/// Runs `main` on `ex` with the calling thread plus helper threads, one
/// per CPU the process may run on, so connection tasks use every core.
fn with_threads<T: Send>(
    ex: &Executor<'_>,
    main: impl std::future::Future<Output = T> + Send,
) -> T {
    let extra = usable_cpus().saturating_sub(1);
    let (stop, stopped) = async_channel::bounded::<()>(1);
    thread::scope(|scope| {
        for _ in 0..extra {
            let stopped = stopped.clone();
            scope.spawn(move || smol::block_on(ex.run(stopped.recv())));
        }
        let result = smol::block_on(ex.run(main));
        drop(stop);
        result
    })
}

/// The CPUs this process may run on: its affinity mask, as `nproc` counts
/// (so `taskset -c 0 wsloop server` runs one thread).
#[cfg(target_os = "linux")]
fn usable_cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |cpus| cpus.count() as usize)
}

/// The CPUs this process may run on.
#[cfg(not(target_os = "linux"))]
fn usable_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Completes on the first SIGINT or SIGTERM.
#[cfg(feature = "signals")]
async fn shutdown_signal() {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    match Signals::new([Signal::Int, Signal::Term]) {
        Ok(mut signals) => {
            if let Some(Ok(signal)) = signals.next().await {
                log::info!("received {signal:?}; shutting down");
            }
        }
        Err(err) => {
            log::warn!("cannot watch for signals ({err}); stop me with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

/// Never completes: without the `signals` feature, SIGINT and SIGTERM end
/// the process at once, as for any program without handlers. The kernel
/// closes every socket, so peers see the connection end (the wsloop client
/// reconnects) but get no 1001 Close frame.
#[cfg(not(feature = "signals"))]
async fn shutdown_signal() {
    std::future::pending::<()>().await
}

/// Prints library log lines to stderr as `wsloop: LEVEL message`.
fn init_logging(verbosity: Verbosity) {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            if record.target().starts_with("wsloop") {
                eprintln!("wsloop: {:<5} {}", record.level(), record.args());
            }
        }
        fn flush(&self) {}
    }
    let level = match verbosity {
        Verbosity::Quiet => log::LevelFilter::Warn,
        Verbosity::Normal => log::LevelFilter::Info,
        Verbosity::Verbose => log::LevelFilter::Trace,
    };
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
