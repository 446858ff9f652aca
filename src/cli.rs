//! Command-line parsing for the `wsloop` binary: `wsloop server ...`,
//! `wsloop client ...`, and the original program's `--mode` spelling.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;
use wsloop::client::ClientOptions;
use wsloop::{parse_duration, AccessPolicy, Config, TOKEN_ENV};

/// The address both modes use unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";

pub const USAGE: &str = "\
wsloop — persistent WebSocket messaging

USAGE:
    wsloop server [OPTIONS]      serve static files at / and the WebSocket at /server
    wsloop client [OPTIONS]      dial ws://ADDRESS/server and send requests
    wsloop --mode server|client [OPTIONS]   (the original Go program's spelling)

COMMON OPTIONS:
    --address HOST:PORT    server: where to listen; client: where to dial
                           [default: 127.0.0.1:8080]
    --heartbeat DURATION   ping a quiet peer this often (min 1s) [default: 30s]
    --idle-timeout DURATION
                           drop a peer silent this long [default: 2 x heartbeat]
    --max-message-size BYTES
                           largest inbound message; larger closes with 1009
                           [default: 1048576]
    --handshake-timeout DURATION
                           time allowed for the HTTP/WebSocket handshake [default: 10s]
    --token-file PATH      shared secret: the server requires it at /server
                           (Authorization: Bearer, or ?token=); the client
                           sends it. Default: $WSLOOP_TOKEN, if set.
    -q, --quiet            log only warnings and errors
    -v, --verbose          also log every message
    -h, --help             print this help

SERVER OPTIONS:
    --www DIR              serve files from DIR at / [default: a built-in page]
    --queue N              pushed messages that may wait per client [default: 64]
    --console              read commands from stdin and push each to every
                           client, printing their replies
    --allow-origin URL     also accept upgrades from this browser origin
                           (repeatable), e.g. https://example.com
    --allow-any-origin     turn the origin check off (logged as a warning)
    --max-connections N    concurrent connections; 503 past it
                           [default: 10000; 0 = unlimited]
    --max-connections-per-ip N
                           concurrent connections per remote IP
                           [default: 1000; 0 = unlimited]
    --max-messages-per-sec N
                           per connection; excess closes with 1008
                           [default: 10000; 0 = unlimited]
    --max-frames-per-sec N frames of any kind per connection (continuations,
                           pongs too); excess closes with 1008
                           [default: 50000; 0 = unlimited]
    --max-bytes-per-sec N  bytes per connection; excess closes with 1008
                           [default: 67108864; 0 = unlimited]

CLIENT OPTIONS:
    --interval DURATION    time between requests [default: 2s]
    --count N              stop after N replies; exit 0 only if all matched
    --stdin                send one request per input line instead of on a timer
    --request-timeout DURATION
                           fail a request with no reply after this [default: 10s]
    --no-reconnect         exit when the connection drops instead of reconnecting
    --reconnect-delay DURATION
                           first wait before reconnecting; doubles per attempt,
                           with jitter [default: 500ms]
    --max-reconnect-delay DURATION
                           longest wait between attempts [default: 30s]
    --max-attempts N       give up after N failed attempts in a row
                           [default: never]

DURATIONS are seconds (2, 0.2) or carry a unit (200ms, 30s, 5m).
";

/// How much the binary logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    Help,
    Server {
        address: String,
        www: Option<PathBuf>,
        config: Config,
        access: AccessPolicy,
        console: bool,
        verbosity: Verbosity,
    },
    Client {
        options: ClientOptions,
        verbosity: Verbosity,
    },
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    parse_inner(args).map_err(|e| e.to_string())
}

