//! Connections to Redis, standalone or cluster, behind one handle.
//!
//! `--redis-url` takes one URL, or several separated by commas (cluster seed
//! nodes). [`RedisClient::connect`] reaches the first node that answers and
//! asks it `INFO cluster`: with `cluster_enabled:1` every command goes
//! through a cluster client (which follows MOVED/ASK and reconnects itself),
//! otherwise through a plain multiplexed connection.
//!
//! [`RedisConn`] is a cheap `Clone` handle that implements redis-rs's
//! `ConnectionLike`, so `AsyncCommands`, `cmd(..).query_async` and pipelines
//! work on it. A multiplexed connection never reconnects by itself, so this
//! handle drops a connection whose error says it is broken and dials a new
//! one on the next command. The failed command is not retried here: the
//! caller knows whether retrying is safe, and retries with
//! [`retry::with_retry`](super::retry::with_retry).
//!
//! URLs can carry credentials, so no error or log line here contains one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::retry::no_connection;

/// Response timeout for ordinary commands. Generous, because a Redis under
/// load can pause, but bounded so a dead server is noticed.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors reaching Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `--redis-url` is empty or not a Redis URL (shown with any password
    /// replaced by `***`).
    #[error("invalid Redis URL: {0}")]
    BadUrl(String),
    /// No node answered within the connect timeout.
    #[error("Redis unreachable within {0:?}")]
    Timeout(Duration),
    /// No node could be connected to (the last node's error is shown).
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        /// The node's URL, password replaced by `***`.
        url: String,
        /// Why.
        source: RedisError,
    },
    /// Redis answered with an error or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

#[derive(Clone)]
// Both clients are boxed: they are a few hundred bytes each and of very
// different sizes.
enum Kind {
    Single(Box<redis::Client>),
    Cluster {
        client: Box<ClusterClient>,
        /// One client per seed, for the pub/sub connection: pub/sub in a
        /// cluster is broadcast, so any node serves it.
        seeds: Vec<redis::Client>,
    },
}

/// Where Redis is and how to reach it.
#[derive(Clone)]
pub struct RedisClient {
    kind: Kind,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately no addresses: they may carry credentials.
        f.debug_struct("RedisClient")
            .field("cluster", &self.is_cluster())
            .finish()
    }
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl RedisClient {
    /// Resolves `urls` (comma-separated), reaches the first node that answers
    /// within `connect_timeout` and detects whether it is a cluster.
    pub async fn connect(urls: &str, connect_timeout: Duration) -> Result<Self, StoreError> {
        let clients = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                redis::Client::open(u).map_err(|e| {
                    let why = e.detail().map_or_else(|| e.to_string(), str::to_owned);
                    StoreError::BadUrl(format!("{:?}: {why}", redact_url(u)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err(StoreError::BadUrl("no URL given".into()));
        }
        let probe = async {
            let mut last = None;
            for (c, url) in clients
                .iter()
                .zip(urls.split(',').map(str::trim).filter(|u| !u.is_empty()))
            {
                match c.get_multiplexed_async_connection().await {
                    Ok(mut conn) => {
                        let info: String = redis::cmd("INFO")
                            .arg("cluster")
                            .query_async(&mut conn)
                            .await?;
                        return Ok(info.contains("cluster_enabled:1"));
                    }
                    Err(source) => {
                        last = Some(StoreError::Unreachable {
                            url: redact_url(url),
                            source,
                        })
                    }
                }
            }
            Err(last.unwrap_or_else(|| StoreError::BadUrl("no URL given".into())))
        };
        let cluster = tokio::time::timeout(connect_timeout, probe)
            .await
            .map_err(|_| StoreError::Timeout(connect_timeout))??;
        let kind = if cluster {
            let infos = clients.iter().map(|c| c.get_connection_info().clone());
            let client = ClusterClient::builder(infos)
                .connection_timeout(connect_timeout)
                .response_timeout(DEFAULT_RESPONSE_TIMEOUT)
                .build()?;
            Kind::Cluster {
                client: Box::new(client),
                seeds: clients,
            }
        } else {
            let mut clients = clients;
            Kind::Single(Box::new(clients.swap_remove(0)))
        };
        Ok(Self {
            kind,
            connect_timeout,
        })
    }

    /// Whether Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// What `redswitch check` prints: the server version and role of the
    /// node answering (any node, on a cluster).
    /// A read: idempotent, not retried (a check reports what it finds).
    pub async fn server_info(&self) -> Result<ServerInfo, StoreError> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(ServerInfo::from_info(&info, self.is_cluster()))
    }

    /// A shared, multiplexed connection for non-blocking commands. Cheap to
    /// clone; reconnects lazily after a failure.
    pub async fn connection(&self) -> Result<RedisConn, StoreError> {
        self.connection_with_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
            .await
    }

    /// A connection of its own, for blocking commands (`BLMOVE`) that would
    /// stall every other user of a shared multiplexed connection.
    /// `response_timeout` must exceed the blocking timeout.
    pub async fn connection_with_timeout(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<RedisConn, StoreError> {
        let conn = RedisConn {
            inner: Arc::new(ConnInner {
                client: self.clone(),
                response_timeout,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(()),
            }),
        };
        conn.current().await?;
        Ok(conn)
    }

    async fn dial(&self, response_timeout: Option<Duration>) -> Result<Conn, StoreError> {
        let dial = async {
            Ok::<_, RedisError>(match &self.kind {
                Kind::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(response_timeout);
                    Conn::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
                Kind::Cluster { client, seeds } => {
                    // The cluster client's response timeout is fixed at build
                    // time; a blocking connection needs its own client.
                    let conn = if response_timeout == Some(DEFAULT_RESPONSE_TIMEOUT) {
                        client.get_async_connection().await?
                    } else {
                        self.cluster_with_timeout(seeds, response_timeout)?
                            .get_async_connection()
                            .await?
                    };
                    Conn::Cluster(conn)
                }
            })
        };
        // The cluster client retries internally; bound the whole attempt.
        tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), dial)
            .await
            .map_err(|_| StoreError::Timeout(self.connect_timeout))?
            .map_err(Into::into)
    }

    fn cluster_with_timeout(
        &self,
        seeds: &[redis::Client],
        response_timeout: Option<Duration>,
    ) -> Result<ClusterClient, RedisError> {
        let infos = seeds.iter().map(|c| c.get_connection_info().clone());
        let mut builder = ClusterClient::builder(infos).connection_timeout(self.connect_timeout);
        // Without a response timeout the cluster client waits forever, which
        // is what a blocking command on a dedicated connection wants.
        if let Some(t) = response_timeout {
            builder = builder.response_timeout(t);
        }
        builder.build()
    }

    /// A RESP2 pub/sub connection. In a cluster, any node will do: classic
    /// `PUBLISH` is broadcast to every node.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let seeds = match &self.kind {
            Kind::Single(c) => std::slice::from_ref(c.as_ref()),
            Kind::Cluster { seeds, .. } => seeds.as_slice(),
        };
        let mut last = None;
        for c in seeds {
            match tokio::time::timeout(self.connect_timeout, c.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = Some(StoreError::Redis(e)),
                Err(_) => last = Some(StoreError::Timeout(self.connect_timeout)),
            }
        }
        Err(last.unwrap_or(StoreError::Timeout(self.connect_timeout)))
    }
}

