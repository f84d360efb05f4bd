//! How a device's session ended, and where its next attempt goes: the
//! codes and connection losses `route`'s `Dialer` is told about.

use tillstream_protocol::{ErrorCode, Redirect};

use crate::route::shorten;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client is closing.
    Shutdown,
    /// The server rejected the device for good.
    Fatal { code: u16, reason: String },
    /// The connection was lost or could not be set up; try again, where
    /// `then` says.
    Lost {
        reason: String,
        welcomed: bool,
        then: Then,
    },
}

/// Where the next attempt goes after a lost session (see [`Dialer`]).
#[derive(Debug)]
pub(crate) enum Then {
    /// The same address, after a backoff: a plain disconnect, a retryable
    /// refusal.
    Same,
    /// The next seed, after a backoff: the node failed the connection or
    /// does not serve the device.
    NextSeed,
    /// Where the `Redirect` says, at once if the dialer allows.
    Redirect(Redirect),
}

impl End {
    pub(crate) fn lost(reason: impl Into<String>, welcomed: bool, then: Then) -> Self {
        End::Lost {
            reason: reason.into(),
            welcomed,
            then,
        }
    }

    /// A connection that failed before `Welcome`: the node may be dead.
    pub(crate) fn failed(reason: impl Into<String>) -> Self {
        End::lost(reason, false, Then::NextSeed)
    }

    /// The node sent the device elsewhere.
    pub(crate) fn redirected(r: Redirect, welcomed: bool) -> Self {
        let reason = format!(
            "redirected to {:?} (store {}, epoch {})",
            shorten(&r.owner, 128),
            r.store,
            r.epoch
        );
        End::lost(reason, welcomed, Then::Redirect(r))
    }
}

/// Where a retryable code sends the device. `busy` (its earlier batches
/// are still being committed there) to the same node; any other to the
/// next seed: `not_owner` says the node does not serve it, and
/// `draining` and `store_unavailable` say the node cannot serve it now
/// (shutting down; fenced, cut off from its cluster, or the store
/// changing hands), where another node may, or redirects it back.
pub(crate) fn then_after(code: u16) -> Then {
    if code == ErrorCode::Busy.as_u16() {
        Then::Same
    } else {
        Then::NextSeed
    }
}

/// Where a lost connection sends the device: an idle timeout (the node
/// stopped answering: it may have died), or a close by the server with a
/// code [`then_after`] sends elsewhere, to another node; anything else (a
/// reset, a stream error) to the same one.
pub(crate) fn then_after_loss(e: &quinn::ConnectionError) -> Then {
    match e {
        quinn::ConnectionError::TimedOut => Then::NextSeed,
        quinn::ConnectionError::ApplicationClosed(c) => {
            match u16::try_from(c.error_code.into_inner()) {
                Ok(code) if ErrorCode::from_u16(code).is_some_and(ErrorCode::is_retryable) => {
                    then_after(code)
                }
                _ => Then::Same,
            }
        }
        _ => Then::Same,
    }
}
