//! Live FreeSWITCH connections: all of Redswitch's ESL I/O lives here.
//!
//! - [`inbound`]: the client actor for FreeSWITCH's event socket (port
//!   8021): `api`, `bgapi` resolved by Job-UUID, subscriptions and filters,
//!   a bounded event stream, reconnect with backoff.
//! - [`outbound`]: the listener the dialplan `socket` application connects
//!   to, one task per call leg, an allow-list and a cap on legs.
//! - [`call`]: the handle of one leg (answer, play, execute, hang up, its
//!   events), on which the voice-application API grows.
//! - [`error`]: the error type with its classifiers.
//!
//! Both kinds of connection follow one pattern (redis-rs's multiplexed
//! connection): a cloneable handle sends `(command, oneshot)` requests over a
//! bounded channel to one task that owns the socket. That task encodes each
//! command straight into its write buffer, remembers the reply slots in FIFO
//! order (FreeSWITCH answers `command/reply` and `api/response` in the order
//! of the commands), and never stops reading the socket while it waits for
//! anything: events go to bounded queues with a drop policy, so a slow
//! consumer costs events, never the connection (FreeSWITCH drops a listener
//! that lets its event queue fill up).

pub mod app;
pub mod call;
pub mod error;
pub mod inbound;
mod link;
pub mod outbound;
pub mod voice;

pub use call::{Call, CallEvents, ChannelData, Control, Direction, ExecuteComplete, SocketMode};
pub use error::{Error, Result};
pub use inbound::{BgJobResult, EventStream, InboundClient, InboundConfig, ReconnectPolicy};
pub use outbound::{AppResult, BoxError, CallHandler, OutboundConfig, OutboundListener};

/// Joins a host and a port into `host:port`, accepting a host that already
/// carries a port (`fs1:8021`, `[::1]:8021`) and bare IPv6 literals (`::1`).
pub fn host_port(host: &str, port: u16) -> String {
    let host = host.trim();
    if host.parse::<std::net::SocketAddr>().is_ok() {
        return host.to_owned();
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, port).to_string();
    }
    if let Some((name, p)) = host.rsplit_once(':')
        && !name.contains(':')
        && !p.is_empty()
        && p.parse::<u16>().is_ok()
    {
        return host.to_owned();
    }
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_accepts_every_spelling() {
        assert_eq!(host_port("127.0.0.1", 8021), "127.0.0.1:8021");
        assert_eq!(host_port("127.0.0.1:9000", 8021), "127.0.0.1:9000");
        assert_eq!(host_port("fs.example", 8021), "fs.example:8021");
        assert_eq!(host_port("fs.example:9000", 8021), "fs.example:9000");
        assert_eq!(host_port("::1", 8021), "[::1]:8021");
        assert_eq!(host_port("[::1]:9000", 8021), "[::1]:9000");
    }
}
