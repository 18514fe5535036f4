//! The command line: clap definitions for every flag and environment
//! variable, shared by all subcommands.
//!
//! Every option has a flag and an environment variable, and the seed's
//! variable names (`ESL_URL`, `ESL_PORT`, `ESL_PASSWORD`, `PUBSUB_REDIS_URL`,
//! `PUBSUB_REDIS_TIMEOUT`) keep working. Secrets (the ESL password, a Redis
//! URL that may carry credentials) are never shown in `--help` output.

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Redswitch: a call-control agent for FreeSWITCH, driven by Redis.
#[derive(Debug, Parser)]
#[command(name = "redswitch", version, about, long_about = None)]
pub struct Cli {
    /// Settings shared by every subcommand.
    #[command(flatten)]
    pub config: Config,
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// FreeSWITCH event-socket host (also accepts host:port).
    #[arg(long, env = "ESL_URL", default_value = "127.0.0.1", global = true)]
    pub esl_host: String,
    /// FreeSWITCH event-socket port.
    #[arg(long, env = "ESL_PORT", default_value_t = 8021, global = true)]
    pub esl_port: u16,
    /// FreeSWITCH event-socket password (never logged).
    #[arg(
        long,
        env = "ESL_PASSWORD",
        default_value = "ClueCon",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    pub esl_password: String,
    /// Redis URL: redis:// or rediss:// (TLS), or a comma-separated list of
    /// cluster nodes; a cluster is detected.
    #[arg(
        long,
        env = "PUBSUB_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: String,
    /// Seconds allowed to connect to Redis.
    #[arg(
        long,
        env = "PUBSUB_REDIS_TIMEOUT",
        default_value_t = 10,
        global = true
    )]
    pub redis_timeout: u64,
    /// Where FreeSWITCH's `socket` application connects in.
    #[arg(
        long,
        env = "REDSWITCH_LISTEN",
        default_value = "127.0.0.1:8084",
        global = true
    )]
    pub listen: SocketAddr,
    /// Address put into `&socket(...)` for FreeSWITCH to reach this
    /// instance (default: the listen address).
    #[arg(long, env = "REDSWITCH_ADVERTISE", global = true)]
    pub advertise: Option<String>,
    /// The Redis list jobs are taken from.
    #[arg(
        long,
        env = "REDSWITCH_JOBS_KEY",
        default_value = "talkiq-asp.calls",
        global = true
    )]
    pub jobs_key: String,
    /// How a leg is dialled; `{provider}` is the job's call_provider and
    /// `{number}` the number to ring.
    #[arg(
        long,
        env = "REDSWITCH_DIAL_TEMPLATE",
        default_value = "sofia/gateway/{provider}/{number}",
        global = true
    )]
    pub dial_template: String,
    /// CIDRs allowed to connect to the listener (comma-separated).
    #[arg(
        long,
        env = "REDSWITCH_ALLOW",
        default_value = "127.0.0.1/32,::1/128",
        value_delimiter = ',',
        global = true
    )]
    pub allow: Vec<IpNet>,
    /// Where `record` writes (FreeSWITCH must be able to write there).
    #[arg(
        long,
        env = "REDSWITCH_RECORDINGS_DIR",
        default_value = "./recordings",
        global = true
    )]
    pub recordings_dir: PathBuf,
    /// Where `play` looks up file names.
    #[arg(
        long,
        env = "REDSWITCH_MEDIA_DIR",
        default_value = "./media",
        global = true
    )]
    pub media_dir: PathBuf,
    /// Longest a call leg may last; FreeSWITCH itself hangs it up then
    /// (`ALLOTTED_TIMEOUT`), whatever becomes of the agent. E.g. `4h`,
    /// `90m`, `1h30m`, `3600s`.
    #[arg(
        long,
        env = "REDSWITCH_MAX_CALL_DURATION",
        default_value = "4h",
        value_parser = parse_duration,
        global = true
    )]
    pub max_call_duration: Duration,
    /// Sessions per second to pace originates at (a loopback leg counts
    /// two); by default the switch's own limit (`fsctl sps`), or 30 when it
    /// will not tell.
    #[arg(
        long,
        env = "REDSWITCH_SESSIONS_PER_SECOND",
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub sessions_per_second: Option<u32>,
    /// After SIGTERM, how long live calls may go on before they are hung
    /// up (a second SIGTERM or Ctrl-C hangs up at once). E.g. `10m`, `30s`.
    #[arg(
        long,
        env = "REDSWITCH_DRAIN_TIMEOUT",
        default_value = "10m",
        value_parser = parse_duration,
        global = true
    )]
    pub drain_timeout: Duration,
    /// `text` or `json` log lines (RUST_LOG sets levels).
    #[arg(long, env = "REDSWITCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics at /metrics, and /health and /ready, on
    /// this address (off when unset).
    #[arg(long, env = "REDSWITCH_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--esl-host` is not a host or host:port.
    #[error("invalid --esl-host {0:?}: expected a host name, an IP address or host:port")]
    EslHost(String),
}

