//! `redswitch probe`: asks a running agent's `/health` or `/ready` and
//! exits 0 only on `200`. Container health checks use it, so the image
//! needs no HTTP client of its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time allowed for the whole exchange.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most response bytes read (the reason is one line).
const MAX_RESPONSE: u64 = 16 * 1024;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered, or the exchange broke off.
    #[error("{addr}: {source}")]
    Io {
        /// Where the probe went.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{addr}: no answer within {} s", PROBE_TIMEOUT.as_secs())]
    Timeout {
        /// Where the probe went.
        addr: SocketAddr,
    },
    /// The answer is not HTTP.
    #[error("{addr}: not an HTTP answer")]
    NotHttp {
        /// Where the probe went.
        addr: SocketAddr,
    },
    /// The agent answered something else than 200.
    #[error("{path}: {code} {reason}")]
    Status {
        /// What was asked.
        path: String,
        /// The HTTP status.
        code: u16,
        /// The body's first line.
        reason: String,
    },
}

/// Where to reach a server bound to `listen`: an unspecified address
/// (`0.0.0.0`, `::`) is reached on loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET path` from `addr`; `Ok` with the body's first line on 200.
pub async fn probe(addr: SocketAddr, path: &str) -> Result<String, ProbeError> {
    let exchange = async {
        let io = |source| ProbeError::Io { addr, source };
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .map_err(io)?;
        Ok(response)
    };
    let response = tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| ProbeError::Timeout { addr })??;
    let text = String::from_utf8_lossy(&response);
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(ProbeError::NotHttp { addr })?;
    let reason = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default();
    if code == 200 {
        Ok(reason)
    } else {
        Err(ProbeError::Status {
            path: path.to_owned(),
            code,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_probed_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(t("[::]:9090"), "[::1]:9090");
        assert_eq!(t("10.1.2.3:9090"), "10.1.2.3:9090");
    }
}
