//! Process tree: pids, tids, pgid/sid and parent links (pstree.img); dump walks /proc, restore forks with clone3(set_tid).

pub mod dump;
pub mod restore;
