//! The inbound event socket: accepts connections and runs a
//! `Session` for each, one task per
//! connection. A connection's failure is logged and never affects the others.

use crate::sim::Core;
use crate::sim::session::{Kind, Session};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Accepts until the simulator shuts down.
pub(crate) async fn run(listener: TcpListener, core: Arc<Core>) {
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let session = Session::new(core.clone(), Kind::Inbound, None);
                    core.tasks.spawn(async move {
                        if let Err(e) = session.run(stream).await {
                            tracing::debug!(%peer, error = %e, "event socket connection ended");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "event socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}
