//! Command-line parsing for the `wsloop` binary: `wsloop server ...`,
//! `wsloop client ...`, and the original program's `--mode` spelling.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;
use wsloop::client::{ClientOptions, Target};
use wsloop::{parse_duration, AccessPolicy, Config, TOKEN_ENV};

/// The address both modes use unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8080";

/// `--help`: the parts this build has, printed in order. Each option of
/// a left-out feature leaves its text out too (the small build would
/// otherwise carry every feature's help in `.rodata`).
pub const USAGE: &[&str] = &[
    "\
wsloop — persistent WebSocket messaging

USAGE:
    wsloop server [OPTIONS]      serve the WebSocket at /server and a page at /
    wsloop client [OPTIONS]      dial the server at ADDRESS and send requests
    wsloop --mode server|client [OPTIONS]   (the original Go program's spelling)

COMMON OPTIONS:
    --address ADDRESS      server: HOST:PORT to listen on; client: where to
                           dial, HOST:PORT (ws://HOST:PORT/server)",
    #[cfg(feature = "urls")]
    " or a URL
                           ws://HOST[:PORT][/PATH][?QUERY] or wss://...
                           (ports 80/443; no path: /server; IPv6 in [])",
    "
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
                           and /stats (Authorization: Bearer, or ?token=); the client
                           sends it. Default: $WSLOOP_TOKEN, if set.
    -q, --quiet            log only warnings and errors
",
    #[cfg(feature = "debug-logs")]
    "    -v, --verbose          also log every message (bodies cut at 1 KiB)
",
    #[cfg(not(feature = "debug-logs"))]
    "    -v, --verbose          as the default here (needs feature debug-logs)
",
    #[cfg(feature = "json-logs")]
    "    --log-format text|json log lines as text or one JSON object each
                           (time, level, target, message) [default: text]
",
    #[cfg(not(feature = "json-logs"))]
    "    --log-format text      log lines as text (json: feature json-logs)
",
    "    -h, --help             print this help
    -V, --version          print the version and the enabled Cargo features

SERVER OPTIONS:
",
    #[cfg(feature = "static-files")]
    "    --www DIR              serve files from DIR at / [default: a built-in page]
                           (dotfiles and dot-directories such as .git or .env:
                           404, always; /.well-known/ is served, for ACME)
",
    "    --queue N              pushed messages that may wait per client [default: 64]
",
    #[cfg(feature = "console")]
    "    --console              read commands from stdin and push each to every
                           client, printing their replies; `@NAME command`
                           sends to the named client NAME alone (queued if
                           it is offline)
",
    "    --allow-origin URL     also accept upgrades from this browser origin
                           (repeatable), e.g. https://example.com
    --allow-any-origin     turn the origin check off (logged as a warning)
    --allow-host NAME      also accept requests whose Host is NAME (repeatable;
                           a bare NAME matches any port, NAME:PORT only that
                           one). Without it only this server's own address
                           and localhost are accepted; others get 421
                           (bound to 0.0.0.0/[::]: any IP address)
    --max-connections N    concurrent connections; past it a new connection
                           gets a canned 503 at accept and is closed
                           [default: 10000; 0 = unlimited]. The open-file
                           limit is raised to its hard limit at start, with
                           a warning if it still cannot hold N + 64
    --max-connections-per-ip N
                           concurrent connections per remote IP
                           [default: 1000; 0 = unlimited]
    --max-messages-per-sec N
                           per connection; excess closes with 1008
                           [default: 10000; 0 = unlimited]
",
    #[cfg(feature = "tls")]
    "    --cert FILE --key FILE serve https:// and wss:// (PEM files, reloaded
                           when they change) [default: plain HTTP]
",
    #[cfg(feature = "trusted-proxy")]
    "    --trusted-proxy ADDR|CIDR
                           take the client address from this proxy's
                           X-Forwarded-For (repeatable) [default: none]
",
    #[cfg(feature = "metrics")]
    "    --public-metrics       /metrics without the token [default: behind it]
",
    "    --max-frames-per-sec N frames of any kind per connection (continuations,
                           pongs too); excess closes with 1008
                           [default: 50000; 0 = unlimited]
    --max-bytes-per-sec N  bytes per connection; excess closes with 1008
                           [default: 67108864; 0 = unlimited]
",
    #[cfg(feature = "forwarder")]
    "    --state DIR            keep named clients' queued commands, their records
                           and requestID counters in DIR/wsloop.redb: an
                           acknowledged command survives kill -9 and restarts
                           (the last 1000 final records per client are kept)
                           [default: in memory, kept across reconnects only]
    --tokens FILE          per-client tokens, one `NAME TOKEN` a line (#
                           comments): /server?client=NAME must present NAME's
                           token (Bearer or ?token=) [default: names unchecked]
    --operator-token-file FILE
                           enable the operator API under /api/ (JSON, with
                           Authorization: Bearer <this token>) [default: off]
    --max-queued N         commands per named client not yet final; past it
                           the API answers 429 [default: 1000]
    --command-ttl DURATION a command not final by then ends `expired`
                           [default: 24h]
",
    #[cfg(feature = "redis")]
    "    --redis URL            one of several nodes sharing named clients, queues
                           and records through Redis (redis://HOST:PORT[/DB]);
                           instead of --state [default: off]
    --node-id ID           this node's name in the cluster (A-Z a-z 0-9 . _ -
                           :) [default: HOSTNAME:PORT]
",
    "
CLIENT OPTIONS:
    --interval DURATION    time between requests [default: 2s]
    --count N              stop after N replies; exit 0 only if all matched
    --stdin                send one request per input line instead of on a timer
    --request-timeout DURATION
                           fail a request with no reply after this [default: 10s]
    --no-reconnect         exit when the connection drops, or the first dial
                           fails, instead of retrying
    --reconnect-delay DURATION
                           first wait before reconnecting; doubles per attempt,
                           with jitter [default: 500ms]
    --max-reconnect-delay DURATION
                           longest wait between attempts [default: 30s]
    --max-attempts N       give up after N failed attempts in a row, at start
                           (a server not up yet is retried) or after a drop
                           [default: never]
",
    #[cfg(feature = "headers")]
    "    --header 'NAME: VALUE' send this header with the handshake (repeatable),
                           e.g. for auth or routing
",
    #[cfg(feature = "tls")]
    "    --ca FILE              wss://: also trust the CA certificates in this PEM
                           file (server certificates are always verified,
                           against the system's trust store and FILE)
",
    #[cfg(feature = "proxy")]
    "    --proxy URL            go through this HTTP CONNECT proxy,
                           http://[USER:PASSWORD@]HOST[:PORT] [default: from
                           https_proxy (wss://) or http_proxy (ws://), minus
                           the hosts in no_proxy; none if unset]
",
    #[cfg(feature = "client-id")]
    "    --id NAME              name this device (1-64 of A-Z a-z 0-9 . _ -): dials
                           with ?client=NAME; its --token-file is its own
                           [default: anonymous]
",
    "
",
    #[cfg(feature = "exec")]
    "DEVICE OPTIONS (client):
    --exec PROGRAM [ARG...]
                           everything after --exec: run PROGRAM for each
                           pushed command, the command on stdin and in
                           $WSLOOP_COMMAND (up to 32 KiB), $WSLOOP_REQUEST_ID,
                           $WSLOOP_CLIENT (the --id); reply success = exit
                           status 0, someOtherThing = the first 4 KiB of
                           stdout (then why and the last 1 KiB of stderr
                           when it failed). With --exec the client sends no
                           requests of its own unless --interval, --count
                           or --stdin is given. With --id, a requestID
                           that comes again gets its stored reply, never a
                           second run [default: answer as the original
                           client does]
    --exec-timeout DURATION
                           kill the program's process group after this and
                           reply success:false [default: 60s]
    --exec-concurrency N   programs running at once; 1 keeps the order
                           [default: 1]
    --state DIR            with --id: keep the record of started commands
                           and replies in DIR/device.redb, so a restart never
                           runs a command twice (a command that was running
                           is answered interrupted, and a program a SIGKILLed
                           device left running is killed) [default: in
                           memory, across reconnects only; the last 10000
                           kept]

",
    "\
CLIENT EXIT STATUS:
    0 all replies arrived (--count/--stdin); 1 the server stayed unreachable
    or a reply failed; 2 a bad option, or a refusal that retrying cannot mend
    (401, 403, 404, a certificate that fails verification), with its reason

DURATIONS are seconds (2, 0.2) or carry a unit (200ms, 30s, 5m).
",
];

/// How much the binary logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// How the binary prints log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `TIME wsloop: LEVEL message`.
    Text,
    /// One JSON object per line: `time`, `level`, `target`, `message`.
    #[cfg(feature = "json-logs")]
    Json,
}

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Server {
        address: String,
        www: Option<PathBuf>,
        config: Config,
        access: AccessPolicy,
        console: bool,
        verbosity: Verbosity,
        log_format: LogFormat,
        deployment: Deployment,
    },
    Client {
        options: ClientOptions,
        /// `--exec` and its options.
        #[cfg(feature = "exec")]
        device: Option<wsloop::client::DeviceOptions>,
        verbosity: Verbosity,
        log_format: LogFormat,
    },
}

