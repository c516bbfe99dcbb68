//! `ferry events`: the container's cgroup statistics as runc's `{"type":"stats",...}` events,
//! once with `--stats`, else every `--interval` until the container stops, with an
//! `{"type":"oom",...}` event whenever the kernel OOM-killed in the container (see `oom.rs`).

use std::io::Write;
use std::time::Duration;

use libcgroups::common::CgroupManager;
use libcgroups::stats::{BlkioDeviceStat, MemoryData, Stats};
use libcontainer::container::ContainerStatus;
use serde_json::{json, Value};

use super::{oom, Ctx, Error, Result};
use crate::cli::EventsArgs;

/// Parses a Go duration ("5s", "500ms", "1m30s", "1.5h"); must be positive.
pub(super) fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || Error::Usage(format!("invalid duration {s:?} for --interval"));
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if total <= 0.0 {
        return Err(Error::Usage(
            "duration interval must be greater than 0".to_string(),
        ));
    }
    Ok(Duration::from_secs_f64(total))
}

fn mem(d: &MemoryData) -> Value {
    json!({"limit": d.limit, "usage": d.usage, "max": d.max_usage, "failcnt": d.fail_count})
}

fn blkio(v: &[BlkioDeviceStat]) -> Value {
    v.iter()
        .map(|e| json!({"major": e.major, "minor": e.minor, "op": e.op_type.clone().unwrap_or_default(), "value": e.value}))
        .collect()
}

/// libcgroups' statistics in the shape of runc's `types.Stats`.
pub(super) fn runc_stats(s: &Stats) -> Value {
    let hugetlb: serde_json::Map<String, Value> = s
        .hugetlb
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"usage": v.usage, "max": v.max_usage, "failcnt": v.fail_count}),
            )
        })
        .collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage.usage_total,
                "percpu": s.cpu.usage.per_core_usage_total,
                "percpu_kernel": s.cpu.usage.per_core_usage_kernel,
                "percpu_user": s.cpu.usage.per_core_usage_user,
                "kernel": s.cpu.usage.usage_kernel,
                "user": s.cpu.usage.usage_user,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttled_periods": s.cpu.throttling.throttled_periods,
                "throttled_time": s.cpu.throttling.throttled_time,
            },
        },
        "memory": {
            "cache": s.memory.cache,
            "usage": mem(&s.memory.memory),
            "swap": mem(&s.memory.memswap),
            "kernel": mem(&s.memory.kernel),
            "kernelTCP": mem(&s.memory.kernel_tcp),
            "raw": s.memory.stats,
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {
            "ioServiceBytesRecursive": blkio(&s.blkio.service_bytes),
            "ioServicedRecursive": blkio(&s.blkio.serviced),
            "ioQueueRecursive": blkio(&s.blkio.queued),
            "ioServiceTimeRecursive": blkio(&s.blkio.service_time),
            "ioWaitTimeRecursive": blkio(&s.blkio.wait_time),
            "ioMergedRecursive": blkio(&s.blkio.merged),
            "ioTimeRecursive": blkio(&s.blkio.time),
            "sectorsRecursive": blkio(&s.blkio.sectors),
        },
        "hugetlb": hugetlb,
    })
}

/// Runs `ferry events`.
pub(super) fn run(ctx: &Ctx, a: &EventsArgs) -> Result<()> {
    let id = a.container_id.as_str();
    let interval = parse_duration(&a.interval)?;
    let container = ctx.load(id)?;
    if container.status() == ContainerStatus::Stopped {
        return Err(Error::EventsNotRunning(id.to_string()));
    }
    let manager = ctx.cgroup_manager(&container)?;
    let oom_file = container.pid().and_then(|p| oom::counter_file(p.as_raw()));
    let mut ooms = oom_file.as_ref().and_then(oom::read_count);
    loop {
        let stats = manager
            .stats()
            .map_err(Error::cgroup(format!("read statistics of container {id}")))?;
        let mut events = Vec::new();
        if let Some(now) = oom_file.as_ref().and_then(oom::read_count) {
            if ooms.is_some_and(|before| now > before) {
                events.push(json!({"type": "oom", "id": id}));
            }
            ooms = Some(now);
        }
        events.push(json!({"type": "stats", "id": id, "data": runc_stats(&stats)}));
        let mut out = std::io::stdout().lock();
        for event in events {
            writeln!(out, "{event}").map_err(Error::io("write event to", "stdout"))?;
        }
        out.flush().map_err(Error::io("write event to", "stdout"))?;
        drop(out);
        if a.stats {
            return Ok(());
        }
        std::thread::sleep(interval);
        match ctx.load(id) {
            Ok(c) if c.status() != ContainerStatus::Stopped => {}
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "5", "s", "5x", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stats_have_runc_keys() {
        let v = runc_stats(&Stats::default());
        assert!(v["cpu"]["usage"]["total"].is_u64());
        assert!(v["memory"]["usage"]["failcnt"].is_u64());
        assert!(v["pids"]["current"].is_u64());
        assert!(v["blkio"]["ioServiceBytesRecursive"].is_array());
    }
}
