//! Name resolution off the executor, for the server's `bind` and the
//! client's dial.
//!
//! `ToSocketAddrs` on a host name calls `getaddrinfo`, which blocks for as
//! long as DNS takes (seconds when a resolver is down): on an executor
//! thread that stalls every task on it. A literal address needs no lookup
//! and is parsed in place; a name is resolved on `blocking`'s thread pool
//! (the one smol's own `resolve` uses), so any executor keeps running.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Every address `address` (`HOST:PORT`) names, in the resolver's order.
pub(crate) async fn resolve(address: &str) -> io::Result<Vec<SocketAddr>> {
    // An IP literal: no lookup, no thread.
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let address = address.to_owned();
    blocking::unblock(move || address.to_socket_addrs().map(Iterator::collect)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_names_resolve() {
        let literal = smol::block_on(resolve("127.0.0.1:8080")).unwrap();
        assert_eq!(literal, ["127.0.0.1:8080".parse().unwrap()]);
        let name = smol::block_on(resolve("localhost:8080")).unwrap();
        assert!(name
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
        assert!(!name.is_empty());
        assert!(smol::block_on(resolve("no port")).is_err());
    }
}
