//! The operator API: JSON over HTTP on the server's one port, under
//! `/api/`, behind `Authorization: Bearer <operator token>`. One request
//! per connection, like every other HTTP answer of the server.
//!
//! | route | |
//! |---|---|
//! | `GET /api/clients` | every known named client |
//! | `POST /api/clients/NAME/commands` `{"command":"..."}` | 202 `{"requestID":N,"status":...}`; `?wait=DURATION` (≤ 60 s): 200 with the record if final in time |
//! | `GET /api/clients/NAME/commands/N` | the record |
//! | `DELETE /api/clients/NAME/commands/N` | cancels a queued command (409 otherwise) |
//! | `POST /api/broadcast` `{"command":"..."}` | one command per connected named client |
//!
//! Errors are 4xx/5xx with `{"error":"..."}`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use serde::Deserialize;
use serde_json::json;

use super::{CancelError, Forwarder, Record, SubmitError};
use crate::config::CLOSE_TIMEOUT;
use crate::http::access::{bearer_token, constant_time_eq};
use crate::http::body::read_body;
use crate::http::{write_response, Request};
use crate::time::{parse_duration, timeout};

/// Where the API lives.
pub const API_PREFIX: &str = "/api/";

/// Largest request body: a command is a line of text, not a file.
pub const MAX_BODY: usize = 64 * 1024;

/// Longest `?wait=`: an HTTP call held open longer than this is better
/// replaced by polling the record.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A response: status, JSON body, and an `Allow` header for 405s.
struct Answer {
    status: u16,
    body: serde_json::Value,
    allow: Option<&'static str>,
}

impl Answer {
    fn ok(status: u16, body: serde_json::Value) -> Self {
        Answer {
            status,
            body,
            allow: None,
        }
    }

    fn error(status: u16, why: impl Into<String>) -> Self {
        Answer::ok(status, json!({ "error": why.into() }))
    }

    fn method(allow: &'static str) -> Self {
        let why = format!("method not allowed here; use {allow}");
        Answer {
            allow: Some(allow),
            ..Answer::error(405, why)
        }
    }
}

/// The body of a command submit or broadcast.
#[derive(Deserialize)]
struct CommandBody {
    command: Option<String>,
}

/// Whether `path` belongs to the API.
pub(crate) fn is_api(path: &str) -> bool {
    path.starts_with(API_PREFIX) || path == "/api"
}

/// Answers one API request on `stream` (`leftover`: bytes read past its
/// head; `read_budget`: how long its body may take), then closes.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client: SocketAddr,
    request: &Request,
    leftover: Vec<u8>,
    forwarder: &Forwarder,
    read_budget: Duration,
) {
    let answer = answer(stream, request, leftover, forwarder, read_budget).await;
    debug!(
        "{client}: API {} {:?} {}",
        request.method,
        crate::log_safe::quote(request.path()),
        answer.status
    );
    let body = answer.body.to_string();
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
    ];
    if answer.status == 401 {
        headers.push(("WWW-Authenticate", "Bearer"));
    }
    if let Some(allow) = answer.allow {
        headers.push(("Allow", allow));
    }
    let written = async {
        write_response(stream, answer.status, &headers, body.as_bytes(), false).await?;
        stream.close().await
    };
    let _ = timeout(CLOSE_TIMEOUT, written).await;
}

/// Authorises, routes and answers one request.
async fn answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &Request,
    leftover: Vec<u8>,
    forwarder: &Forwarder,
    read_budget: Duration,
) -> Answer {
    let Some(expected) = forwarder.options().operator_token.as_deref() else {
        return Answer::error(
            404,
            "the operator API is disabled; start the server with --operator-token-file",
        );
    };
    // Only the Bearer header: a token in a URL ends up in logs and history.
    match bearer_token(request) {
        None => return Answer::error(401, "missing operator token (Authorization: Bearer)"),
        Some(given) if !constant_time_eq(&given, expected.as_bytes()) => {
            return Answer::error(403, "wrong operator token")
        }
        Some(_) => {}
    }
    let path = request.path().trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    let method = request.method.as_str();
    match (parts.as_slice(), method) {
        (["clients"], "GET") => match forwarder.list_clients().await {
            Ok(clients) => Answer::ok(200, json!({ "clients": clients })),
            Err(err) => Answer::error(503, err.to_string()),
        },
        (["clients"], _) => Answer::method("GET"),
        (["clients", name, "commands"], "POST") => {
            let command = match read_command(stream, request, leftover, read_budget).await {
                Ok(command) => command,
                Err(answer) => return answer,
            };
            submit(forwarder, name, &command, request).await
        }
        (["clients", _, "commands"], _) => Answer::method("POST"),
        (["clients", name, "commands", id], "GET" | "DELETE") => {
            let Ok(id) = id.parse::<i64>() else {
                return Answer::error(404, "no such command (requestIDs are integers)");
            };
            match method {
                "GET" => get(forwarder, name, id).await,
                _ => cancel(forwarder, name, id).await,
            }
        }
        (["clients", _, "commands", _], _) => Answer::method("GET, DELETE"),
        (["broadcast"], "POST") => {
            match read_command(stream, request, leftover, read_budget).await {
                Ok(command) => broadcast(forwarder, &command).await,
                Err(answer) => answer,
            }
        }
        (["broadcast"], _) => Answer::method("POST"),
        _ => Answer::error(404, "no such API route"),
    }
}

