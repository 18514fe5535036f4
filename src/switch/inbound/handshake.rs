//! Opening a connection: TCP connect, the `auth/request` greeting, `auth`,
//! and the replay of the subscriptions, each with its timeout. Events that
//! arrive between the replies (after the `event` command) go to the stream.

use super::config::InboundConfig;
use super::stream::EventSink;
use super::subscriptions::SubState;
use crate::esl::{Command, ContentType, Frame};
use crate::switch::error::{Error, Result};
use crate::switch::link::{self, Reader};
use bytes::BytesMut;
use futures::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// Connects, authenticates and replays the subscriptions.
pub(super) async fn open(
    cfg: &InboundConfig,
    subs: &SubState,
    sink: &mut EventSink,
) -> Result<(Reader, OwnedWriteHalf)> {
    let addr = &cfg.addr;
    let after = cfg.connect_timeout;
    let timed_out = || Error::ConnectTimeout {
        addr: addr.clone(),
        after,
    };
    let stream = tokio::time::timeout(after, TcpStream::connect(addr.as_str()))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| Error::Unreachable {
            addr: addr.clone(),
            source,
        })?;
    let (mut rd, mut wr) = link::split(stream, 8 * 1024, sink.limit())?;
    let refused = |reason: String| Error::Refused {
        addr: addr.clone(),
        reason,
    };
    let greeting = tokio::time::timeout(after, rd.next())
        .await
        .map_err(|_| timed_out())?;
    match greeting {
        None => {
            return Err(refused(
                "it closed the connection without a greeting".into(),
            ));
        }
        Some(Err(e)) => return Err(refused(format!("it does not speak ESL ({e})"))),
        Some(Ok(f)) => match f.content_type() {
            ContentType::AuthRequest => {}
            ContentType::RudeRejection => {
                let why = f
                    .body()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                return Err(refused(format!("access denied by its ACL: {why}")));
            }
            other => return Err(refused(format!("unexpected greeting {other:?}"))),
        },
    }
    let auth = Command::Auth {
        password: cfg.password.clone(),
    };
    write_command(&mut wr, &auth, sink).await?;
    let reply = read_reply(&mut rd, sink, cfg.request_timeout, "auth").await?;
    if !reply.is_ok() {
        return Err(Error::AuthFailed { addr: addr.clone() });
    }
    for cmd in subs.replay() {
        write_command(&mut wr, &cmd, sink).await?;
        let reply = read_reply(&mut rd, sink, cfg.request_timeout, link::verb(&cmd)).await?;
        if !reply.is_ok() {
            tracing::warn!(
                conn = %sink.peer,
                command = ?link::loggable_command(&cmd),
                reply = %link::reply_summary(&reply),
                "FreeSWITCH refused a subscription"
            );
        }
    }
    Ok((rd, wr))
}

async fn write_command(wr: &mut OwnedWriteHalf, cmd: &Command, sink: &EventSink) -> Result<()> {
    let mut buf = BytesMut::with_capacity(128);
    cmd.encode(&mut buf)?;
    link::log_sent(&sink.peer, &buf);
    wr.write_all(&buf).await?;
    Ok(())
}

/// Reads until a reply, passing events on.
async fn read_reply(
    rd: &mut Reader,
    sink: &mut EventSink,
    after: Duration,
    what: &'static str,
) -> Result<Frame> {
    let wait = async {
        loop {
            match rd.next().await {
                None => return Err(Error::ConnectionDropped),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(f)) => match f.content_type() {
                    ContentType::CommandReply | ContentType::ApiResponse => {
                        link::log_reply(&sink.peer, Some(what), &f);
                        return Ok(f);
                    }
                    ct if ct.is_event() => sink.push(f),
                    _ => {}
                },
            }
        }
    };
    tokio::time::timeout(after, wait)
        .await
        .map_err(|_| Error::Timeout { after })?
}
