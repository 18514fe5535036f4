//! Running voice applications and routing calls to them.
//!
//! - [`run_app`] / [`spawn_app`]: run an app on a leg and hand its typed
//!   result or error to whoever started it (Doug's `returnResult` /
//!   `returnError`). A panic becomes [`AppError::Panicked`]; an app still
//!   running [`APP_GRACE`] after the leg's socket closed is dropped
//!   ([`AppError::LegClosed`]), so a forgotten app cannot outlive its call.
//!   When the app ends with the leg still up, the leg is hung up.
//! - [`AppRouter`]: inbound calls. It maps the dialled number
//!   (`Caller-Destination-Number`) to an app, with a fallback, and is a
//!   [`CallHandler`] for the outbound listener or the `other` handler of
//!   [`Dialer::handler`].
//! - [`Dialer::place_call`]: an app places a call (Doug's `placeCall`) and
//!   gets a [`Voice`] for the new leg, or the rejection cause.

use super::{Voice, VoiceError};
use crate::switch::app::{DialError, Dialer, Originate, kill_leg};
use crate::switch::call::{Call, Direction};
use crate::switch::outbound::{AppResult, BoxError, CallHandler};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long an app may go on after its leg's socket closed (to finish
/// reading the last events and return its result) before it is dropped.
pub const APP_GRACE: Duration = Duration::from_secs(1);

/// How a voice application run by [`run_app`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError<E> {
    /// The app returned this error (Doug's `returnError`).
    #[error("voice application failed: {0}")]
    App(E),
    /// The app panicked; its leg was hung up.
    #[error("voice application panicked: {0}")]
    Panicked(String),
    /// The leg's socket closed and the app did not return within
    /// [`APP_GRACE`]; it was dropped.
    #[error("the call ended and the voice application did not return")]
    LegClosed,
    /// The app could not be started on the leg.
    #[error(transparent)]
    Voice(VoiceError),
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `fut` until it returns, panics, or the leg's socket has been closed
/// for [`APP_GRACE`].
async fn guard<T, E>(
    call: &Call,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, AppError<E>> {
    let fut = AssertUnwindSafe(fut).catch_unwind();
    tokio::pin!(fut);
    let outcome = tokio::select! {
        biased;
        r = &mut fut => r,
        () = call.closed() => match tokio::time::timeout(APP_GRACE, &mut fut).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(uuid = call.uuid(), "the call ended and its voice application did not return; dropping it");
                return Err(AppError::LegClosed);
            }
        },
    };
    match outcome {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(AppError::App(e)),
        Err(panic) => {
            let message = panic_message(&*panic);
            tracing::error!(uuid = call.uuid(), panic = %message, "voice application panicked");
            Err(AppError::Panicked(message))
        }
    }
}

/// Hangs the leg up after its app ended, if the app left it up.
async fn hang_up_after(call: &Call, ok: bool) {
    let cause = if ok {
        "NORMAL_CLEARING"
    } else {
        "NORMAL_TEMPORARY_FAILURE"
    };
    if let Err(error) = kill_leg(call, cause).await {
        tracing::debug!(uuid = call.uuid(), %error, "hangup after the app ended failed");
    }
}

/// Runs a voice application on a leg and returns its result (Doug's
/// `returnResult`/`returnError`). The app gets a [`Voice`] for the leg;
/// when it ends, panics or is dropped with the leg still up, the leg is
/// hung up (`NORMAL_CLEARING` after success, `NORMAL_TEMPORARY_FAILURE`
/// otherwise).
pub async fn run_app<U, T, E, F, Fut>(call: Call, app: F) -> Result<T, AppError<E>>
where
    U: Send + 'static,
    F: FnOnce(Voice<U>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let voice = match Voice::new(call.clone()) {
        Ok(v) => v,
        Err(e) => {
            hang_up_after(&call, false).await;
            return Err(AppError::Voice(e));
        }
    };
    run_on(voice, app).await
}

/// [`run_app`] on a [`Voice`] already made (e.g. by
/// [`Dialer::place_call`]).
pub async fn run_on<U, T, E, F, Fut>(voice: Voice<U>, app: F) -> Result<T, AppError<E>>
where
    U: Send + 'static,
    F: FnOnce(Voice<U>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let call = voice.call().clone();
    let r = guard(&call, app(voice)).await;
    hang_up_after(&call, r.is_ok()).await;
    r
}

/// [`run_on`] in its own task; the [`JoinHandle`] yields the app's result.
pub fn spawn_app<U, T, E, F, Fut>(voice: Voice<U>, app: F) -> JoinHandle<Result<T, AppError<E>>>
where
    U: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Voice<U>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    tokio::spawn(run_on(voice, app))
}

