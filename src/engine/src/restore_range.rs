//! The restore range: one address range free both in the coordinator's layout and in every
//! task's target layout, reserved before forking so every task inherits the reservation and the
//! restorer, its arguments and stacks live where nothing of the task will be mapped.

use crate::mem::restore as mem;
use crate::restore::{stage_err, RestoreError, TaskPlan};

/// Finds `len` bytes free in ferry's layout and in every target layout, highest first.
pub fn choose_range(tasks: &[TaskPlan], len: u64) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = Vec::new();
    for t in tasks {
        if let Some(m) = &t.mem {
            used.extend(m.ranges());
        }
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for l in maps.lines() {
            let r = l.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((a, b)) = r {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    used.push((a, b));
                }
            }
        }
    }
    used.push((mem::TASK_SIZE - (1 << 30), u64::MAX));
    used.push((0, 1 << 32));
    used.sort();
    let align: u64 = 2 << 20;
    let mut best = None;
    let mut prev_end: u64 = 0;
    let limit = mem::TASK_SIZE - (1 << 30);
    for (a, b) in used {
        if prev_end >= limit {
            break;
        }
        let a = a.min(limit);
        // one guard page either side, so nothing merges with the range
        let lo = prev_end
            .saturating_add(4096)
            .min(mem::TASK_SIZE)
            .next_multiple_of(align);
        if a > 4096 && a - 4096 >= lo && (a - 4096 - lo) >= len {
            best = Some(((a - 4096 - len) / align) * align);
        }
        prev_end = prev_end.max(b);
    }
    best
}

pub fn reserve(at: u64, len: u64) -> Result<(), RestoreError> {
    // SAFETY: a fresh PROT_NONE reservation at an address checked free; MAP_FIXED_NOREPLACE
    // refuses to replace anything that appeared meanwhile.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_NORESERVE
                | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED || p as u64 != at {
        return Err(stage_err("reserve restore range")(format!(
            "mmap of {len} bytes at {at:#x}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
