//! The client side of the Autobahn|Testsuite: drives `wstest -m
//! fuzzingserver` through wsloop's connection loop, so the suite checks how
//! wsloop behaves as a *client* (masking, framing, fragmentation, UTF-8
//! validation, close handshake) as `echo_server` lets it check the server.
//!
//! The suite's client protocol: connect to `/getCaseCount` (one text message,
//! the number of cases), then for each case N to `/runCase?case=N&agent=A`
//! and echo every message until the suite closes, then to
//! `/updateReports?agent=A` so the suite writes its report.
//!
//! Each connection is [`wsloop::client::connect_to`]: wsloop's own opening
//! handshake (so the suite checks that too), then the same loop wsloop's own
//! client and server run.
//!
//! Run it (with the fuzzingserver listening; `scripts/autobahn` does both):
//!
//! ```sh
//! cargo run --release --example autobahn_client -- --address 127.0.0.1:9002
//! ```
//!
//! What to watch for: one line per case with how the connection ended. Many
//! cases *should* end in an error — the suite sends broken frames on purpose
//! and wsloop must fail the connection with the right close code. The
//! verdicts are in the suite's report (`reports/clients/index.json`), not in
//! this program's exit code, which only says whether the suite was reachable.

use std::process::ExitCode;
use std::time::Duration;

use wsloop::{Config, Ended, Error, Frame, Handler, Message, Peer};

/// Where the fuzzingserver listens unless `--address` says otherwise.
const DEFAULT_ADDRESS: &str = "127.0.0.1:9002";

/// The agent name the report files are filed under.
const DEFAULT_AGENT: &str = "wsloop";

/// The suite sends messages of up to 16 MiB; wsloop's small default read
/// buffer (512 B, sized for idle connections) would read them in tiny
/// pieces, since tungstenite reads at most this much per syscall.
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Largest message accepted: the suite's 9.x cases send up to 16 MiB.
const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Upper bound for one case, so a stuck case cannot hang the run (the
/// slowest 9.x cases take seconds; the loop's own idle timeout is 60 s).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a connection does with each inbound text or binary message.
enum Role {
    /// Send it straight back (the `/runCase` connections).
    Echo,
    /// Forward its text to a channel (the `/getCaseCount` connection).
    Collect(async_channel::Sender<String>),
}

impl Handler for Role {
    /// Never called: `on_frame` below replaces the JSON decoding that would
    /// call it. Required by the trait, so it answers nothing.
    async fn on_message(&self, _peer: &Peer, _message: Message) -> Option<Message> {
        None
    }

    async fn on_frame(&self, _peer: &Peer, frame: Frame) -> Option<Frame> {
        match self {
            Role::Echo => Some(frame),
            Role::Collect(sender) => {
                if let Frame::Text(text) = &frame {
                    let _ = sender.send(text.to_string()).await;
                }
                None
            }
        }
    }
}

/// The command line.
struct Args {
    address: String,
    agent: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        address: DEFAULT_ADDRESS.to_string(),
        agent: DEFAULT_AGENT.to_string(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg, None),
        };
        let slot = match name.as_str() {
            "--address" | "-a" => &mut args.address,
            "--agent" => &mut args.agent,
            "--help" | "-h" => {
                return Err(format!(
                    "usage: autobahn_client [--address HOST:PORT] [--agent NAME]\n\
                     (defaults {DEFAULT_ADDRESS}, {DEFAULT_AGENT})"
                ))
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        };
        *slot = match inline.or_else(|| argv.next()) {
            Some(value) => value,
            None => return Err(format!("{name} needs a value")),
        };
    }
    Ok(args)
}

/// Runs one connection to its end with `role`, within [`CASE_TIMEOUT`].
async fn run(address: &str, path: &str, config: &Config, role: Role) -> Result<Ended, Error> {
    // wsloop's own client handshake, then the same loop the server runs.
    let conn = wsloop::client::connect_to(address, path, config).await?;
    wsloop::timeout(CASE_TIMEOUT, conn.run(role))
        .await
        .unwrap_or(Err(Error::Timeout("case did not finish")))
}

async fn drive(args: &Args, config: &Config) -> Result<(), Error> {
    // 1. How many cases the fuzzingserver was configured with.
    let (sender, counts) = async_channel::unbounded();
    run(
        &args.address,
        "/getCaseCount",
        config,
        Role::Collect(sender),
    )
    .await?;
    let count: u32 = match counts.try_recv() {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("bad case count {text:?}")))?,
        Err(_) => return Err(Error::Config("the suite sent no case count".into())),
    };
    println!("{count} cases");

    // 2. Every case, one connection each, echoing until the suite closes.
    // How a case ends is the suite's to judge; a failed connection is often
    // the expected outcome, so it is reported and the run goes on.
    for case in 1..=count {
        let path = format!("/runCase?case={case}&agent={}", args.agent);
        match run(&args.address, &path, config, Role::Echo).await {
            Ok(ended) => println!("case {case}/{count}: {ended}"),
            Err(err) => println!("case {case}/{count}: failed: {err}"),
        }
    }

    // 3. Ask the suite to write its report for this agent.
    let path = format!("/updateReports?agent={}", args.agent);
    let (sender, _ignored) = async_channel::unbounded();
    run(&args.address, &path, config, Role::Collect(sender)).await?;
    println!("report updated for agent {}", args.agent);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = Config::default()
        .with_max_message_size(MAX_MESSAGE_SIZE)
        .with_read_buffer_size(READ_BUFFER_SIZE)
        // The suite floods on purpose (16 MiB messages, 64-byte fragments
        // by the thousand): the per-peer abuse limits are off here.
        .with_max_bytes_per_second(0)
        .with_max_frames_per_second(0)
        .with_max_fragments(0);
    match smol::block_on(drive(&args, &config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("autobahn client: {err}");
            ExitCode::FAILURE
        }
    }
}