type BoxedApp<U> = Arc<dyn Fn(Voice<U>) -> BoxFuture<'static, AppResult> + Send + Sync>;

/// Inbound calls: runs the app registered for the dialled number
/// (`Caller-Destination-Number`), or the fallback; a call with neither is
/// rejected with `UNALLOCATED_NUMBER`. Use it as the outbound listener's
/// handler, or as the `other` handler of [`Dialer::handler`] (the
/// dialplan in `freeswitch-conf/dialplan/redswitch.xml` sends extension
/// 7000 to the listener).
///
/// An app's error or panic is logged and its leg hung up with
/// `NORMAL_TEMPORARY_FAILURE` by the listener; the listener and the other
/// calls go on.
pub struct AppRouter<U = ()> {
    routes: HashMap<String, BoxedApp<U>>,
    fallback: Option<BoxedApp<U>>,
}

impl<U> std::fmt::Debug for AppRouter<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppRouter")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl<U: Send + 'static> Default for AppRouter<U> {
    fn default() -> Self {
        Self::new()
    }
}

fn boxed<U, F, Fut>(app: F) -> BoxedApp<U>
where
    U: Send + 'static,
    F: Fn(Voice<U>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AppResult> + Send + 'static,
{
    Arc::new(move |v| app(v).boxed())
}

impl<U: Send + 'static> AppRouter<U> {
    /// A router with no routes.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            fallback: None,
        }
    }

    /// Runs `app` for calls to `destination` (an exact match).
    pub fn route<F, Fut>(mut self, destination: impl Into<String>, app: F) -> Self
    where
        F: Fn(Voice<U>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AppResult> + Send + 'static,
    {
        self.routes.insert(destination.into(), boxed(app));
        self
    }

    /// Runs `app` for calls no route matches.
    pub fn fallback<F, Fut>(mut self, app: F) -> Self
    where
        F: Fn(Voice<U>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = AppResult> + Send + 'static,
    {
        self.fallback = Some(boxed(app));
        self
    }

    fn lookup(&self, destination: &str) -> Option<BoxedApp<U>> {
        self.routes
            .get(destination)
            .or(self.fallback.as_ref())
            .cloned()
    }
}

impl<U: Send + 'static> CallHandler for AppRouter<U> {
    async fn handle(&self, call: Call) -> AppResult {
        let destination = call.channel_data().destination().unwrap_or_default();
        let Some(app) = self.lookup(destination) else {
            tracing::warn!(
                uuid = call.uuid(),
                destination,
                "no voice application for this number; rejecting"
            );
            kill_leg(&call, "UNALLOCATED_NUMBER").await?;
            return Ok(());
        };
        let voice = Voice::new(call.clone())?;
        match guard(&call, app(voice)).await {
            Ok(()) => Ok(()),
            Err(AppError::App(e)) => Err(e),
            Err(e) => Err(BoxError::from(e.to_string())),
        }
    }
}

/// Why [`Dialer::place_call`] did not give a leg.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The call could not be placed (bad dial string, FreeSWITCH refused the
    /// job or is unreachable).
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The call was rejected or ended before it was answered (Doug's
    /// `CallRejectedEvent`): `USER_BUSY`, `NO_ANSWER`,
    /// `UNALLOCATED_NUMBER` …
    #[error("the call was rejected: {cause}")]
    Rejected {
        /// FreeSWITCH's hangup cause.
        cause: String,
    },
    /// The new leg could not be taken over.
    #[error(transparent)]
    Voice(#[from] VoiceError),
}

impl Dialer {
    /// Places a call for a voice application (Doug's `placeCall(to,
    /// from)`): `bgapi originate {…}<endpoint> '&socket(<listener> async
    /// full)'` through the inbound connection. Resolves when the far end
    /// answered and the new leg's socket connected (matched by its
    /// origination uuid), with a [`Voice`] whose first events are
    /// `CallStarted { Outbound }` and `Answered`, or with
    /// [`PlaceError::Rejected`] and FreeSWITCH's cause.
    pub async fn place_call<U: Send + 'static>(
        &self,
        req: &Originate,
    ) -> Result<Voice<U>, PlaceError> {
        let ringing = self.originate(req).await?;
        let call = ringing
            .answered()
            .await
            .map_err(|cause| PlaceError::Rejected { cause })?;
        Ok(Voice::with_direction(call, Direction::Outbound)?)
    }
}