/// Reads and checks a `{"command":"..."}` body.
async fn read_command<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &Request,
    leftover: Vec<u8>,
    read_budget: Duration,
) -> Result<String, Answer> {
    let body = match timeout(read_budget, read_body(stream, request, leftover, MAX_BODY)).await {
        Some(Ok(body)) => body,
        Some(Err(err)) => {
            let (status, why) = err.status();
            return Err(Answer::error(status, why));
        }
        None => return Err(Answer::error(408, "request body timeout")),
    };
    let parsed: CommandBody = serde_json::from_slice(&body)
        .map_err(|err| Answer::error(400, format!("malformed JSON: {err}")))?;
    match parsed.command {
        None => Err(Answer::error(400, "missing \"command\"")),
        Some(command) if command.is_empty() => Err(Answer::error(400, "empty \"command\"")),
        Some(command) => Ok(command),
    }
}

/// `?wait=DURATION`, at most [`MAX_WAIT`].
fn wait_param(request: &Request) -> Result<Option<Duration>, Answer> {
    let Some(raw) = crate::http::access::query_param(request, "wait") else {
        return Ok(None);
    };
    let text = String::from_utf8(raw).unwrap_or_default();
    match parse_duration(&text) {
        Ok(wait) if wait <= MAX_WAIT => Ok(Some(wait)),
        Ok(_) => Err(Answer::error(400, "wait is at most 60s")),
        Err(_) => Err(Answer::error(400, "bad wait duration (e.g. wait=5s)")),
    }
}

/// `POST /api/clients/NAME/commands`.
async fn submit(forwarder: &Forwarder, name: &str, command: &str, request: &Request) -> Answer {
    let wait = match wait_param(request) {
        Ok(wait) => wait,
        Err(answer) => return answer,
    };
    let (record, waiter) = match forwarder.submit(name, command, wait.is_some()).await {
        Ok(submitted) => submitted,
        Err(err) => return submit_error(err),
    };
    if let (Some(wait), Some(waiter)) = (wait, waiter) {
        if let Some(Ok(done)) = timeout(wait, waiter.recv()).await {
            return Answer::ok(200, record_json(&done));
        }
        // Not final in time: what it is now (final, if the news of it
        // was late).
        if let Ok(Some(now)) = forwarder.get(name, record.request_id).await {
            if now.status.is_final() {
                return Answer::ok(200, record_json(&now));
            }
            return accepted(&now);
        }
    }
    accepted(&record)
}

/// 202 with the id and current status.
fn accepted(record: &Record) -> Answer {
    Answer::ok(
        202,
        json!({ "requestID": record.request_id, "status": record.status.as_str() }),
    )
}

fn submit_error(err: SubmitError) -> Answer {
    let status = match err {
        SubmitError::UnknownClient => 404,
        SubmitError::Full(_) => 429,
        SubmitError::Store(_) => 503,
    };
    Answer::error(status, err.to_string())
}

fn record_json(record: &Record) -> serde_json::Value {
    serde_json::to_value(record).unwrap_or_else(|_| json!({}))
}

/// `GET /api/clients/NAME/commands/N`.
async fn get(forwarder: &Forwarder, name: &str, id: i64) -> Answer {
    match forwarder.knows(name).await {
        Ok(true) => {}
        Ok(false) => return Answer::error(404, "no such client"),
        Err(err) => return Answer::error(503, err.to_string()),
    }
    match forwarder.get(name, id).await {
        Ok(Some(record)) => Answer::ok(200, record_json(&record)),
        Ok(None) => Answer::error(404, "no such command"),
        Err(err) => Answer::error(503, err.to_string()),
    }
}

/// `DELETE /api/clients/NAME/commands/N`.
async fn cancel(forwarder: &Forwarder, name: &str, id: i64) -> Answer {
    match forwarder.cancel(name, id).await {
        Ok(record) => Answer::ok(200, record_json(&record)),
        Err(CancelError::NotFound) => Answer::error(404, "no such client or command"),
        Err(CancelError::NotQueued(status)) => Answer::error(
            409,
            format!(
                "only a queued command can be cancelled; this one is {}",
                status.as_str()
            ),
        ),
        Err(CancelError::Store(why)) => Answer::error(503, why),
    }
}

/// `POST /api/broadcast`: one command per connected named client.
async fn broadcast(forwarder: &Forwarder, command: &str) -> Answer {
    let mut sent = Vec::new();
    let mut refused = Vec::new();
    let names = match forwarder.connected_everywhere().await {
        Ok(names) => names,
        Err(err) => return Answer::error(503, err.to_string()),
    };
    for name in names {
        match forwarder.submit(&name, command, false).await {
            Ok((record, _)) => sent.push(json!({
                "client": name,
                "requestID": record.request_id,
                "status": record.status.as_str(),
            })),
            Err(err) => refused.push(json!({
                "client": name,
                "error": submit_error(err).body["error"],
            })),
        }
    }
    Answer::ok(202, json!({ "commands": sent, "refused": refused }))
}