impl Config {
    /// The event socket as `host:port`. `--esl-host` may carry its own
    /// port (the seed's `ESL_URL` did), which then wins over `--esl-port`.
    pub fn esl_address(&self) -> Result<String, ConfigError> {
        esl_address(&self.esl_host, self.esl_port)
    }

    /// What goes into `&socket(...)`: `--advertise`, or the listen address.
    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// `--redis-timeout` as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_secs(self.redis_timeout)
    }
}

/// Parses a duration written for people: a number and a unit (`ms`, `s`,
/// `m`, `h`, `d`), several of them in a row (`1h30m`); a bare number is
/// seconds. Zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 4h, 90m, 1h30m, 3600s)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = rest.parse::<u64>() {
        rest = "";
        total = Duration::from_secs(secs);
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = unit
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    if total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

/// Joins a host (possibly `host:port`, `[v6]:port`, or a bare IPv6
/// address) and a default port into `host:port`.
pub fn esl_address(host: &str, port: u16) -> Result<String, ConfigError> {
    let host = host.trim();
    let host = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("esl://"))
        .unwrap_or(host);
    let bad = || ConfigError::EslHost(host.to_owned());
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    if host.parse::<SocketAddr>().is_ok() {
        return Ok(host.to_owned());
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    match host.rsplit_once(':') {
        Some((name, p)) if !name.contains(':') => {
            let p: u16 = p.parse().map_err(|_| bad())?;
            if name.is_empty() {
                return Err(bad());
            }
            Ok(format!("{name}:{p}"))
        }
        Some(_) => Err(bad()),
        None => Ok(format!("{host}:{port}")),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: take jobs, place calls, publish events, obey control.
    Serve,
    /// Check that Redis and FreeSWITCH are reachable and accept our
    /// credentials; print what was found; exit 0 or 1.
    Check,
    /// Push an asp-call job (the tester tool); with --follow print the
    /// call's events until it ends.
    Push(PushArgs),
    /// Publish a control message on a call's channel and print the ack or
    /// error.
    Control(ControlArgs),
    /// Run the FreeSWITCH simulator.
    Sim(crate::commands::sim::SimArgs),
    /// Print FreeSWITCH events as JSON lines.
    Events(crate::commands::events::EventsArgs),
    /// List the live calls from Redis (dial_id, org, user, sides, age);
    /// --check-switch compares them with FreeSWITCH's channels.
    Calls(crate::commands::calls::CallsArgs),
    /// Print the JSON Schema of a message type (the job, an event, a
    /// control message), or all of them.
    Schema(crate::commands::schema::SchemaArgs),
    /// Everything on one machine: Redis, the simulator, the agent and a
    /// sample call whose events are printed as they flow.
    Demo(DemoArgs),
    /// Ask a running agent's /health or /ready (at --metrics-listen); exit
    /// 0 on 200, else 1 with the reason (for container health checks).
    Probe(ProbeArgs),
}

/// `redswitch probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Which endpoint.
    #[arg(value_enum, default_value_t = ProbeEndpoint::Ready)]
    pub endpoint: ProbeEndpoint,
}

/// What `redswitch probe` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeEndpoint {
    /// `/health`: the agent's loops run.
    Health,
    /// `/ready`: connected to FreeSWITCH and Redis, not draining.
    Ready,
}

impl ProbeEndpoint {
    /// The HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::Ready => "/ready",
        }
    }
}