/// The device options as given, checked against each other at the end.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "exec"), allow(dead_code))]
struct DeviceArgs {
    exec: Vec<OsString>,
    timeout: Option<Duration>,
    concurrency: Option<usize>,
    /// Whether the seed's own requests were asked for (`--interval`, ...).
    requests: bool,
}

/// How the server faces the internet: TLS, proxies in front, metrics.
#[derive(Debug, Default)]
pub struct Deployment {
    /// `--cert` and `--key`: both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--trusted-proxy`, each already checked.
    #[cfg_attr(not(feature = "trusted-proxy"), allow(dead_code))]
    pub trusted_proxies: Vec<String>,
    /// `--public-metrics`.
    pub public_metrics: bool,
    /// The forwarder's options.
    #[cfg(feature = "forwarder")]
    pub forwarder: ForwarderArgs,
}

/// `--state`, `--tokens`, `--operator-token-file`, `--max-queued`,
/// `--command-ttl`, as given (files are read at start).
#[cfg(feature = "forwarder")]
#[derive(Debug)]
pub struct ForwarderArgs {
    pub state: Option<PathBuf>,
    pub tokens: Option<PathBuf>,
    pub operator_token_file: Option<PathBuf>,
    pub max_queued: usize,
    pub command_ttl: Duration,
    /// `--redis URL` (feature `redis`).
    pub redis: Option<String>,
    /// `--node-id ID`.
    pub node_id: Option<String>,
}

