//! Real `redis-server` processes for integration tests.
//!
//! [`RedisServer`] starts a throw-away standalone server on a free loopback
//! port in a temporary directory (no persistence), waits until it answers
//! `PING`, and kills it on drop. [`RedisCluster`] does the same for a
//! three-master Redis Cluster built with `redis-cli --cluster create`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, overridable for machines where it is elsewhere.
fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

fn redis_cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

/// A loopback port nobody listens on right now (and, with `with_bus`, whose
/// cluster bus port `port + 10000` is free too).
pub fn free_port(with_bus: bool) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

/// Sends one inline command and returns the raw reply, or `None` when the
/// server does not answer.
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_for_pong(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(reply) = raw_command(port, "PING")
            && reply.starts_with("+PONG")
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server on port {port} exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING");
}

fn spawn_server(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let mut cmd = Command::new(redis_server_bin());
    cmd.current_dir(dir)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--dir", &dir.to_string_lossy()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn redis-server (is it installed?)")
}

/// A standalone `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Another process may grab the port between our probe and the
        // server's bind; try a few ports.
        for _ in 0..5 {
            let port = free_port(false);
            let mut child = spawn_server(dir.path(), port, extra);
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            wait_for_pong(port, &mut child);
            return Self {
                child: Some(child),
                port,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                dir,
            };
        }
        panic!("could not start redis-server");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one inline command (e.g. `CLIENT KILL TYPE pubsub`).
    pub fn command(&self, command: &str) -> String {
        raw_command(self.port, command).unwrap_or_default()
    }

    /// Kills the server (data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn_server(self.dir.path(), self.port, &extra);
            std::thread::sleep(Duration::from_millis(50));
            match child.try_wait() {
                // The old socket may linger a moment; retry.
                Ok(Some(_)) if Instant::now() < deadline => continue,
                _ => {
                    wait_for_pong(self.port, &mut child);
                    self.child = Some(child);
                    return;
                }
            }
        }
    }
}

impl RedisServer {
    /// Starts a server that writes every command to its append-only file
    /// before answering, so [`restart`](Self::restart) (same port, same
    /// directory) brings the data back, as a production Redis restarted
    /// with AOF would.
    pub fn start_persistent() -> Self {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas), killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them into a cluster
    /// covering all 16384 slots.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().expect("temp dir");
                let port = free_port(true);
                let mut child = spawn_server(
                    dir.path(),
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                );
                wait_for_pong(port, &mut child);
                RedisServer {
                    child: Some(child),
                    port,
                    extra: Vec::new(),
                    dir,
                }
            })
            .collect();
        let mut create = Command::new(redis_cli_bin());
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// The seed URLs, comma-separated (the form `--redis-url` accepts).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}
