//! The `wsloop` binary: `wsloop server` and `wsloop client`.
//!
//! ```text
//! cargo run --release -- server                 # http://127.0.0.1:8080/
//! cargo run --release -- client --count 3       # three requests, then exit
//! ```
//!
//! The library does the work; this file only parses options, owns the
//! executor threads and turns results into exit codes (`logger` decides
//! how logs are printed).

mod cli;
#[cfg(feature = "forwarder")]
mod forwarder;
mod logger;

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
            for part in cli::USAGE {
                print!("{part}");
            }
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            print!("wsloop {}\nfeatures:", env!("CARGO_PKG_VERSION"));
            for name in cli::FEATURES {
                print!(" {name}");
            }
            println!();
            return ExitCode::SUCCESS;
        }
        Command::Server {
            address,
            www,
            config,
            access,
            console,
            verbosity,
            log_format,
            deployment,
        } => {
            logger::init(verbosity, log_format);
            run_server(&address, www, config, access, console, &deployment)
                .map_err(|e| e.to_string())
        }
        Command::Client {
            options,
            #[cfg(feature = "exec")]
            device,
            verbosity,
            log_format,
        } => {
            logger::init(verbosity, log_format);
            #[cfg(feature = "exec")]
            let outcome = match device {
                Some(device) => run_device(&options, &device, verbosity),
                None => run_client(&options, verbosity),
            };
            #[cfg(not(feature = "exec"))]
            let outcome = run_client(&options, verbosity);
            match outcome {
                Err(ClientFailure::Refused(err)) => {
                    // A permanent refusal: exit 2, so scripts can tell it
                    // from a failure that a retry may mend.
                    logger::last_word(&err);
                    return ExitCode::from(EXIT_REFUSED);
                }
                Err(ClientFailure::Failed(err)) => Err(err),
                Ok(()) => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => {
            logger::flush();
            ExitCode::SUCCESS
        }
        Err(err) => {
            // After every log line, and never stuck on a stderr nobody reads.
            logger::last_word(&err);
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
    check_file_limit(access.max_connections);
    let ex = Arc::new(Executor::new());
    with_threads(&ex, async {
        let server = Server::bind(address, config)
            .await?
            .with_static_files(files)
            .with_access(access);
        let server = deploy(server, deployment)?;
        // Before the banner: from then on SIGTERM means a graceful stop.
        let stop = shutdown_signal();
        #[cfg(feature = "forwarder")]
        let forwarder = forwarder::open(&deployment.forwarder, server.local_addr()?.port()).await?;
        #[cfg(feature = "forwarder")]
        ex.spawn(forwarder.run()).detach();
        #[cfg(feature = "forwarder")]
        let server = server.with_forwarder(forwarder.clone());
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
            #[cfg(feature = "forwarder")]
            let task = broadcast_stdin(Arc::clone(&ex), server.hub(), forwarder);
            #[cfg(not(feature = "forwarder"))]
            let task = broadcast_stdin(Arc::clone(&ex), server.hub());
            ex.spawn(task).detach();
        }
        // The signal watcher runs as its own task: inline, it sat in the
        // main future, which the executor polls at every wake-up of its
        // thread, and each poll cost a `recvfrom` on the signal pipe that
        // found nothing (0.3–0.7 per round trip at 10,000 req/s).
        #[cfg(feature = "signals")]
        let shutdown = ex.spawn(stop);
        // Without `signals`, `std::future::Pending` itself: the compiler
        // then sees that the server's graceful stop never runs and leaves
        // it out of the small build.
        #[cfg(not(feature = "signals"))]
        let shutdown = stop;
        // The seed's reply, for every request on every connection.
        server.run(&ex, SeedHandler::default(), shutdown).await
    })
}

/// Raises the open-file limit as far as allowed, and warns with the numbers
/// when it still cannot hold `--max-connections`: past it, `accept` fails
/// and new peers wait in the kernel's queue.
fn check_file_limit(max_connections: usize) {
    let Some(limit) = wsloop::raise_file_limit() else {
        return;
    };
    let Some(soft) = limit.soft.filter(|_| !limit.fits(max_connections)) else {
        return;
    };
    let wanted = match max_connections {
        0 => "--max-connections 0 (unlimited)".to_string(),
        n => format!("--max-connections {n}"),
    };
    let hard = limit
        .hard
        .map_or("unlimited".to_string(), |h| h.to_string());
    log::warn!(
        "open-file limit {soft} (hard limit {hard}) is too low for {wanted} plus {} \
         descriptors reserved for other files: about {} connections fit; \
         raise it (ulimit -n) or lower --max-connections",
        wsloop::RESERVED_FDS,
        soft.saturating_sub(wsloop::RESERVED_FDS)
    );
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
/// client as a command, printing each client's reply as it arrives; a
/// line `@NAME command` goes to the named client NAME alone, through the
/// forwarder (queued if it is offline).
#[cfg(feature = "console")]
async fn broadcast_stdin(
    ex: Arc<Executor<'static>>,
    hub: Arc<wsloop::Hub>,
    #[cfg(feature = "forwarder")] forwarder: wsloop::forwarder::Forwarder,
) {
    use futures_lite::{AsyncBufReadExt, StreamExt};
    let stdin = futures_lite::io::BufReader::new(smol::Unblock::new(std::io::stdin()));
    let mut lines = stdin.lines();
    println!("console: type a command and press Enter to send it to every client");
    while let Some(Ok(line)) = lines.next().await {
        let command = line.trim();
        if command.is_empty() {
            continue;
        }
        #[cfg(feature = "forwarder")]
        if let Some(named) = command.strip_prefix('@') {
            forwarder::console_send(&ex, &forwarder, named);
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

/// The client's exit status for a refusal that retrying cannot mend (and
/// for bad options): a supervisor should not restart it in a loop.
const EXIT_REFUSED: u8 = 2;

/// Why the client failed: for good (exit 2) or not (exit 1).
enum ClientFailure {
    /// [`Error::is_transient`] is false: 401, 403, 404, a bad certificate.
    Refused(String),
    /// Unreachable until attempts ran out, or a request failed.
    Failed(String),
}

/// Runs the seed client; fails unless every request got a successful
/// reply when `--count` or `--stdin` bounds the run.
fn run_client(options: &ClientOptions, verbosity: Verbosity) -> Result<(), ClientFailure> {
    // One thread: replies are then reported in the order they arrive.
    let ex = Executor::new();
    let mut report = reporter(options, verbosity);
    let mut summary = None;
    run_on(&ex, async {
        summary = Some(client::run(&ex, options, &mut report).await);
    });
    judge(completed(summary))
}

/// Runs the device (`--exec`) until the client stops or SIGINT/SIGTERM,
/// which kill the running programs' process groups on the way out.
#[cfg(feature = "exec")]
fn run_device(
    options: &ClientOptions,
    device: &client::DeviceOptions,
    verbosity: Verbosity,
) -> Result<(), ClientFailure> {
    let ex = Executor::new();
    let mut report = reporter(options, verbosity);
    let stop = shutdown_signal();
    let mut summary = None;
    run_on(&ex, async {
        summary = Some(client::run_device(&ex, options, device, stop, &mut report).await);
    });
    judge(completed(summary))
}

/// How the client prints what happens (stdout, one line each).
fn reporter(options: &ClientOptions, verbosity: Verbosity) -> impl FnMut(Event<'_>) {
    let loud = verbosity != Verbosity::Quiet;
    // (The CLI has parsed the address already.)
    let url = client::Target::parse(&options.address)
        .map_or_else(|_| options.address.clone(), |t| t.url());
    move |event| match event {
        Event::Connected(_) if loud => println!("Connected to {url}"),
        Event::Sent(request) if loud => println!("Sending request: {}", encode(request)),
        Event::Received(reply) => println!("Received from server: {}", encode(reply)),
        Event::Failed(id, err) => println!("Request {id} failed: {err}"),
        Event::Pushed(command) => println!("Command from server: {}", encode(command)),
        _ => {}
    }
}

/// The exit verdict on a finished client run.
fn judge(summary: Result<client::Summary, Error>) -> Result<(), ClientFailure> {
    let summary = summary.map_err(|e| match e.is_transient() {
        true => ClientFailure::Failed(format!("client failed: {e}")),
        false => ClientFailure::Refused(format!("client failed: {e}")),
    })?;
    if summary.all_ok() {
        Ok(())
    } else {
        Err(ClientFailure::Failed(format!(
            "{} of {} requests did not get a successful reply",
            summary.sent - summary.succeeded,
            summary.sent
        )))
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
            scope.spawn(move || {
                run_on(ex, async move {
                    let _ = stopped.recv().await;
                })
            });
        }
        let mut result = None;
        run_on(ex, async {
            result = Some(main.await);
        });
        drop(stop);
        completed(result)
    })
}

/// Runs `fut` to completion on this thread, running `ex`'s tasks
/// meanwhile. Every caller shares this one copy of smol's `block_on` loop
/// and the executor's run loop (each future type would otherwise get its
/// own); results come back through what `fut` captures.
#[inline(never)]
fn run_on<'a>(ex: &Executor<'_>, fut: impl std::future::Future<Output = ()> + 'a) {
    let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> = Box::pin(fut);
    smol::block_on(ex.run(fut))
}

/// What a future given to [`run_on`] stored: always there, since `run_on`
/// returns only once that future has completed.
fn completed<T>(result: Option<T>) -> T {
    result.expect("run_on returns only once its future has completed")
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

/// Completes on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: a signal that
/// arrives after the server said it is ready must stop it gracefully, not
/// kill it (the default action) before its task has run.
#[cfg(feature = "signals")]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    let signals = Signals::new([Signal::Int, Signal::Term]);
    async move {
        match signals {
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
}

/// Never completes: without the `signals` feature, SIGINT and SIGTERM end
/// the process at once, as for any program without handlers. The kernel
/// closes every socket, so peers see the connection end (the wsloop client
/// reconnects) but get no 1001 Close frame.
#[cfg(not(feature = "signals"))]
fn shutdown_signal() -> std::future::Pending<()> {
    std::future::pending()
}