#[cfg(feature = "forwarder")]
impl Default for ForwarderArgs {
    fn default() -> Self {
        ForwarderArgs {
            state: None,
            tokens: None,
            operator_token_file: None,
            max_queued: wsloop::forwarder::DEFAULT_MAX_QUEUED,
            command_ttl: wsloop::forwarder::DEFAULT_COMMAND_TTL,
            redis: None,
            node_id: None,
        }
    }
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    parse_inner(args).map_err(|e| e.to_string())
}

fn parse_inner(args: impl IntoIterator<Item = OsString>) -> Result<Command, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut mode: Option<String> = None;
    let mut address = DEFAULT_ADDRESS.to_string();
    #[cfg_attr(not(feature = "static-files"), allow(unused_mut))]
    let mut www = None;
    let mut config = Config::default();
    let mut verbosity = Verbosity::Normal;
    let mut log_format = LogFormat::Text;
    let mut client = ClientOptions::new(DEFAULT_ADDRESS);
    #[cfg_attr(not(feature = "console"), allow(unused_mut))]
    let mut console = false;
    let mut access = AccessPolicy::default();
    let mut token_file: Option<PathBuf> = None;
    #[cfg(feature = "headers")]
    let mut headers: Vec<String> = Vec::new();
    #[cfg(feature = "tls")]
    let mut ca: Option<PathBuf> = None;
    #[cfg(feature = "proxy")]
    let mut proxy: Option<String> = None;
    let mut deployment = Deployment::default();
    let mut device = DeviceArgs::default();
    let mut state: Option<PathBuf> = None;
    #[cfg(feature = "client-id")]
    let mut id: Option<String> = None;
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let (mut cert, mut key): (Option<PathBuf>, Option<PathBuf>) = (None, None);

    while let Some(arg) = parser.next()? {
        match arg {
            Value(word) if mode.is_none() => mode = Some(word.string()?),
            Long("mode") => mode = Some(text(&mut parser)?),
            Long("address") => address = text(&mut parser)?,
            #[cfg(feature = "static-files")]
            Long("www") => www = Some(path(&mut parser)?),
            Long("heartbeat") => config.heartbeat = duration(&mut parser)?,
            Long("idle-timeout") => config.idle_timeout = Some(duration(&mut parser)?),
            Long("max-message-size") => config.max_message_size = number(&mut parser)?,
            Long("handshake-timeout") => config.handshake_timeout = duration(&mut parser)?,
            Long("queue") => config.outbound_capacity = number(&mut parser)?,
            Long("interval") => {
                client.interval = duration(&mut parser)?;
                device.requests = true;
            }
            Long("count") => {
                client.count = Some(number(&mut parser)?);
                device.requests = true;
            }
            Long("stdin") => {
                client.stdin = true;
                device.requests = true;
            }
            #[cfg(feature = "client-id")]
            Long("id") => id = Some(text(&mut parser)?),
            Long("state") => state = Some(path(&mut parser)?),
            #[cfg(feature = "exec")]
            Long("exec") => device.exec = exec_argv(&mut parser)?,
            #[cfg(feature = "exec")]
            Long("exec-timeout") => device.timeout = Some(duration(&mut parser)?),
            #[cfg(feature = "exec")]
            Long("exec-concurrency") => device.concurrency = Some(number(&mut parser)?),
            #[cfg(feature = "console")]
            Long("console") => console = true,
            Long("allow-origin") => access.allowed_origins.push(text(&mut parser)?),
            Long("allow-any-origin") => access.allow_any_origin = true,
            Long("allow-host") => access.allowed_hosts.push(text(&mut parser)?),
            Long("max-connections") => access.max_connections = number(&mut parser)?,
            Long("max-connections-per-ip") => access.max_connections_per_ip = number(&mut parser)?,
            Long("max-messages-per-sec") => config.max_messages_per_second = number(&mut parser)?,
            #[cfg(feature = "tls")]
            Long("cert") => cert = Some(path(&mut parser)?),
            #[cfg(feature = "tls")]
            Long("key") => key = Some(path(&mut parser)?),
            #[cfg(feature = "trusted-proxy")]
            Long("trusted-proxy") => deployment.trusted_proxies.push(trusted_proxy(&mut parser)?),
            #[cfg(feature = "metrics")]
            Long("public-metrics") => deployment.public_metrics = true,
            #[cfg(feature = "forwarder")]
            Long("tokens") => deployment.forwarder.tokens = Some(path(&mut parser)?),
            #[cfg(feature = "forwarder")]
            Long("operator-token-file") => {
                deployment.forwarder.operator_token_file = Some(path(&mut parser)?)
            }
            #[cfg(feature = "forwarder")]
            Long("max-queued") => deployment.forwarder.max_queued = number(&mut parser)?,
            #[cfg(feature = "forwarder")]
            Long("command-ttl") => deployment.forwarder.command_ttl = duration(&mut parser)?,
            #[cfg(feature = "redis")]
            Long("redis") => deployment.forwarder.redis = Some(text(&mut parser)?),
            #[cfg(feature = "redis")]
            Long("node-id") => deployment.forwarder.node_id = Some(text(&mut parser)?),
            Long("max-frames-per-sec") => config.max_frames_per_second = number(&mut parser)?,
            Long("max-bytes-per-sec") => config.max_bytes_per_second = number(&mut parser)?,
            Long("token-file") => token_file = Some(path(&mut parser)?),
            Long("request-timeout") => config.request_timeout = duration(&mut parser)?,
            Long("no-reconnect") => client.reconnect.enabled = false,
            Long("reconnect-delay") => client.reconnect.initial_delay = duration(&mut parser)?,
            Long("max-reconnect-delay") => client.reconnect.max_delay = duration(&mut parser)?,
            Long("max-attempts") => client.reconnect.max_attempts = Some(number(&mut parser)?),
            #[cfg(feature = "headers")]
            Long("header") => headers.push(text(&mut parser)?),
            #[cfg(feature = "tls")]
            Long("ca") => ca = Some(path(&mut parser)?),
            #[cfg(feature = "proxy")]
            Long("proxy") => proxy = Some(text(&mut parser)?),
            Short('q') | Long("quiet") => verbosity = Verbosity::Quiet,
            Short('v') | Long("verbose") => verbosity = Verbosity::Verbose,
            Long("log-format") => log_format = self::log_format(&mut parser)?,
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            // Options of left-out features are refused at once, through
            // one table: an arm (and a message) each would cost the small
            // build about 100 B apiece, parsing their values ~3 KB.
            _ => return Err(left_out(&arg).unwrap_or_else(|| arg.unexpected())),
        }
    }
    config
        .validate()
        .map_err(|e| lexopt::Error::Custom(e.to_string().into()))?;
    if client.interval.is_zero() {
        return Err("--interval must be greater than zero".into());
    }
    deployment.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    let token = read_token(token_file)?;
    match mode.as_deref() {
        #[cfg(feature = "client-id")]
        Some("server") if id.is_some() => Err("--id is a client option".into()),
        Some("server") => {
            // `--state` is the forwarder's store on a server (the device's
            // record on a client).
            #[cfg(feature = "forwarder")]
            {
                let forwarder = &deployment.forwarder;
                if state.is_some() && forwarder.redis.is_some() {
                    return Err("--state and --redis are two stores: give one".into());
                }
                if forwarder.node_id.is_some() && forwarder.redis.is_none() {
                    return Err("--node-id needs --redis".into());
                }
                deployment.forwarder.state = state;
            }
            #[cfg(not(feature = "forwarder"))]
            if state.is_some() {
                return Err(missing_feature("--state", "forwarder"));
            }
            Ok(Command::Server {
                address,
                www,
                config,
                access: {
                    let mut access = access;
                    access.token = token;
                    access
                },
                console,
                verbosity,
                log_format,
                deployment,
            })
        }
        Some("client") => {
            // A bad address is a usage error now, not a failed dial later.
            Target::parse(&address).map_err(|e| lexopt::Error::Custom(e.to_string().into()))?;
            let mut options = client;
            options.address = address;
            options.config = config;
            options.token = token;
            #[cfg(feature = "client-id")]
            if let Some(id) = id {
                options = options.with_id(&id).map_err(|e| format!("--id: {e}"))?;
            }
            #[cfg(feature = "exec")]
            let device = device_options(device, state)?;
            #[cfg(not(feature = "exec"))]
            if state.is_some() {
                return Err(missing_feature("--state", "exec"));
            }
            #[cfg(feature = "headers")]
            for header in headers {
                options = with_header(options, &header)?;
            }
            #[cfg(feature = "tls")]
            {
                options.ca = ca;
            }
            #[cfg(feature = "proxy")]
            if let Some(url) = proxy {
                options.proxy = wsloop::client::Proxy::Url(url);
            }
            Ok(Command::Client {
                options,
                #[cfg(feature = "exec")]
                device,
                verbosity,
                log_format,
            })
        }
        Some(other) => Err(format!("unknown mode {other:?}; use server or client").into()),
        None => Ok(Command::Help),
    }
}

