//! A simulator, an outbound listener running an [`AppRouter`] behind a
//! [`Dialer`], and temporary media and recordings folders: what the voice
//! API tests run against.

use redswitch::sim::{ChannelSnapshot, SimConfig, SimHandle, Simulator};
use redswitch::switch::app::{Dialer, Originate};
use redswitch::switch::voice::{AppRouter, Voice};
use redswitch::switch::{InboundClient, InboundConfig, OutboundConfig, OutboundListener};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub sim: SimHandle,
    pub dialer: Dialer,
    pub inbound: InboundClient,
    pub app_addr: SocketAddr,
    pub stop: CancellationToken,
    pub media: tempfile::TempDir,
    pub recordings: tempfile::TempDir,
}

impl Harness {
    /// Starts everything; inbound calls (the sim's `socket` extension) go
    /// to `router`.
    pub async fn start(router: AppRouter) -> Harness {
        let media = tempfile::tempdir().expect("tempdir");
        std::fs::write(media.path().join("hello.wav"), b"RIFF").expect("media file");
        let recordings = tempfile::tempdir().expect("tempdir");
        let listener = OutboundListener::bind("127.0.0.1:0", OutboundConfig::default())
            .await
            .expect("bind listener");
        let app_addr = listener.local_addr().expect("local addr");
        let sim = Simulator::start(SimConfig {
            esl_listen: "127.0.0.1:0".parse().expect("addr"),
            ring_time: Duration::from_millis(20),
            media_dir: Some(media.path().to_path_buf()),
            file_play_time: Duration::from_millis(300),
            recordings_dir: Some(recordings.path().to_path_buf()),
            socket_extension: app_addr.to_string(),
            ..Default::default()
        })
        .await
        .expect("simulator");
        let (inbound, events) =
            InboundClient::connect(InboundConfig::new(sim.esl_addr().to_string(), "ClueCon"))
                .await
                .expect("inbound client");
        let (dialer, _task) =
            Dialer::start(inbound.clone(), events, &app_addr.to_string(), "voice-test")
                .await
                .expect("dialer");
        let stop = CancellationToken::new();
        tokio::spawn(listener.serve(dialer.handler(router), stop.clone()));
        Harness {
            sim,
            dialer,
            inbound,
            app_addr,
            stop,
            media,
            recordings,
        }
    }

    /// Places a call to `number` through a gateway and takes over its leg.
    pub async fn call<U: Send + 'static>(&self, number: &str) -> Voice<U> {
        self.dialer
            .place_call(&Originate {
                endpoint: format!("sofia/gateway/gw/{number}"),
                caller_id_number: Some("15550001111".into()),
                ..Default::default()
            })
            .await
            .expect("call answered")
    }

    /// An inbound call: the sim's loopback `socket` extension connects its
    /// unanswered leg to the listener. Returns the originate's result
    /// (`+OK <uuid>` once the app answers, `-ERR <cause>` if it rejects).
    pub async fn inbound_call(&self) -> String {
        match self
            .inbound
            .api("originate loopback/socket/redswitch-test &park")
            .await
        {
            Ok(reply) => reply,
            Err(redswitch::switch::Error::CommandFailed { reply }) => reply,
            Err(other) => panic!("originate: {other}"),
        }
    }

    pub fn channel(&self, uuid: &str) -> Option<ChannelSnapshot> {
        self.sim.channel(uuid)
    }

    pub fn recording(&self, name: &str) -> PathBuf {
        self.recordings.path().join(name)
    }

    /// Checks that the simulator holds no channel, then stops everything.
    pub async fn shutdown(self) {
        crate::assert_no_channels(self.sim.esl_addr()).await;
        self.stop.cancel();
        self.sim.shutdown().await;
    }
}

/// The length of a whole PCM WAV file from its header, once the file is
/// complete (the simulator writes it after RECORD_STOP).
pub fn wav_length(path: &std::path::Path) -> Option<Duration> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 44 || &bytes[..4] != b"RIFF" {
        return None;
    }
    let channels = u64::from(u16::from_le_bytes([bytes[22], bytes[23]]));
    let rate = u64::from(u32::from_le_bytes([
        bytes[24], bytes[25], bytes[26], bytes[27],
    ]));
    let data = u64::from(u32::from_le_bytes([
        bytes[40], bytes[41], bytes[42], bytes[43],
    ]));
    if rate == 0 || channels == 0 || bytes.len() as u64 != 44 + data {
        return None;
    }
    Some(Duration::from_millis(data * 1000 / (rate * 2 * channels)))
}

/// Waits for a recording to be complete and returns its length.
pub async fn recorded_length(path: &std::path::Path) -> Duration {
    let mut len = None;
    crate::eventually(
        &format!("a complete WAV at {path:?}"),
        Duration::from_secs(10),
        || {
            len = wav_length(path);
            std::future::ready(len.is_some())
        },
    )
    .await;
    len.unwrap_or_else(|| panic!("no complete WAV at {path:?}"))
}