/// `redswitch push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The user's own phone, rung first (side 0).
    #[arg(long, default_value = "15105625882")]
    pub caller_number: String,
    /// The party the user wants (side 1).
    #[arg(long, default_value = "14157697098")]
    pub callee_number: String,
    /// Caller id shown to side 0 (default: the callee number).
    #[arg(long)]
    pub caller_id_lega: Option<String>,
    /// Caller id shown to side 1 (default: the caller number).
    #[arg(long)]
    pub caller_id_legb: Option<String>,
    /// The gateway (`{provider}` in the dial template).
    #[arg(long, default_value = "talk_call_provider")]
    pub call_provider: String,
    /// The call's id, also its pub/sub channel (default: a fresh uuid).
    #[arg(long)]
    pub dial_id: Option<String>,
    /// Organisation id.
    #[arg(long, default_value = "talkiq_org_id")]
    pub org_id: String,
    /// User id.
    #[arg(long, default_value = "talkiq_user_id")]
    pub user_id: String,
    /// Print the call's events until every side has hung up.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// `redswitch control`.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// The call's dial_id (the channel the message is published on).
    pub dial_id: String,
    /// The control type: hangup, barge, whisper, mute, threeway, unthreeway,
    /// play, stop-media, record, stop-record, send-dtmf.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Fields as key=value (a value that parses as JSON is sent as JSON,
    /// e.g. media='["a.wav"]' or side=1; anything else as a string).
    #[arg(value_name = "KEY=VALUE")]
    pub fields: Vec<String>,
    /// Seconds to wait for the ack or error.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// `redswitch demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this Redis instead of starting `redis-server` on a free port.
    #[arg(long)]
    pub use_redis: Option<String>,
    /// The number rung first in the sample call.
    #[arg(long, default_value = "15105625882")]
    pub caller_number: String,
    /// The number rung second (try 1555486… busy, 1555408… no answer,
    /// 1555487… far end hangs up after 2 s, 1555700… sends DTMF).
    #[arg(long, default_value = "14157697098")]
    pub callee_number: String,
    /// Seconds the sample call stays up before the demo hangs it up.
    #[arg(long, default_value_t = 3)]
    pub talk_time: u64,
    /// Keep everything running after the sample call (Ctrl-C to stop), so
    /// `push` and `control` can be tried by hand.
    #[arg(long)]
    pub stay: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esl_host_forms() {
        assert_eq!(esl_address("127.0.0.1", 8021).unwrap(), "127.0.0.1:8021");
        assert_eq!(
            esl_address("fs.example:9000", 8021).unwrap(),
            "fs.example:9000"
        );
        assert_eq!(esl_address("fs.example", 8021).unwrap(), "fs.example:8021");
        assert_eq!(esl_address("::1", 8021).unwrap(), "[::1]:8021");
        assert_eq!(esl_address("[::1]:9000", 8021).unwrap(), "[::1]:9000");
        assert_eq!(
            esl_address("tcp://10.0.0.1:8022", 8021).unwrap(),
            "10.0.0.1:8022"
        );
        for bad in ["", "host:99999", "a b", "host:", ":80", "http://x/y"] {
            assert!(esl_address(bad, 8021).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_and_env_names_match_the_spec() {
        let cli = Cli::try_parse_from(["redswitch"]).unwrap();
        let c = cli.config;
        assert_eq!(c.esl_address().unwrap(), "127.0.0.1:8021");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.jobs_key, "talkiq-asp.calls");
        assert_eq!(c.advertise(), "127.0.0.1:8084");
        assert_eq!(c.allow.len(), 2);
        assert!(cli.command.is_none());
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in [
            "",
            "0",
            "0s",
            "h",
            "4x",
            "4 h",
            "-1h",
            "1.5h",
            "99999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["redswitch"]).unwrap();
        assert_eq!(cli.config.max_call_duration, Duration::from_secs(4 * 3600));
        assert_eq!(cli.config.sessions_per_second, None);
        assert!(Cli::try_parse_from(["redswitch", "--sessions-per-second", "0"]).is_err());
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(Cli::try_parse_from(["redswitch", "--esl-port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["redswitch", "--allow", "10.0.0.0/33"]).is_err());
        assert!(Cli::try_parse_from(["redswitch", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