/// `options` with the `--header 'Name: value'` added (checked).
#[cfg(feature = "headers")]
fn with_header(options: ClientOptions, header: &str) -> Result<ClientOptions, lexopt::Error> {
    let Some((name, value)) = header.split_once(':') else {
        return Err(format!("--header {header:?}: expected 'Name: value'").into());
    };
    options
        .header(name, value.trim())
        .map_err(|e| format!("--header {header:?}: {e}").into())
}

/// `--exec`'s program and arguments: everything after it.
#[cfg(feature = "exec")]
fn exec_argv(parser: &mut lexopt::Parser) -> Result<Vec<OsString>, lexopt::Error> {
    let mut argv: Vec<OsString> = parser.raw_args()?.collect();
    // `--exec -- PROGRAM` is the same as `--exec PROGRAM`.
    if argv.first().is_some_and(|first| first == "--") {
        argv.remove(0);
    }
    if argv.is_empty() {
        return Err("--exec needs a program (and its arguments after it)".into());
    }
    Ok(argv)
}

/// The device's options when `--exec` was given; its sub-options and
/// `--state` are refused without it rather than ignored.
#[cfg(feature = "exec")]
fn device_options(
    args: DeviceArgs,
    state: Option<PathBuf>,
) -> Result<Option<wsloop::client::DeviceOptions>, lexopt::Error> {
    if args.exec.is_empty() {
        if args.timeout.is_some() || args.concurrency.is_some() || state.is_some() {
            return Err("--exec-timeout, --exec-concurrency and --state need --exec".into());
        }
        return Ok(None);
    }
    let mut device = wsloop::client::DeviceOptions::new(args.exec);
    if let Some(timeout) = args.timeout.filter(|t| !t.is_zero()) {
        device.timeout = timeout;
    } else if args.timeout.is_some() {
        return Err("--exec-timeout must be greater than zero".into());
    }
    match args.concurrency {
        Some(0) => return Err("--exec-concurrency must be at least 1".into()),
        Some(n) => device.concurrency = n,
        None => {}
    }
    device.state = state;
    device.requests = args.requests;
    Ok(Some(device))
}

