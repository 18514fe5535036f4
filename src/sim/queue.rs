//! A channel's queue of parsed `sendmsg` messages (executes and hangups),
//! with FreeSWITCH's rules: a message runs at once, nested in the running
//! application, when that application lets it (not executed with
//! `event-lock`, or one that runs "forever" such as `park`); otherwise it
//! waits, in order, until the application ends (traces 09–11).
//! `uuid_break <uuid> all` flushes it (trace 10). Pure: the channel task
//! decides what "open" means and runs what comes out.

use crate::sim::mailbox::{ExecReq, PrivateMsg};
use std::collections::VecDeque;

/// A `sendmsg` that can wait behind an event-locked application.
#[derive(Debug)]
pub(crate) enum Queued {
    Exec(ExecReq),
    Hangup(PrivateMsg),
}

impl Queued {
    /// A static socket's `sendmsg` waits for its completion: tell it the
    /// message is gone.
    fn release(self) {
        if let Queued::Exec(ExecReq { done: Some(d), .. }) = self {
            let _ = d.send(());
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct SendmsgQueue {
    items: VecDeque<Queued>,
}

impl SendmsgQueue {
    /// A newly parsed message. `open`: whether the running application lets
    /// a message start now. Returns it when it may run at once (open, and
    /// nothing waits before it); otherwise it is queued.
    pub(crate) fn offer(&mut self, item: Queued, open: bool) -> Option<Queued> {
        if open && self.items.is_empty() {
            Some(item)
        } else {
            self.items.push_back(item);
            None
        }
    }

    /// The next waiting message, when the running application lets it start.
    pub(crate) fn next(&mut self, open: bool) -> Option<Queued> {
        if open { self.items.pop_front() } else { None }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops every waiting message (`uuid_break … all`, the channel's end).
    pub(crate) fn flush(&mut self) {
        for item in self.items.drain(..) {
            item.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(app: &str) -> Queued {
        Queued::Exec(ExecReq::new(app, ""))
    }

    fn hangup() -> Queued {
        Queued::Hangup(PrivateMsg {
            call_command: "hangup".into(),
            hangup_cause: "NORMAL_CLEARING".into(),
            ..PrivateMsg::default()
        })
    }

    #[test]
    fn runs_at_once_when_open_and_nothing_waits() {
        let mut q = SendmsgQueue::default();
        assert!(matches!(q.offer(hangup(), true), Some(Queued::Hangup(_))));
        assert!(q.is_empty());
    }

    #[test]
    fn a_hangup_behind_a_locked_app_waits_until_it_ends() {
        let mut q = SendmsgQueue::default();
        assert!(q.offer(hangup(), false).is_none());
        assert!(q.next(false).is_none(), "still locked");
        assert!(matches!(q.next(true), Some(Queued::Hangup(_))));
        assert!(q.next(true).is_none());
    }

    #[test]
    fn order_is_kept_even_when_the_app_opens() {
        let mut q = SendmsgQueue::default();
        assert!(q.offer(exec("playback"), false).is_none());
        // Open now, but one message waits: the new one goes behind it.
        assert!(q.offer(hangup(), true).is_none());
        assert!(matches!(q.next(true), Some(Queued::Exec(_))));
        assert!(matches!(q.next(true), Some(Queued::Hangup(_))));
    }

    #[test]
    fn flush_drops_everything_and_releases_static_waiters() {
        let mut q = SendmsgQueue::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut req = ExecReq::new("playback", "x");
        req.done = Some(tx);
        assert!(q.offer(Queued::Exec(req), false).is_none());
        assert!(q.offer(hangup(), false).is_none());
        q.flush();
        assert!(q.is_empty());
        assert!(q.next(true).is_none());
        assert_eq!(rx.try_recv(), Ok(()));
    }
}
