//! The `socket` application: connects out to a listener and speaks the
//! outbound event-socket protocol for one channel, using the same command
//! handling as the inbound socket (`Session`).
//!
//! `async full` (the quoted form) parks the channel and lets the socket run
//! any command; without `async` the socket is static (applications run in
//! the socket's turn, `sendmsg` answers when they finish) and without `full`
//! it is single-channel (`event`, `linger`, `api` … are refused), as trace
//! 07 shows.

use crate::sim::Core;
use crate::sim::mailbox::{ChanMsg, ChannelHandle};
use crate::sim::session::{Kind, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long the `connect` may take before the socket application gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects for `channel` in the background.
pub(crate) fn spawn(
    core: Arc<Core>,
    channel: ChannelHandle,
    addr: String,
    asynchronous: bool,
    full: bool,
) {
    let tasks = core.tasks.clone();
    tasks.spawn(async move {
        let target = if addr.contains(':') {
            addr.clone()
        } else {
            format!("{addr}:8084")
        };
        let connected = tokio::select! {
            () = core.shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)) => r,
        };
        let stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(uuid = %channel.uuid, %target, error = %e, "Socket Error!");
                channel.send(ChanMsg::SocketUp(None)).await;
                return;
            }
            Err(_) => {
                tracing::warn!(uuid = %channel.uuid, %target, "Socket Error! (connect timed out)");
                channel.send(ChanMsg::SocketUp(None)).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let session = Session::new(
            core.clone(),
            Kind::Outbound { asynchronous, full },
            Some(channel.clone()),
        );
        channel
            .send(ChanMsg::SocketUp(Some((session.entry(), asynchronous))))
            .await;
        if let Err(e) = session.run(stream).await {
            tracing::debug!(uuid = %channel.uuid, error = %e, "outbound socket ended");
        }
    });
}