fn parse_inner(args: impl IntoIterator<Item = OsString>) -> Result<Command, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut mode: Option<String> = None;
    let mut address = DEFAULT_ADDRESS.to_string();
    let mut www = None;
    let mut config = Config::default();
    let mut verbosity = Verbosity::Normal;
    let mut client = ClientOptions::new(DEFAULT_ADDRESS);
    let mut console = false;
    let mut access = AccessPolicy::default();
    let mut token_file: Option<PathBuf> = None;

    while let Some(arg) = parser.next()? {
        match arg {
            Value(word) if mode.is_none() => mode = Some(word.string()?),
            Long("mode") => mode = Some(parser.value()?.string()?),
            Long("address") => address = parser.value()?.string()?,
            Long("www") => www = Some(PathBuf::from(parser.value()?)),
            Long("heartbeat") => config.heartbeat = duration(&mut parser)?,
            Long("idle-timeout") => config.idle_timeout = Some(duration(&mut parser)?),
            Long("max-message-size") => config.max_message_size = parser.value()?.parse()?,
            Long("handshake-timeout") => config.handshake_timeout = duration(&mut parser)?,
            Long("queue") => config.outbound_capacity = parser.value()?.parse()?,
            Long("interval") => client.interval = duration(&mut parser)?,
            Long("count") => client.count = Some(parser.value()?.parse()?),
            Long("stdin") => client.stdin = true,
            Long("console") => console = true,
            Long("allow-origin") => access.allowed_origins.push(parser.value()?.string()?),
            Long("allow-any-origin") => access.allow_any_origin = true,
            Long("max-connections") => access.max_connections = parser.value()?.parse()?,
            Long("max-connections-per-ip") => {
                access.max_connections_per_ip = parser.value()?.parse()?
            }
            Long("max-messages-per-sec") => {
                config.max_messages_per_second = parser.value()?.parse()?
            }
            Long("max-frames-per-sec") => config.max_frames_per_second = parser.value()?.parse()?,
            Long("max-bytes-per-sec") => config.max_bytes_per_second = parser.value()?.parse()?,
            Long("token-file") => token_file = Some(PathBuf::from(parser.value()?)),
            Long("request-timeout") => config.request_timeout = duration(&mut parser)?,
            Long("no-reconnect") => client.reconnect.enabled = false,
            Long("reconnect-delay") => client.reconnect.initial_delay = duration(&mut parser)?,
            Long("max-reconnect-delay") => client.reconnect.max_delay = duration(&mut parser)?,
            Long("max-attempts") => client.reconnect.max_attempts = Some(parser.value()?.parse()?),
            Short('q') | Long("quiet") => verbosity = Verbosity::Quiet,
            Short('v') | Long("verbose") => verbosity = Verbosity::Verbose,
            Short('h') | Long("help") => return Ok(Command::Help),
            _ => return Err(arg.unexpected()),
        }
    }
    config
        .validate()
        .map_err(|e| lexopt::Error::Custom(e.to_string().into()))?;
    if client.interval.is_zero() {
        return Err("--interval must be greater than zero".into());
    }
    // Refuse what this build left out, rather than ignore it.
    if www.is_some() && !cfg!(feature = "static-files") {
        return Err(missing_feature("--www", "static-files"));
    }
    if console && !cfg!(feature = "console") {
        return Err(missing_feature("--console", "console"));
    }
    let token = read_token(token_file)?;
    match mode.as_deref() {
        Some("server") => Ok(Command::Server {
            address,
            www,
            config,
            access: AccessPolicy { token, ..access },
            console,
            verbosity,
        }),
        Some("client") => Ok(Command::Client {
            options: ClientOptions {
                address,
                config,
                token,
                ..client
            },
            verbosity,
        }),
        Some(other) => Err(format!("unknown mode {other:?}; use server or client").into()),
        None => Ok(Command::Help),
    }
}

/// The error for an option whose Cargo feature this build left out.
fn missing_feature(option: &str, feature: &str) -> lexopt::Error {
    format!("{option} needs the `{feature}` Cargo feature, which this build leaves out").into()
}

/// The shared secret from `--token-file`, else from `$WSLOOP_TOKEN`.
fn read_token(file: Option<PathBuf>) -> Result<Option<String>, lexopt::Error> {
    let token = match file {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?,
        None => match std::env::var(TOKEN_ENV) {
            Ok(token) => token,
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(Some(token))
}

fn duration(parser: &mut lexopt::Parser) -> Result<Duration, lexopt::Error> {
    let text = parser.value()?.string()?;
    parse_duration(&text).map_err(|e| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(OsString::from))
    }

    #[test]
    fn both_spellings_of_the_mode_work() {
        for line in [
            "server --address 0.0.0.0:9",
            "--mode server --address 0.0.0.0:9",
        ] {
            match parse_str(line) {
                Ok(Command::Server { address, .. }) => assert_eq!(address, "0.0.0.0:9"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn client_options_parse_with_units() {
        match parse_str("client --interval 200ms --count 3 --stdin -v") {
            Ok(Command::Client { options, verbosity }) => {
                assert_eq!(options.interval, Duration::from_millis(200));
                assert_eq!(options.count, Some(3));
                assert!(options.stdin);
                assert_eq!(verbosity, Verbosity::Verbose);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        assert!(parse_str("server --heartbeat 0.5").is_err());
        assert!(parse_str("client --interval 0").is_err());
        assert!(parse_str("client --count many").is_err());
        assert!(parse_str("server --bogus").is_err());
        assert!(parse_str("dance").is_err());
        assert!(matches!(parse_str(""), Ok(Command::Help)));
    }
}
