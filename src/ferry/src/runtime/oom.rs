//! OOM kills of a container, for `events`: the kernel counts them per memory cgroup
//! (`oom_kill` in v1's memory.oom_control, in v2's memory.events). `events` samples the count
//! each interval and reports an `oom` event when it grew (runc waits on an eventfd instead, so
//! it reports at once; here the report comes within one interval).

use std::path::PathBuf;

/// The file holding the `oom_kill` counter of the memory cgroup of `pid`.
pub(super) fn counter_file(pid: i32) -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    counter_file_from(&cgroups, |p| p.exists())
}

/// Same, from the text of /proc/PID/cgroup (`exists` is the filesystem check, for tests).
pub(super) fn counter_file_from(
    cgroups: &str,
    exists: impl Fn(&PathBuf) -> bool,
) -> Option<PathBuf> {
    let mut unified = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let file = PathBuf::from(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
            if exists(&file) {
                return Some(file);
            }
        } else if controllers.is_empty() {
            unified = Some(path.to_string());
        }
    }
    let path = unified?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|root| PathBuf::from(format!("{root}{path}/memory.events")))
        .find(|f| exists(f))
}

/// The `oom_kill` count in a memory.oom_control or memory.events text.
pub(super) fn parse_count(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == "oom_kill")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The current count, if the file is readable.
pub(super) fn read_count(file: &PathBuf) -> Option<u64> {
    parse_count(&std::fs::read_to_string(file).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_v1_and_v2_files() {
        assert_eq!(
            parse_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(
            parse_count("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        assert_eq!(parse_count("under_oom 0\n"), None);
    }

    #[test]
    fn v1_memory_line_wins_then_unified() {
        let text = "4:memory:/:youki:c1\n0::/\n";
        let f = counter_file_from(text, |_| true).unwrap();
        assert_eq!(
            f,
            PathBuf::from("/sys/fs/cgroup/memory/:youki:c1/memory.oom_control")
        );
        let text = "0::/ferry/c2\n";
        let f = counter_file_from(text, |_| true).unwrap();
        assert_eq!(f, PathBuf::from("/sys/fs/cgroup/ferry/c2/memory.events"));
        assert!(counter_file_from(text, |_| false).is_none());
    }
}
