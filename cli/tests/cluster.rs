//! Several nodes sharing one forwarder through Redis (`--redis`), for real:
//! a `redis-server` of its own (append-only file, fsync on every write) in
//! a temporary directory, three wsloop nodes, nginx in front of them
//! (round-robin, the README's "Running several nodes" configuration), and
//! [`devices`] named devices, each a `wsloop client --exec` process that
//! connects through nginx. The `--exec` program appends the requestID to a
//! file per device, so the runs can be counted.
//!
//! 1. Commands through random nodes' APIs all end `replied`, each run
//!    exactly once; printed: API calls per second and the time until all
//!    are replied, and the `?wait` latency of a command given to the node
//!    that holds the device vs to another node.
//! 2. Another round, and one node is `kill -9`'d in the middle of it: its
//!    devices reconnect through nginx to the others; every acknowledged
//!    command ends `replied`, none runs twice, none is lost.
//!
//! Skipped, with a message on stderr, when `redis-server` or nginx is
//! missing (`.ci/run` installs both). `WSLOOP_CLUSTER_DEVICES` changes the
//! device count (default 300); `WSLOOP_CLUSTER_NODES=1` runs step 1 on a
//! single node, for the one-node figure (and skips step 2);
//! `WSLOOP_CLUSTER_BIN` runs another wsloop binary (a release build gives
//! the README's figures).
#![cfg(feature = "redis")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::process::{Proc, ANNOUNCE, BIN};
use common::wait_until;

const OPERATOR: &str = "op-secret";

/// Threads sending API calls (each call is one TCP connection).
const API_THREADS: usize = 8;

/// Commands per device in each round.
const PER_DEVICE: usize = 2;

/// Longer than a node's heartbeat: what an outage must outlast.
const HEARTBEAT_AND_A_HALF: Duration = Duration::from_secs(3);

/// The longest the whole test may take: a couple of minutes on 2 cores.
const BUDGET: Duration = Duration::from_secs(170);

fn devices() -> usize {
    env_number("WSLOOP_CLUSTER_DEVICES").unwrap_or(300)
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|n| n.parse().ok())
}

/// Where `program` is, if it is installed (nginx lives in /usr/sbin,
/// which a user's PATH may lack).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"]);
    let found = dirs
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file());
    found
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A child killed (SIGKILL) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx, stopped with SIGTERM when dropped: its master then ends its
/// worker, which a SIGKILL of the master would leave behind, still
/// listening. SIGKILL only if it has not exited within a few seconds.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            // No signal to await from a child's exit here but its status.
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scratch directory, removed when the test passes.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts `redis-server` on a free loopback port in `dir`, persisting
/// every write with fsync (the README's configuration), and waits until
/// it answers PING.
fn start_redis(program: &Path, dir: &Path) -> (Killed, u16) {
    let port = free_port();
    (restart_redis(program, dir, port), port)
}

/// Starts `redis-server` on `port` in `dir` (its data, if any, reloaded
/// from the append-only file) and waits until it answers PING.
fn restart_redis(program: &Path, dir: &Path, port: u16) -> Killed {
    let child = Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--daemonize", "no", "--logfile", "redis.log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let redis = Killed(child);
    wait_until(10, "redis-server answers PING", || {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    });
    redis
}

/// The nginx configuration the README shows, around `upstreams`.
fn nginx_conf(prefix: &Path, port: u16, upstreams: &[SocketAddr]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|addr| format!("        server {addr};\n"))
        .collect();
    let p = prefix.display();
    let upstream = format!("    upstream wsloop {{\n{servers}    }}");
    format!(
        "daemon off;\nworker_processes 1;\nworker_rlimit_nofile 8192;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {p}/body;\n\
         proxy_temp_path {p}/proxy;\n    fastcgi_temp_path {p}/fastcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;\n\
         {upstream}\n    server {{\n        listen 127.0.0.1:{port};\n{location}    }}\n}}\n",
        location = LOCATION,
    )
}

/// The README's `location` block: WebSocket upgrades pass through with the
/// original Host (the origin check compares it with Origin) and the
/// device's address (the nodes trust 127.0.0.1's X-Forwarded-For), long
/// reads are allowed (the heartbeat keeps them busy), and a refused
/// connection moves on to the next node.
const LOCATION: &str = "        location / {
            proxy_pass http://wsloop;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
        }
";

fn start_nginx(program: &Path, dir: &Path, upstreams: &[SocketAddr]) -> (Nginx, SocketAddr) {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).expect("nginx dir");
    let port = free_port();
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&prefix, port, upstreams)).expect("nginx.conf");
    let child = Command::new(program)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(10, "nginx listens", || TcpStream::connect(addr).is_ok());
    (nginx, addr)
}

