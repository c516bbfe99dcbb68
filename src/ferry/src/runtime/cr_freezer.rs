//! The container's cgroup freezer as the engine's [`Freezer`]: v1's `freezer.state` (or
//! cgroup2's `cgroup.freeze`) through libcgroups, which waits until the state is reached.
//!
//! The engine seizes the tree while the cgroup is frozen and thaws it only to collect the
//! ptrace stops it queued; a paused container is frozen again before its tasks are detached,
//! when it stays (`--leave-running`) or when the checkpoint fails, so it never runs.

use libcgroups::common::{AnyCgroupManager, CgroupManager, FreezerState};

use ferry_engine::container::Freezer;

/// The container's freezer.
pub struct CgroupFreezer {
    manager: AnyCgroupManager,
    /// The container was paused before the checkpoint.
    pub was_paused: bool,
}

impl CgroupFreezer {
    /// A freezer over the container's cgroup manager.
    pub fn new(manager: AnyCgroupManager, was_paused: bool) -> Self {
        Self {
            manager,
            was_paused,
        }
    }

    fn set(&self, state: FreezerState) -> Result<(), String> {
        self.manager.freeze(state).map_err(|e| e.to_string())
    }

    /// Puts the container back in the state it was found in (paused or running).
    pub fn restore_state(&self) -> Result<(), String> {
        if self.was_paused {
            self.set(FreezerState::Frozen)
        } else {
            self.set(FreezerState::Thawed)
        }
    }

    /// The container's pids (to kill every one of them after a checkpoint).
    pub fn pids(&self) -> Result<Vec<i32>, String> {
        self.manager
            .get_all_pids()
            .map(|v| v.into_iter().map(|p| p.as_raw()).collect())
            .map_err(|e| e.to_string())
    }
}

impl Freezer for CgroupFreezer {
    fn freeze(&mut self) -> Result<(), String> {
        self.set(FreezerState::Frozen)
    }

    fn thaw(&mut self) -> Result<(), String> {
        self.set(FreezerState::Thawed)
    }

    fn was_frozen(&self) -> bool {
        self.was_paused
    }

    fn processes(&self) -> Result<Vec<i32>, String> {
        self.pids()
    }
}
