//! How long the client waits for a server, as pure decisions the connection
//! asks at each timer tick. A server can otherwise hold a caller forever: by
//! never answering, by answering one byte at a time, or by answering
//! STATUS_PENDING again and again (MS-SMB2 3.2.5.1.5 lets a client extend its
//! request timer for an interim response; it does not oblige it to do so
//! without end).
//!
//! Three bounds, all in [`crate::ClientOptions`]:
//! - `connect_timeout`: TCP connect, NEGOTIATE and SESSION_SETUP together.
//! - `timeout`: each request must see its response, or an interim
//!   STATUS_PENDING, within this long; otherwise the connection is declared
//!   lost (a silent server is a dead server).
//! - `pending_timeout`: the ceiling for a request the server keeps pending.
//!   Blocking LOCK and CHANGE_NOTIFY are exempt: they wait as long as their
//!   caller wants and end with an SMB2 CANCEL when the caller gives up.

use std::time::Duration;

use crate::wire::Command;

/// Whether a server may answer `command` with an interim STATUS_PENDING.
/// MS-SMB2 3.3.4.2 lets a server go async for "any request", but NEGOTIATE
/// precedes any async state, ECHO is a liveness probe answered at once, and
/// CANCEL gets no answer at all; Samba and Windows never go async on them.
/// An interim answer to these is a protocol violation, not a reason to wait.
pub(crate) fn may_go_async(command: Command) -> bool {
    !matches!(command, Command::Negotiate | Command::Echo | Command::Cancel)
}

/// What to do when a request's wait window passes without its final response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnSilence {
    /// The server said STATUS_PENDING and the request may wait this much longer.
    KeepWaiting(Duration),
    /// The server kept the request pending past the ceiling: cancel it and fail it,
    /// leaving the connection (and its other requests) alone.
    GiveUpPending,
    /// Neither a response nor an interim answer came: the server is gone.
    ServerSilent,
}

/// The decision at the end of a wait window. `patient` requests (blocking
/// LOCK, CHANGE_NOTIFY) are bounded by their caller's cancellation instead of
/// the ceiling; `waited` counts from when the request was sent.
pub(crate) fn on_silence(interim_seen: bool, patient: bool, waited: Duration, limits: WaitLimits) -> OnSilence {
    if !interim_seen {
        return OnSilence::ServerSilent;
    }
    if patient {
        return OnSilence::KeepWaiting(limits.request);
    }
    match limits.pending_ceiling.checked_sub(waited) {
        Some(left) if !left.is_zero() => OnSilence::KeepWaiting(left.min(limits.request)),
        _ => OnSilence::GiveUpPending,
    }
}

/// The per-request bounds of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WaitLimits {
    /// Longest silence (no response, no interim answer) before the connection counts as lost.
    pub request: Duration,
    /// Longest total wait for a request the server keeps STATUS_PENDING.
    pub pending_ceiling: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WaitLimits =
        WaitLimits { request: Duration::from_secs(60), pending_ceiling: Duration::from_secs(300) };

    #[test]
    fn silence_without_interim_is_a_dead_server() {
        assert_eq!(on_silence(false, false, Duration::from_secs(60), LIMITS), OnSilence::ServerSilent);
        assert_eq!(on_silence(false, true, Duration::from_secs(60), LIMITS), OnSilence::ServerSilent);
    }

    #[test]
    fn pending_extends_up_to_the_ceiling_only() {
        let s = Duration::from_secs;
        assert_eq!(on_silence(true, false, s(60), LIMITS), OnSilence::KeepWaiting(s(60)));
        assert_eq!(on_silence(true, false, s(270), LIMITS), OnSilence::KeepWaiting(s(30)));
        assert_eq!(on_silence(true, false, s(300), LIMITS), OnSilence::GiveUpPending);
        assert_eq!(on_silence(true, false, s(10_000), LIMITS), OnSilence::GiveUpPending);
    }

    #[test]
    fn patient_requests_wait_for_their_caller() {
        let s = Duration::from_secs;
        assert_eq!(on_silence(true, true, s(10_000), LIMITS), OnSilence::KeepWaiting(s(60)));
    }

    #[test]
    fn only_real_async_commands_may_pend() {
        for c in [Command::Negotiate, Command::Echo, Command::Cancel] {
            assert!(!may_go_async(c), "{c:?}");
        }
        for c in [
            Command::Create,
            Command::Read,
            Command::Write,
            Command::Lock,
            Command::ChangeNotify,
            Command::SessionSetup,
        ] {
            assert!(may_go_async(c), "{c:?}");
        }
    }
}