/// A summary of the Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: String,
    /// `role`: `master` or `slave`.
    pub role: String,
    /// Whether it is a cluster.
    pub cluster: bool,
}

impl ServerInfo {
    fn from_info(info: &str, cluster: bool) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
        };
        Self {
            version: field("redis_version"),
            role: field("role"),
            cluster,
        }
    }
}

impl std::fmt::Display for ServerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.cluster {
            "cluster"
        } else {
            "standalone"
        };
        write!(f, "Redis {} ({mode}, role {})", self.version, self.role)
    }
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

struct ConnInner {
    client: RedisClient,
    response_timeout: Option<Duration>,
    /// The live connection and its generation; `None` after a failure. A std
    /// mutex: it is only held to clone or replace the value, never across
    /// an await.
    current: Mutex<Option<(u64, Conn)>>,
    /// Serialises re-dialling so a burst of failures dials once.
    dialing: tokio::sync::Mutex<()>,
}

/// A handle to one Redis connection (standalone or cluster) that redials
/// after the connection breaks. `Clone` shares the connection.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<ConnInner>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("cluster", &self.is_cluster())
            .finish()
    }
}

impl RedisConn {
    /// Whether this is a cluster connection (callers then avoid
    /// multi-slot transactions).
    pub fn is_cluster(&self) -> bool {
        self.inner.client.is_cluster()
    }

    fn cached(&self) -> Option<(u64, Conn)> {
        // A poisoned lock only means another thread panicked while cloning
        // or replacing an Option; the value itself is still consistent.
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn current(&self) -> Result<(u64, Conn), StoreError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _dialing = self.inner.dialing.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = self.inner.client.dial(self.inner.response_timeout).await?;
        let mut slot = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
        let generation = slot.as_ref().map_or(0, |(g, _)| g + 1);
        *slot = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the connection of `generation` after it failed, unless it was
    /// already replaced.
    fn discard(&self, generation: u64, err: &RedisError) {
        if err.is_unrecoverable_error() || err.is_connection_dropped() || err.is_io_error() {
            let mut slot = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
                *slot = None;
            }
        }
    }
}

/// A failed dial as the error of the command it was for. The command was
/// never sent, which [`retry`](super::retry) may rely on: a connection
/// failure becomes a [`no_connection`] error.
fn to_redis_error(e: StoreError) -> RedisError {
    match e {
        StoreError::Redis(e) if !e.is_io_error() => e,
        other => no_connection(other),
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.current().await.map_err(to_redis_error)?;
            let result = match &mut conn {
                Conn::Single(c) => c.req_packed_command(cmd).await,
                Conn::Cluster(c) => c.req_packed_command(cmd).await,
            };
            if let Err(e) = &result {
                self.discard(generation, e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current().await.map_err(to_redis_error)?;
            let result = match &mut conn {
                Conn::Single(c) => c.req_packed_commands(cmd, offset, count).await,
                Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count).await,
            };
            if let Err(e) = &result {
                self.discard(generation, e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:s3cret@host:6380"),
            "rediss://user:***@host:6380"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn server_info_from_info_text() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
                    # Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        let s = ServerInfo::from_info(info, false);
        assert_eq!((s.version.as_str(), s.role.as_str()), ("7.0.15", "master"));
        assert_eq!(s.to_string(), "Redis 7.0.15 (standalone, role master)");
        assert_eq!(ServerInfo::from_info("", true).version, "unknown");
    }

    #[tokio::test]
    async fn bad_urls_are_refused_without_echoing_them() {
        let e = RedisClient::connect("http://:pw@x", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::BadUrl(_)), "{e}");
        assert!(!e.to_string().contains("pw"));
        let e = RedisClient::connect(" , ", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::BadUrl(_)));
    }

    #[tokio::test]
    async fn unreachable_redis_errors_within_the_timeout() {
        // Port 1 on loopback: nothing listens, the connect is refused.
        let started = std::time::Instant::now();
        let e = RedisClient::connect("redis://127.0.0.1:1", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{e}");
    }
}