/// The options of the Cargo features this build leaves out, each with its
/// feature (`--state` is two features' and has its own check).
const LEFT_OUT: &[(&str, &str)] = &[
    #[cfg(not(feature = "static-files"))]
    ("www", "static-files"),
    #[cfg(not(feature = "console"))]
    ("console", "console"),
    #[cfg(not(feature = "tls"))]
    ("cert", "tls"),
    #[cfg(not(feature = "tls"))]
    ("key", "tls"),
    #[cfg(not(feature = "tls"))]
    ("ca", "tls"),
    #[cfg(not(feature = "trusted-proxy"))]
    ("trusted-proxy", "trusted-proxy"),
    #[cfg(not(feature = "metrics"))]
    ("public-metrics", "metrics"),
    #[cfg(not(feature = "forwarder"))]
    ("tokens", "forwarder"),
    #[cfg(not(feature = "forwarder"))]
    ("operator-token-file", "forwarder"),
    #[cfg(not(feature = "forwarder"))]
    ("max-queued", "forwarder"),
    #[cfg(not(feature = "forwarder"))]
    ("command-ttl", "forwarder"),
    #[cfg(not(feature = "redis"))]
    ("redis", "redis"),
    #[cfg(not(feature = "redis"))]
    ("node-id", "redis"),
    #[cfg(not(feature = "proxy"))]
    ("proxy", "proxy"),
    #[cfg(not(feature = "headers"))]
    ("header", "headers"),
    #[cfg(not(feature = "client-id"))]
    ("id", "client-id"),
    #[cfg(not(feature = "exec"))]
    ("exec", "exec"),
    #[cfg(not(feature = "exec"))]
    ("exec-timeout", "exec"),
    #[cfg(not(feature = "exec"))]
    ("exec-concurrency", "exec"),
];

