//! The binary's forwarder: builds it from `--state` or `--redis` and
//! `--node-id`, `--tokens`, `--operator-token-file`, `--max-queued` and
//! `--command-ttl`, and the console's `@NAME command`.

use wsloop::forwarder::{parse_tokens, Forwarder, ForwarderOptions, MemoryStore, RedbStore, Store};
use wsloop::Error;

use crate::cli::ForwarderArgs;

/// Opens the store (Redis under `--redis`, redb under `--state`, else
/// memory) and the forwarder; `port` is the server's, for the default
/// `--node-id`.
pub async fn open(args: &ForwarderArgs, port: u16) -> Result<Forwarder, Error> {
    let store: Box<dyn Store> = match &args.state {
        Some(dir) => Box::new(
            RedbStore::open(dir)
                .map_err(|e| Error::Config(format!("--state {}: {e}", dir.display())))?,
        ),
        None => Box::new(MemoryStore::new()),
    };
    let tokens = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_tokens(&text))
            .map_err(|e| Error::Config(format!("--tokens {}: {e}", path.display())))?,
        None => Default::default(),
    };
    let operator_token = match &args.operator_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("--operator-token-file {}: {e}", path.display()))
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(Error::Config("the operator token is empty".into()));
            }
            Some(token)
        }
        None => None,
    };
    let options = ForwarderOptions {
        max_queued: args.max_queued,
        command_ttl: args.command_ttl,
        tokens,
        operator_token,
    };
    #[cfg(feature = "redis")]
    if let Some(url) = &args.redis {
        return open_cluster(url, args.node_id.as_deref(), port, options).await;
    }
    #[cfg(not(feature = "redis"))]
    let _ = port;
    Forwarder::open(store, options)
        .await
        .map_err(|e| Error::Config(e.to_string()))
}

/// Joins the cluster on the Redis at `url` as `node` (default: host name
/// and port) and opens the forwarder over it.
#[cfg(feature = "redis")]
async fn open_cluster(
    url: &str,
    node: Option<&str>,
    port: u16,
    options: ForwarderOptions,
) -> Result<Forwarder, Error> {
    let node = match node {
        Some(node) => node.to_string(),
        None => format!("{}:{port}", host_name()),
    };
    let (cluster, store) = wsloop::forwarder::Cluster::open(url, &node)
        .await
        .map_err(|e| Error::Config(format!("--redis: {e}")))?;
    log::info!("cluster: node {node} on Redis {url}");
    Forwarder::open_cluster(cluster, store, options)
        .await
        .map_err(|e| Error::Config(e.to_string()))
}

/// This machine's host name (Linux's, from /proc), or `localhost`.
#[cfg(feature = "redis")]
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    match wsloop::forwarder::valid_node_id(name) {
        true => name.to_string(),
        false => "localhost".into(),
    }
}

/// The console's `@NAME command`: queues it for NAME and prints its
/// acknowledgement, then its final record when it comes.
#[cfg(feature = "console")]
pub fn console_send(ex: &smol::Executor<'static>, forwarder: &Forwarder, line: &str) {
    let Some((name, command)) = line.split_once(char::is_whitespace) else {
        println!("console: @NAME command");
        return;
    };
    let (name, command) = (name.to_string(), command.trim().to_string());
    let forwarder = forwarder.clone();
    ex.spawn(async move {
        match forwarder.submit(&name, &command, true).await {
            Ok((record, waiter)) => {
                let id = record.request_id;
                println!("console: {name} #{id} {}", record.status.as_str());
                if let Some(Ok(done)) = match waiter {
                    Some(waiter) => Some(waiter.recv().await),
                    None => None,
                } {
                    let reply = done.reply.map(|r| r.some_other_thing).unwrap_or_default();
                    // Quoted and escaped (`{:?}`): the text is the device's,
                    // and raw it could write escapes or forged lines here.
                    println!("client {name} #{id} {}: {reply:?}", done.status.as_str());
                }
            }
            Err(err) => println!("console: {name}: {err}"),
        }
    })
    .detach();
}
