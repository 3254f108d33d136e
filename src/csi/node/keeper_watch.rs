//! The plugin keeps an eye on its keeper: a keeper that restarted (its container restarted, or it was
//! killed and started again) holds none of the node's FUSE connections any more, and until they are handed
//! back a crash of the plugin would end every one of them. Each look pings the keeper; a pure decision
//! ([`next_step`]) says whether to hand every live mount (descriptor and record) back.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::recover::blocking;
use super::{Inner, NodeService};
use crate::keeper::KeeperStatus;

/// What a look at the keeper calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeeperStep {
    /// It holds what it should (or there is nothing to hold).
    Nothing,
    /// It is a different keeper from the one last seen, or holds fewer mounts than the plugin handed it:
    /// hand every live mount to it again.
    HandBack,
    /// No keeper answers while mounts need one: start one where allowed, else wait for it (in Kubernetes
    /// the kubelet restarts its container).
    Missing,
}

/// The decision for one look. `kept`: mounts the plugin has handed to a keeper; `last_pid`: the keeper seen
/// at the previous look; `status`: this look's answer (`None`: nobody answered).
pub fn next_step(kept: usize, last_pid: Option<u32>, status: Option<KeeperStatus>) -> KeeperStep {
    match status {
        _ if kept == 0 => KeeperStep::Nothing,
        None => KeeperStep::Missing,
        Some(s) if last_pid.is_some_and(|pid| pid != s.pid) => KeeperStep::HandBack,
        Some(s) if (s.mounts as usize) < kept => KeeperStep::HandBack,
        Some(_) => KeeperStep::Nothing,
    }
}

impl NodeService {
    /// Looks at the keeper `every` so often (until the service is dropped) and hands every live mount back
    /// to a keeper that restarted or lost them, so a later crash of the plugin still finds them all held.
    /// Does nothing without a keeper configured. A look with no mount handed over sends nothing, so an
    /// idle keeper outside Kubernetes can still exit.
    pub fn spawn_keeper_watch(&self, every: Duration) {
        if self.inner.survival.as_ref().and_then(|s| s.keeper.as_ref()).is_none() {
            return;
        }
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_pid = None;
            let mut missing_logged = false;
            loop {
                tick.tick().await;
                let Some(node) = upgrade(&inner) else { return };
                let status = node.look_at_keeper().await;
                let kept = node.kept_paths().len();
                match next_step(kept, last_pid, status) {
                    KeeperStep::Nothing => missing_logged = false,
                    KeeperStep::Missing => {
                        if !missing_logged {
                            tracing::warn!(
                                mounts = kept,
                                "the keeper does not answer: a plugin crash now would end its mounts"
                            );
                            missing_logged = true;
                        }
                        if node.start_keeper().await.is_some() {
                            node.hand_back_all().await;
                        }
                    }
                    KeeperStep::HandBack => {
                        tracing::warn!(
                            mounts = kept,
                            pid = status.map(|s| s.pid),
                            "the keeper restarted or lost mounts: handing them back"
                        );
                        node.hand_back_all().await;
                        missing_logged = false;
                    }
                }
                // The keeper as it is now (after a hand-back, the same one).
                last_pid = node.look_at_keeper().await.map(|s| s.pid).or(last_pid);
            }
        });
    }

    /// The keeper's answer to a ping, `None` when nobody answers.
    async fn look_at_keeper(&self) -> Option<KeeperStatus> {
        let keeper = self.inner.survival.as_ref()?.keeper.clone()?;
        blocking(move || crate::keeper::client::ping(&keeper.socket).ok()).await.ok().flatten()
    }

    /// Starts a keeper where the plugin may (outside Kubernetes).
    async fn start_keeper(&self) -> Option<KeeperStatus> {
        let keeper = self.inner.survival.as_ref()?.keeper.clone()?;
        keeper.spawn.as_ref()?;
        blocking(move || keeper.ensure().ok()).await.ok().flatten()
    }

    fn kept_paths(&self) -> Vec<PathBuf> {
        self.inner.survival.as_ref().map_or_else(Vec::new, |s| s.kept.lock().unwrap().keys().cloned().collect())
    }

    /// Hands every live mount to the keeper again. A path with a CSI call in progress is left to that call
    /// (a stage registers itself; an unstage forgets), so nothing unstaged is ever handed back.
    async fn hand_back_all(&self) {
        let mut handed = 0;
        for path in self.kept_paths() {
            let Ok(_guard) = self.lock(&[&path]) else { continue };
            let record = self.inner.survival.as_ref().and_then(|s| s.kept.lock().unwrap().get(&path).cloned());
            let Some(record) = record else { continue };
            handed += usize::from(self.hand_to_keeper(&path, record).await);
        }
        tracing::info!(mounts = handed, "mounts handed back to the keeper");
    }
}

fn upgrade(inner: &Weak<Inner>) -> Option<NodeService> {
    inner.upgrade().map(|inner| NodeService { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(mounts: u32, pid: u32) -> Option<KeeperStatus> {
        Some(KeeperStatus { mounts, pid })
    }

    #[test]
    fn nothing_to_hold_means_nothing_to_do_whatever_the_keeper() {
        assert_eq!(next_step(0, None, None), KeeperStep::Nothing);
        assert_eq!(next_step(0, Some(5), status(0, 6)), KeeperStep::Nothing);
    }

    #[test]
    fn a_keeper_that_answers_with_everything_is_left_alone() {
        assert_eq!(next_step(2, None, status(2, 7)), KeeperStep::Nothing);
        assert_eq!(next_step(2, Some(7), status(2, 7)), KeeperStep::Nothing);
        // A predecessor's mounts it also holds (a surge) are not ours to count.
        assert_eq!(next_step(2, Some(7), status(5, 7)), KeeperStep::Nothing);
    }

    #[test]
    fn a_new_keeper_or_one_holding_less_gets_everything_back() {
        assert_eq!(next_step(2, Some(7), status(2, 8)), KeeperStep::HandBack);
        assert_eq!(next_step(2, Some(7), status(0, 8)), KeeperStep::HandBack);
        assert_eq!(next_step(2, None, status(0, 8)), KeeperStep::HandBack);
        assert_eq!(next_step(2, Some(7), status(1, 7)), KeeperStep::HandBack);
    }

    #[test]
    fn no_keeper_while_mounts_need_one_is_missing() {
        assert_eq!(next_step(1, Some(7), None), KeeperStep::Missing);
        assert_eq!(next_step(1, None, None), KeeperStep::Missing);
    }
}
