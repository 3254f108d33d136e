//! What a volume's SMB connection means for its health: the volume condition NodeGetVolumeStats reports
//! while the connection is down, and a watcher that keeps the node's metrics current between the kubelet's
//! stats calls (which come about once a minute), logging each outage of each volume once.

use std::time::{Duration, SystemTime};

use smb3::ConnectionState;

use super::proto::VolumeCondition;

/// The volume condition for a connection that is not up; `None` when it is (the caller then probes the
/// share). `shown` names the share; `soft` is the mount's soft timeout (`None`: hard).
pub(crate) fn disconnected_condition(
    state: &ConnectionState,
    shown: &str,
    soft: Option<Duration>,
    now: SystemTime,
) -> Option<VolumeCondition> {
    let ago = |since: &SystemTime| now.duration_since(*since).unwrap_or_default().as_secs();
    let message = match state {
        ConnectionState::Connected { .. } => return None,
        ConnectionState::Reconnecting { reason, since, attempts, last_error } => {
            let meanwhile = match soft {
                None => "file operations wait for it (hard mount)".to_string(),
                Some(t) => format!("file operations fail with EIO after {}s (soft mount)", t.as_secs()),
            };
            let last = match last_error {
                Some(e) => format!(", {attempts} attempts failed, the last with: {e}"),
                None => String::new(),
            };
            format!(
                "the SMB connection to {shown} is down since {}s ({reason}); reconnecting{last}; {meanwhile}",
                ago(since)
            )
        }
        ConnectionState::Failed { reason, since } => format!(
            "the SMB connection to {shown} was closed for good {}s ago ({reason}); the volume must be staged again",
            ago(since)
        ),
    };
    Some(VolumeCondition { abnormal: true, message })
}

/// Whether a connection state counts as down for the node's metrics.
pub(crate) fn is_down(state: &ConnectionState) -> bool {
    !state.is_connected()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_why_and_what_io_does() {
        let now = SystemTime::now();
        let up = ConnectionState::Connected { since: now };
        assert!(disconnected_condition(&up, "//srv/share", None, now).is_none());
        assert!(!is_down(&up));

        let reconnecting = ConnectionState::Reconnecting {
            reason: "connection reset by peer".into(),
            since: now - Duration::from_secs(12),
            attempts: 3,
            last_error: Some("connect srv:445: connection refused".into()),
        };
        assert!(is_down(&reconnecting));
        let hard = disconnected_condition(&reconnecting, "//srv/share", None, now).unwrap();
        assert!(hard.abnormal);
        for part in ["//srv/share", "since 12s", "connection reset by peer", "3 attempts", "refused", "hard"] {
            assert!(hard.message.contains(part), "{part} missing: {}", hard.message);
        }
        let soft = disconnected_condition(&reconnecting, "//srv/share", Some(Duration::from_secs(30)), now).unwrap();
        assert!(soft.message.contains("EIO after 30s (soft mount)"), "{}", soft.message);

        let first_try = ConnectionState::Reconnecting {
            reason: "no reply to ECHO within 2s".into(),
            since: now,
            attempts: 0,
            last_error: None,
        };
        let c = disconnected_condition(&first_try, "//srv/share", None, now).unwrap();
        assert!(!c.message.contains("attempts"), "{}", c.message);

        let failed = ConnectionState::Failed { reason: "signature mismatch".into(), since: now };
        let c = disconnected_condition(&failed, "//srv/share", None, now).unwrap();
        assert!(c.abnormal && c.message.contains("closed for good") && c.message.contains("staged again"));
    }
}
