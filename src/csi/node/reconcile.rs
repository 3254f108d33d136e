//! What a starting node plugin does with each volume it (or the keeper) remembers: a pure decision on what
//! was observed, so every combination is tested without mounts.
//!
//! The mount table is read from /proc/self/mountinfo only: a FUSE mount whose connection is alive but not
//! yet served (the keeper holds it) would make a stat or statfs wait until someone serves it.

/// What the mount table shows at a volume's staging path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountSeen {
    /// Nothing is mounted there.
    Absent,
    /// A `fuse.smb3-csi` mount.
    Ours,
    /// Something else (a user's mount, another driver): never ours to touch.
    Foreign,
}

/// Everything known about one staged volume at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The keeper holds the mount's /dev/fuse descriptor: the kernel connection is alive (nobody else
    /// would hold it once the old plugin is gone or has handed over).
    pub keeper_holds_device: bool,
    /// The node-stage secret is at hand (in the keeper's record).
    pub credentials: bool,
    pub mount: MountSeen,
}

/// What to do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Serve the live connection again (new SMB session, journal replayed); publishes keep working as
    /// they are bind mounts of the same superblock.
    Adopt,
    /// The FUSE connection is gone (or cannot be served): unmount the staging path and its bind mounts,
    /// then stage the volume again so the kubelet's next publish works.
    CleanAndRestage,
    /// Same, but without credentials it cannot be staged again: forget it (the kubelet stages it again
    /// when it next needs it, or its publish fails with "not staged").
    CleanAndForget,
    /// Nothing is mounted: stage again (credentials at hand).
    Restage,
    /// Nothing is mounted and no credentials: forget the record.
    Forget,
    /// Someone else's mount is there now: forget our record, touch nothing.
    LeaveForeign,
}

/// The decision for one staged volume.
pub fn decide(observed: Observed) -> Action {
    use MountSeen::*;
    match (observed.mount, observed.keeper_holds_device, observed.credentials) {
        (Foreign, _, _) => Action::LeaveForeign,
        (Ours, true, true) => Action::Adopt,
        (Ours, _, true) => Action::CleanAndRestage,
        (Ours, _, false) => Action::CleanAndForget,
        (Absent, _, true) => Action::Restage,
        (Absent, _, false) => Action::Forget,
    }
}

/// What a publish (bind mount at a pod's target path) needs after its staged volume was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishAction {
    /// Still a bind mount of the adopted (live) superblock: keep it and its record.
    Keep,
    /// Its staging mount was replaced: unmount the dead bind mount and bind the new staging mount there.
    Rebind,
    /// Its staged volume is gone: unmount it (if ours) and forget the record.
    Drop,
}

/// The decision for one publish, from what happened to its staged volume (`None`: no stage record)
/// and whether the target still is a mount of ours.
pub fn decide_publish(stage: Option<Action>, target_is_ours: bool) -> PublishAction {
    match stage {
        Some(Action::Adopt) if target_is_ours => PublishAction::Keep,
        Some(Action::Adopt | Action::CleanAndRestage | Action::Restage) => PublishAction::Rebind,
        Some(Action::CleanAndForget | Action::Forget | Action::LeaveForeign) | None => PublishAction::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(mount: MountSeen, keeper_holds_device: bool, credentials: bool) -> Action {
        decide(Observed { keeper_holds_device, credentials, mount })
    }

    /// The whole table: 3 mount states x descriptor held or not x credentials or not.
    #[test]
    fn every_combination() {
        use Action::*;
        use MountSeen::*;
        let table = [
            (Ours, true, true, Adopt),
            (Ours, true, false, CleanAndForget),
            (Ours, false, true, CleanAndRestage),
            (Ours, false, false, CleanAndForget),
            (Absent, true, true, Restage),
            (Absent, true, false, Forget),
            (Absent, false, true, Restage),
            (Absent, false, false, Forget),
            (Foreign, true, true, LeaveForeign),
            (Foreign, true, false, LeaveForeign),
            (Foreign, false, true, LeaveForeign),
            (Foreign, false, false, LeaveForeign),
        ];
        for (mount, held, creds, want) in table {
            assert_eq!(seen(mount, held, creds), want, "{mount:?} held={held} creds={creds}");
        }
    }

    #[test]
    fn publishes_follow_their_staged_volume() {
        use PublishAction::*;
        assert_eq!(decide_publish(Some(Action::Adopt), true), Keep);
        // Adopted, but the bind mount went away meanwhile: bind it again.
        assert_eq!(decide_publish(Some(Action::Adopt), false), Rebind);
        assert_eq!(decide_publish(Some(Action::CleanAndRestage), true), Rebind);
        assert_eq!(decide_publish(Some(Action::Restage), false), Rebind);
        for gone in [Action::CleanAndForget, Action::Forget, Action::LeaveForeign] {
            assert_eq!(decide_publish(Some(gone), true), Drop, "{gone:?}");
        }
        assert_eq!(decide_publish(None, true), Drop);
    }
}
