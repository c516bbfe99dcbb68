//! A container's time namespace, both halves (CRIU's `timens-ID.img`).
//!
//! Kernel mechanism: a time namespace shifts CLOCK_MONOTONIC and CLOCK_BOOTTIME by offsets
//! fixed when its first task enters it (`/proc/PID/timens_offsets`, writable only before).
//! The dump records the clocks as the tasks read them (host clock + offset); a restore gives
//! the fresh namespace "saved clock − host clock now" as its offsets, so the clocks inside go
//! on from the checkpoint, on this host or another one.

use std::collections::BTreeMap;

use ferry_images::{pb, ImageDir};

use crate::container::{ContainerError, TreeImages};

/// Name of the time namespace image (CRIU's `timens-ID.img`).
pub fn timens_image_name(ns_id: u32) -> String {
    format!("timens-{ns_id}.img")
}

fn clock_now(clock: libc::clockid_t) -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clocks asked for always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec, ts.tv_nsec)
}

fn normalize(sec: i64, nsec: i64) -> (i64, i64) {
    (
        sec + nsec.div_euclid(1_000_000_000),
        nsec.rem_euclid(1_000_000_000),
    )
}

/// The clocks of the container's time namespace as its tasks read them, CRIU's `timens`
/// entry: the host's clocks plus the offsets of `/proc/PID/timens_offsets` (which shows the
/// namespace of the task's future children, so it must be the task's own too).
pub(crate) fn dump_timens(
    pid: i32,
    dir: &ImageDir,
    ns_id: u32,
) -> Result<pb::TimensEntry, ContainerError> {
    let ino = |n: &str| crate::container::ns_inode(format!("/proc/{pid}/ns/{n}"), "time namespace");
    if ino("time")? != ino("time_for_children")? {
        return Err(ContainerError::NotSupported {
            stage: "time namespace",
            what: format!("task {pid} made another time namespace for its children"),
        });
    }
    let p = format!("/proc/{pid}/timens_offsets");
    let text = std::fs::read_to_string(&p).map_err(|source| ContainerError::Io {
        stage: "time namespace",
        op: "read",
        path: p.clone(),
        source,
    })?;
    let mut off = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [_, sec, nsec] => sec.parse::<i64>().ok().zip(nsec.parse::<i64>().ok()),
            _ => None,
        };
        let Some(v) = parsed else {
            return Err(ContainerError::NotSupported {
                stage: "time namespace",
                what: format!("{p}: unexpected line {line:?}"),
            });
        };
        off.insert(f[0].to_string(), v);
    }
    let inside = |clock, name: &str| -> Result<pb::Timespec, ContainerError> {
        let (os, on) = off.get(name).copied().unwrap_or((0, 0));
        let (hs, hn) = clock_now(clock);
        let (s, n) = normalize(hs + os, hn + on);
        Ok(pb::Timespec {
            tv_sec: u64::try_from(s).map_err(|_| ContainerError::NotSupported {
                stage: "time namespace",
                what: format!("{name} clock inside task {pid} before zero ({s} s)"),
            })?,
            tv_nsec: n as u64,
        })
    };
    let e = pb::TimensEntry {
        monotonic: inside(libc::CLOCK_MONOTONIC, "monotonic")?,
        boottime: inside(libc::CLOCK_BOOTTIME, "boottime")?,
    };
    dir.write_entries(&timens_image_name(ns_id), std::slice::from_ref(&e))?;
    Ok(e)
}

/// The time offsets a restore's fresh time namespace needs for its clocks to go on from the
/// images' (CRIU's restore: image clock minus the host's now), as `(clock, secs, nanosecs)`
/// for the OCI config's `linux.timeOffsets`; `None` when the tree had no time namespace of its
/// own (its root's `time_ns_id` is the dumper's).
pub type TimeOffsets = [(&'static str, i64, u32); 2];

/// See [`TimeOffsets`].
pub fn time_offsets(images: &TreeImages) -> Result<Option<TimeOffsets>, ContainerError> {
    let dir = &images.dir;
    let theirs = images.dumper_ids().and_then(|r| r.time_ns_id);
    let (Some(mine), Some(theirs)) = (images.root_ids.time_ns_id, theirs) else {
        return Ok(None);
    };
    if mine == theirs {
        return Ok(None);
    }
    let name = timens_image_name(mine);
    if !dir.has(&name) {
        return Err(ContainerError::NotSupported {
            stage: "read images",
            what: format!("the tree has its own time namespace {mine} but no {name}"),
        });
    }
    let e: pb::TimensEntry = dir.read_one(&name)?;
    let off = |t: &pb::Timespec, clock| {
        let (hs, hn) = clock_now(clock);
        let (s, n) = normalize(t.tv_sec as i64 - hs, t.tv_nsec as i64 - hn);
        (s, n as u32)
    };
    let (ms, mn) = off(&e.monotonic, libc::CLOCK_MONOTONIC);
    let (bs, bn) = off(&e.boottime, libc::CLOCK_BOOTTIME);
    Ok(Some([("monotonic", ms, mn), ("boottime", bs, bn)]))
}