/// The refusal of `arg` when it is an option of a left-out feature.
fn left_out(arg: &lexopt::Arg) -> Option<lexopt::Error> {
    let Long(name) = arg else { return None };
    let (option, feature) = LEFT_OUT.iter().find(|(option, _)| option == name)?;
    Some(missing_feature(&format!("--{option}"), feature))
}

/// The error for an option whose Cargo feature this build left out.
fn missing_feature(option: &str, feature: &str) -> lexopt::Error {
    format!("{option} needs the `{feature}` Cargo feature, which this build leaves out").into()
}

/// One `--trusted-proxy` value, checked now so a typo fails at start.
#[cfg(feature = "trusted-proxy")]
fn trusted_proxy(parser: &mut lexopt::Parser) -> Result<String, lexopt::Error> {
    let spec = text(parser)?;
    wsloop::forwarded::TrustedProxies::new().add(&spec)?;
    Ok(spec)
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

fn log_format(parser: &mut lexopt::Parser) -> Result<LogFormat, lexopt::Error> {
    match text(parser)?.as_str() {
        "text" => Ok(LogFormat::Text),
        #[cfg(feature = "json-logs")]
        "json" => Ok(LogFormat::Json),
        #[cfg(not(feature = "json-logs"))]
        "json" => Err(missing_feature("--log-format json", "json-logs")),
        other => Err(format!("--log-format {other:?}: use text or json").into()),
    }
}

/// The Cargo features `wsloop --version` names: those this build has
/// (what the binary can do depends on them). Only their names are in the
/// binary, so a feature left out costs the small build nothing here.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "serde")]
    "serde",
    #[cfg(feature = "nanoserde")]
    "nanoserde",
    #[cfg(feature = "console")]
    "console",
    #[cfg(feature = "static-files")]
    "static-files",
    #[cfg(feature = "urls")]
    "urls",
    #[cfg(feature = "headers")]
    "headers",
    #[cfg(feature = "client-id")]
    "client-id",
    #[cfg(feature = "debug-logs")]
    "debug-logs",
    #[cfg(feature = "signals")]
    "signals",
    #[cfg(feature = "json-logs")]
    "json-logs",
    #[cfg(feature = "tls")]
    "tls",
    #[cfg(feature = "proxy")]
    "proxy",
    #[cfg(feature = "metrics")]
    "metrics",
    #[cfg(feature = "trusted-proxy")]
    "trusted-proxy",
    #[cfg(feature = "forwarder")]
    "forwarder",
    #[cfg(feature = "exec")]
    "exec",
    #[cfg(feature = "redis")]
    "redis",
];