/// The binary under test: Cargo's, or `WSLOOP_CLUSTER_BIN`.
fn binary() -> String {
    std::env::var("WSLOOP_CLUSTER_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Starts node `id` on Redis `port` (logging warnings only, or with
/// `verbose` the info lines too).
fn start_node(id: &str, port: u16, operator: &Path, verbose: bool) -> (Proc, SocketAddr) {
    let url = format!("redis://127.0.0.1:{port}");
    let operator = operator.to_string_lossy().into_owned();
    let args = [
        "server",
        if verbose { "-v" } else { "-q" },
        "--redis",
        &url,
        "--node-id",
        id,
        "--operator-token-file",
        &operator,
        "--max-connections-per-ip",
        "0",
        "--trusted-proxy",
        "127.0.0.1",
        "--address",
        "127.0.0.1:0",
    ];
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let mut node = Proc::spawn(id, OsStr::new(&binary()), &args, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = node
        .next_line(deadline)
        .unwrap_or_else(|| node.fail("exited before announcing its address"));
    let addr = first
        .strip_prefix(ANNOUNCE)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line of {id}: {first:?}"));
    (node, addr)
}

/// One device process: `wsloop client --id NAME --exec RUN` to `addr`
/// (nginx, or a node).
fn start_device(name: &str, addr: SocketAddr, run: &Path, logs: &Path) -> Killed {
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("device log");
    let child = Command::new(BIN)
        .args(["client", "-q", "--address", &addr.to_string(), "--id", name])
        .args(["--reconnect-delay", "100ms", "--max-reconnect-delay", "1s"])
        .arg("--exec")
        .arg(run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a device");
    Killed(child)
}

/// One API call; its status (0 when the node did not answer) and body.
fn api(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_default()
}

/// `GET /api/clients` from `node`: connected name → the node holding it.
fn holders(node: SocketAddr) -> HashMap<String, String> {
    let (_, body) = api(node, "GET", "/api/clients", "");
    let list = json(&body)["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter(|c| c["connected"] == true)
        .filter_map(|c| Some((c["name"].as_str()?.into(), c["node"].as_str()?.into())))
        .collect()
}

/// An acknowledged command: its device and requestID.
type Acked = (String, i64);

/// Sends `PER_DEVICE` commands to each of `n` devices through the APIs of
/// `nodes` (a random live one per call; a node that does not answer is
/// dropped from the choice, the call retried elsewhere). Returns the
/// acknowledged commands and the calls per second.
fn send_round(nodes: &[SocketAddr], n: usize, round: usize) -> (Vec<Acked>, f64) {
    let started = Instant::now();
    let jobs: Vec<(usize, usize)> = (0..n)
        .flat_map(|d| (0..PER_DEVICE).map(move |k| (d, k)))
        .collect();
    let jobs = Arc::new(jobs);
    let workers: Vec<_> = (0..API_THREADS)
        .map(|t| {
            let (jobs, mut live) = (jobs.clone(), nodes.to_vec());
            thread::spawn(move || {
                let mut acked = Vec::new();
                for &(d, k) in jobs.iter().skip(t).step_by(API_THREADS) {
                    let name = format!("dev-{d}");
                    let target = format!("/api/clients/{name}/commands");
                    let body = format!(r#"{{"command":"round {round} #{k}"}}"#);
                    loop {
                        assert!(!live.is_empty(), "no node answers");
                        let node = live[fastrand::usize(..live.len())];
                        let (status, answer) = api(node, "POST", &target, &body);
                        if status == 0 {
                            live.retain(|n| *n != node);
                            continue;
                        }
                        assert_eq!(status, 202, "{name}: {answer}");
                        let id = json(&answer)["requestID"].as_i64();
                        acked.push((name.clone(), id.expect("a requestID")));
                        break;
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<Acked> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("API thread"))
        .collect();
    let rate = acked.len() as f64 / started.elapsed().as_secs_f64();
    (acked, rate)
}

/// Waits until every command in `acked` is final (reading through random
/// `nodes`); returns each one's status.
fn final_states(nodes: &[SocketAddr], acked: &[Acked], secs: u64) -> BTreeMap<Acked, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut states = BTreeMap::new();
    let mut open: Vec<&Acked> = acked.iter().collect();
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} commands not final after {secs} s, e.g. {:?}",
            open.len(),
            open[0]
        );
        open.retain(|(name, id)| {
            let node = nodes[fastrand::usize(..nodes.len())];
            let (status, body) = api(
                node,
                "GET",
                &format!("/api/clients/{name}/commands/{id}"),
                "",
            );
            let state = json(&body)["status"].as_str().unwrap_or("").to_string();
            let done = status == 200 && !matches!(state.as_str(), "queued" | "sent");
            if done {
                states.insert((name.clone(), *id), state);
            }
            !done
        });
        if !open.is_empty() {
            thread::sleep(Duration::from_millis(200));
        }
    }
    states
}

/// The requestIDs each device's program ran, in order.
fn runs(dir: &Path, n: usize) -> HashMap<String, Vec<i64>> {
    (0..n)
        .map(|d| {
            let name = format!("dev-{d}");
            let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            let ids = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            (name, ids)
        })
        .collect()
}

/// Every acknowledged command ran exactly once, and no command ran twice.
fn assert_exactly_once(runs: &HashMap<String, Vec<i64>>, acked: &[Acked]) {
    for (name, ids) in runs {
        let unique: HashSet<&i64> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{name} ran a command twice: {ids:?}"
        );
    }
    for (name, id) in acked {
        let ran = runs.get(name).is_some_and(|ids| ids.contains(id));
        assert!(ran, "{name} never ran its command {id}");
    }
}

/// Median `?wait` round trip of `count` commands to `name` through `node`.
fn wait_latency(node: SocketAddr, name: &str, count: usize) -> Duration {
    let target = format!("/api/clients/{name}/commands?wait=10s");
    let mut times: Vec<Duration> = (0..count)
        .map(|_| {
            let started = Instant::now();
            let (status, body) = api(node, "POST", &target, r#"{"command":"latency"}"#);
            assert_eq!(status, 200, "{name} via {node}: {body}");
            assert_eq!(json(&body)["status"], "replied", "{body}");
            started.elapsed()
        })
        .collect();
    times.sort();
    times[count / 2]
}

/// redis-server and nginx, or `None` after saying on stderr that `test`
/// is skipped.
fn programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let found = find("redis-server").zip(find("nginx"));
    if found.is_none() {
        // Straight to stderr: libtest captures `eprintln!` but not this.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: redis-server or nginx is not installed (Debian: apt-get install \
             redis-server nginx-light; .ci/run does)"
        );
    }
    found
}

/// Writes the devices' program: it appends its requestID to
/// `runs/DEVICE` and says `ok`.
fn write_program(dir: &Path, runs_dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let run = dir.join("run.sh");
    let script = format!(
        "#!/bin/sh\necho \"$WSLOOP_REQUEST_ID\" >> '{}'/\"$WSLOOP_CLIENT\"\necho ok\n",
        runs_dir.display()
    );
    std::fs::write(&run, script).expect("run.sh");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    run
}

/// A fresh scratch directory with `runs/` and `logs/` in it.
fn scratch(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (runs_dir, logs) = (dir.join("runs"), dir.join("logs"));
    for sub in [&runs_dir, &logs] {
        std::fs::create_dir_all(sub).expect("scratch dirs");
    }
    (Scratch(dir), runs_dir, logs)
}

/// The requestIDs `name`'s program ran, none twice.
fn ran_once(runs_dir: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(runs_dir.join(name)).unwrap_or_default();
    let ids: Vec<String> = text.lines().map(str::to_string).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{name} ran a command twice: {ids:?}"
    );
    ids
}

/// Redis goes away and comes back; a device's name moves between nodes.
#[test]
fn redis_outage_keeps_devices_and_a_name_moves_between_nodes() {
    let Some((redis_server, _)) = programs("redis outage test") else {
        return;
    };
    let (scratch, runs_dir, logs) = scratch("outage");
    let dir = scratch.0.clone();
    let (redis, redis_port) = start_redis(&redis_server, &dir);
    let operator = dir.join("operator");
    std::fs::write(&operator, OPERATOR).expect("operator token");
    let (mut n1, a1) = start_node("n1", redis_port, &operator, true);
    let (_n2, a2) = start_node("n2", redis_port, &operator, false);
    let run = write_program(&dir, &runs_dir);
    let _device = start_device("pump", a1, &run, &logs);
    wait_until(10, "pump on n1, as n2 sees it", || {
        holders(a2).get("pump").map(String::as_str) == Some("n1")
    });

    // Another connection claims the name on n2: n1 closes the device's
    // with 4000; the device reconnects to n1, and n2 closes the intruder.
    let intruder = common::bounded(20, async {
        let stream = smol::net::TcpStream::connect(a2)
            .await
            .expect("tcp connect");
        let url = format!("ws://{a2}/server?client=pump");
        let (mut ws, _) = async_tungstenite::client_async(url, stream)
            .await
            .expect("websocket handshake");
        common::next_close_code(&mut ws).await
    });
    assert_eq!(
        intruder,
        Some(4000),
        "the older connection on n2 is closed with 4000"
    );
    let device_log = logs.join("pump.log");
    let replaced = std::fs::read_to_string(&device_log).unwrap_or_default();
    assert!(
        replaced.contains("4000"),
        "the device saw its 4000: {replaced}"
    );
    wait_until(10, "pump back on n1", || {
        holders(a2).get("pump").map(String::as_str) == Some("n1")
    });
    let (status, body) = api(
        a2,
        "POST",
        "/api/clients/pump/commands?wait=10s",
        r#"{"command":"a"}"#,
    );
    assert_eq!(
        (status, json(&body)["status"].as_str()),
        (200, Some("replied")),
        "{body}"
    );
    // /metrics on either node: both nodes alive, the device on n1.
    wait_until(10, "the cluster's gauges", || {
        let (_, text) = api(a2, "GET", "/metrics", "");
        text.contains("wsloop_cluster_nodes 2\n")
            && text.contains("wsloop_cluster_named_clients{node=\"n1\"} 1\n")
            && text.contains("wsloop_cluster_named_clients{node=\"n2\"} 0\n")
    });

    // Redis goes away: the device stays, the API answers 503, n1 says so once.
    let drops_before = replaced.matches("lost").count();
    drop(redis);
    let command = r#"{"command":"b"}"#;
    for _ in 0..3 {
        let (status, body) = api(a1, "POST", "/api/clients/pump/commands", command);
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("Redis unreachable"), "{body}");
    }
    let (status, _) = api(a2, "GET", "/api/clients", "");
    assert_eq!(status, 503);
    n1.wait_for_stderr(10, "the outage", |l| l.contains("unreachable"));
    // Beyond a heartbeat of the outage, the device is still connected.
    thread::sleep(HEARTBEAT_AND_A_HALF);
    let after = std::fs::read_to_string(&device_log).unwrap_or_default();
    assert_eq!(
        after.matches("lost").count(),
        drops_before,
        "the device kept its connection: {after}"
    );

    // Redis is back (its data from the append-only file): commands flow.
    let _redis = restart_redis(&redis_server, &dir, redis_port);
    wait_until(30, "a command replied after Redis came back", || {
        let (status, body) = api(a2, "POST", "/api/clients/pump/commands?wait=5s", command);
        status == 200 && json(&body)["status"] == "replied"
    });
    n1.wait_for_stderr(10, "the recovery", |l| l.contains("reachable again"));
    n1.collect_stderr();
    let outages = n1
        .stderr_seen()
        .iter()
        .filter(|l| l.contains(": unreachable ("))
        .count();
    assert_eq!(outages, 1, "one line per change: {:#?}", n1.stderr_seen());
    let ids = ran_once(&runs_dir, "pump");
    assert_eq!(ids.len(), 2, "a, then b once Redis was back: {ids:?}");
    drop(scratch);
}

#[test]
fn three_nodes_behind_nginx_one_killed_mid_run() {
    let Some((redis_server, nginx)) = programs("cluster test") else {
        return;
    };
    let started = Instant::now();
    let n = devices();
    let node_count = env_number("WSLOOP_CLUSTER_NODES").unwrap_or(3).clamp(1, 3);
    let (scratch, runs_dir, logs) = scratch("nginx");
    let dir = scratch.0.clone();
    let (_redis, redis_port) = start_redis(&redis_server, &dir);

    // Three nodes, nginx in front.
    let operator = dir.join("operator");
    std::fs::write(&operator, OPERATOR).expect("operator token");
    let ids = ["n1", "n2", "n3"];
    let mut nodes: Vec<(Proc, SocketAddr)> = ids[..node_count]
        .iter()
        .map(|id| start_node(id, redis_port, &operator, false))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, a)| *a).collect();
    let (_nginx, front) = start_nginx(&nginx, &dir, &addrs);

    // The devices: their program notes each run, one line per requestID.
    let run = write_program(&dir, &runs_dir);
    let _devices: Vec<Killed> = (0..n)
        .map(|d| start_device(&format!("dev-{d}"), front, &run, &logs))
        .collect();
    wait_until(60, "every device connected", || {
        holders(addrs[0]).len() == n
    });
    let spread = holders(addrs[0]);
    for id in &ids[..node_count] {
        let held = spread.values().filter(|node| node == id).count();
        eprintln!("node {id} holds {held} devices");
        assert!(held > 0, "nginx sent no device to {id}");
    }

    // 1. Commands through random nodes' APIs: all replied, each run once.
    let sent_at = Instant::now();
    let (acked, rate) = send_round(&addrs, n, 1);
    let states = final_states(&addrs, &acked, 60);
    let all_replied = sent_at.elapsed();
    assert!(states.values().all(|s| s == "replied"), "{states:?}");
    assert_exactly_once(&runs(&runs_dir, n), &acked);
    eprintln!(
        "FIGURE {node_count} node(s), {n} devices: {} commands through the API at {rate:.0}/s; \
         all replied after {:.2} s",
        acked.len(),
        all_replied.as_secs_f64()
    );

    // A broadcast through one node reaches the devices on every node.
    let (status, body) = api(
        addrs[node_count - 1],
        "POST",
        "/api/broadcast",
        r#"{"command":"all"}"#,
    );
    assert_eq!(status, 202, "{body}");
    let answer = json(&body);
    let broadcast: Vec<Acked> = answer["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| Some((c["client"].as_str()?.to_string(), c["requestID"].as_i64()?)))
        .collect();
    assert_eq!(broadcast.len(), n, "one command per device: {body}");
    assert_eq!(answer["refused"], serde_json::json!([]), "{body}");
    let states = final_states(&addrs, &broadcast, 60);
    assert!(states.values().all(|s| s == "replied"), "{states:?}");
    let acked: Vec<Acked> = acked.into_iter().chain(broadcast).collect();
    assert_exactly_once(&runs(&runs_dir, n), &acked);

    // The same device through its own node and through another one.
    if node_count > 1 {
        let (name, holder) = spread.iter().min().expect("a device");
        let own = ids.iter().position(|id| id == holder).expect("a node id");
        let other = (own + 1) % node_count;
        let same = wait_latency(addrs[own], name, 30);
        let cross = wait_latency(addrs[other], name, 30);
        eprintln!(
            "FIGURE ?wait round trip, median of 30: same node {:.1} ms, cross-node {:.1} ms",
            same.as_secs_f64() * 1e3,
            cross.as_secs_f64() * 1e3
        );
    }
    if node_count < 3 {
        return;
    }

    // 2. Another round, and n1 is kill -9'd once a third of it is acked.
    let victim = nodes.remove(0).0;
    let killed = Arc::new(AtomicBool::new(false));
    let killer = {
        let killed = killed.clone();
        let pid = victim.pid();
        let runs_dir = runs_dir.clone();
        let ran_before: usize = runs(&runs_dir, n).values().map(Vec::len).sum();
        let target = ran_before + n * PER_DEVICE / 3;
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            // Runs on the devices count the round's progress.
            while runs(&runs_dir, n).values().map(Vec::len).sum::<usize>() < target
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
            let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
            killed.store(status.is_ok_and(|s| s.success()), Ordering::SeqCst);
            runs(&runs_dir, n).values().map(Vec::len).sum::<usize>() - ran_before
        })
    };
    let (acked2, _) = send_round(&addrs, n, 2);
    let ran_at_kill = killer.join().expect("the killer thread");
    assert!(killed.load(Ordering::SeqCst), "kill -9 of n1 failed");
    eprintln!(
        "n1 kill -9'd after {ran_at_kill} of round 2's {} runs",
        acked2.len()
    );
    assert!(ran_at_kill < acked2.len(), "the kill came after the round");
    drop(victim);
    let survivors = &addrs[1..];
    wait_until(60, "n1's devices reconnected elsewhere", || {
        let now = holders(survivors[0]);
        now.len() == n && now.values().all(|node| node != "n1")
    });
    let states = final_states(survivors, &acked2, 90);
    let replied = states.values().filter(|s| *s == "replied").count();
    eprintln!(
        "after kill -9 of n1: {} of {} acknowledged commands replied (the rest: {:?})",
        replied,
        acked2.len(),
        states
            .values()
            .filter(|s| *s != "replied")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        replied,
        acked2.len(),
        "devices were all alive: every command should be replied"
    );
    let all: Vec<Acked> = acked.iter().chain(&acked2).cloned().collect();
    assert_exactly_once(&runs(&runs_dir, n), &all);
    assert!(started.elapsed() < BUDGET, "took {:?}", started.elapsed());
    drop(scratch);
}