/// The next value as a number of type `T`: read as a `u64` by the one
/// copy of the digit parser ([`digits`]), then checked against `T`'s
/// range, so each number type adds only that check.
fn number<T: TryFrom<u64>>(parser: &mut lexopt::Parser) -> Result<T, lexopt::Error> {
    let (n, text) = digits(parser)?;
    T::try_from(n).map_err(|_| {
        // Worded as lexopt words the overflow of a narrower type's parse.
        let why = format!("cannot parse argument {text:?}: number too large to fit in target type");
        lexopt::Error::Custom(why.into())
    })
}

/// The next value as a `u64`, with the text it was read from.
#[inline(never)]
fn digits(parser: &mut lexopt::Parser) -> Result<(u64, String), lexopt::Error> {
    let value = parser.value()?;
    let n = value.parse()?;
    Ok((n, value.string()?))
}

/// The next value as a string.
#[inline(never)]
fn text(parser: &mut lexopt::Parser) -> Result<String, lexopt::Error> {
    parser.value()?.string()
}

/// The next value as a path.
#[inline(never)]
fn path(parser: &mut lexopt::Parser) -> Result<PathBuf, lexopt::Error> {
    Ok(parser.value()?.into())
}

/// The next value as a duration ([`parse_duration`]).
fn duration(parser: &mut lexopt::Parser) -> Result<Duration, lexopt::Error> {
    let text = self::text(parser)?;
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
            Ok(Command::Client {
                options, verbosity, ..
            }) => {
                assert_eq!(options.interval, Duration::from_millis(200));
                assert_eq!(options.count, Some(3));
                assert!(options.stdin);
                assert_eq!(verbosity, Verbosity::Verbose);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn log_format_and_version_parse() {
        match parse_str("server --log-format text") {
            Ok(Command::Server { log_format, .. }) => assert_eq!(log_format, LogFormat::Text),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_str("client --log-format json").is_ok(),
            cfg!(feature = "json-logs")
        );
        assert!(parse_str("server --log-format xml").is_err());
        assert!(matches!(parse_str("--version"), Ok(Command::Version)));
        assert!(matches!(parse_str("server -V"), Ok(Command::Version)));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        assert!(parse_str("server --heartbeat 0.5").is_err());
        assert!(parse_str("client --interval 0").is_err());
        assert!(parse_str("client --count many").is_err());
        assert!(parse_str("server --bogus").is_err());
        assert!(parse_str("dance").is_err());
        assert!(matches!(parse_str(""), Ok(Command::Help)));
        assert!(parse_str("client --address ws://127.0.0.1:8080:9").is_err());
        assert!(parse_str("client --address http://127.0.0.1:8080/").is_err());
        assert!(parse_str("server --cert c.pem").is_err(), "--key missing");
        assert!(parse_str("server --trusted-proxy 10.0.0.0/33").is_err());
    }

    #[test]
    fn numbers_are_refused_in_lexopts_words() {
        // What lexopt's own parse said before `number` read every type as u64.
        let err = |line| parse_str(line).err().unwrap_or_default();
        let too_large =
            "cannot parse argument \"4294967296\": number too large to fit in target type";
        assert_eq!(err("client --max-attempts 4294967296"), too_large);
        assert_eq!(
            err("client --count -1"),
            "cannot parse argument \"-1\": invalid digit found in string"
        );
        assert!(matches!(
            parse_str("client --max-attempts 4294967295"),
            Ok(Command::Client { options, .. }) if options.reconnect.max_attempts == Some(u32::MAX)
        ));
    }

    #[test]
    #[cfg(all(feature = "urls", feature = "headers"))]
    fn client_takes_urls_and_checked_headers() {
        let args = [
            "client",
            "--address",
            "wss://[::1]/s?q=1",
            "--header",
            "X-Route: b  ",
        ];
        match parse(args.map(OsString::from)) {
            Ok(Command::Client { options, .. }) => {
                assert_eq!(options.address, "wss://[::1]/s?q=1");
                assert_eq!(options.headers, [("X-Route".to_string(), "b".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "X-Route",
            "X Route: b",
            ": b",
            "Host: h",
            "Sec-WebSocket-Key: k",
            "X: a\r\nY: b",
        ] {
            let args = ["client", "--header", bad];
            assert!(parse(args.map(OsString::from)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_device_names_itself_and_takes_everything_after_exec() {
        let line = "client --id pump-7 --exec-timeout 2s --exec-concurrency 3 --state st \
                    --exec ./run.sh -q --count 1";
        let parsed = parse_str(line);
        #[cfg(feature = "exec")]
        match parsed {
            Ok(Command::Client {
                options, device, ..
            }) => {
                assert_eq!(options.id.as_deref(), Some("pump-7"));
                let device = device.expect("--exec given");
                assert_eq!(device.exec, ["./run.sh", "-q", "--count", "1"]);
                assert_eq!(device.timeout, Duration::from_secs(2));
                assert_eq!(device.concurrency, 3);
                assert_eq!(device.state, Some(PathBuf::from("st")));
                assert!(!device.requests, "a device only answers by default");
            }
            other => panic!("{other:?}"),
        }
        #[cfg(not(feature = "exec"))]
        assert!(parsed.is_err(), "--exec is refused without the feature");
        for bad in [
            "client --id bad/name",
            "client --id",
            "client --exec",
            "client --exec-timeout 1s",
            "client --id a --exec-concurrency 0 --exec x",
            "server --id a",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
        let long = format!("client --id {}", "a".repeat(65));
        assert!(parse_str(&long).is_err(), "65 characters");
    }

    #[test]
    #[cfg(all(feature = "tls", feature = "trusted-proxy", feature = "metrics"))]
    fn deployment_options_parse() {
        let line = "server --cert c.pem --key k.pem --trusted-proxy 127.0.0.1 \
                    --trusted-proxy 10.0.0.0/8 --public-metrics";
        match parse_str(line) {
            Ok(Command::Server { deployment, .. }) => {
                assert_eq!(deployment.tls, Some(("c.pem".into(), "k.pem".into())));
                assert_eq!(deployment.trusted_proxies, ["127.0.0.1", "10.0.0.0/8"]);
                assert!(deployment.public_metrics);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[cfg(feature = "redis")]
    fn cluster_options_parse_and_go_with_redis_only() {
        match parse_str("server --redis redis://127.0.0.1:6379/2 --node-id n-1") {
            Ok(Command::Server { deployment, .. }) => {
                let forwarder = &deployment.forwarder;
                assert_eq!(forwarder.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
                assert_eq!(forwarder.node_id.as_deref(), Some("n-1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_str("server --node-id n-1").is_err(),
            "--node-id alone"
        );
        assert!(
            parse_str("server --redis redis://h:1 --state st").is_err(),
            "two stores"
        );
    }
}
