//! `ferry update`: change the cgroup limits of a live container, from flags or from an OCI
//! `LinuxResources` JSON document (`-r FILE`, or `-r -` for stdin; then flags are ignored).

use std::io::Read;

use libcgroups::common::{CgroupManager, ControllerOpt};
use libcontainer::container::ContainerStatus;
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};

use super::{Ctx, Error, Result};
use crate::cli::UpdateArgs;

/// docker/go-units RAMInBytes: a number with an optional binary unit (k, m, g, t, p, with or
/// without a trailing b); "-1" means unlimited.
pub(super) fn parse_bytes(flag: &str, s: &str) -> Result<i64> {
    let bad = || Error::Usage(format!("invalid value for {flag}: {s:?}"));
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024f64.powi(2),
        "g" | "gb" => 1024f64.powi(3),
        "t" | "tb" => 1024f64.powi(4),
        "p" | "pb" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    Ok((n * mult) as i64)
}

/// Builds the resources to apply from the flags.
pub(super) fn from_flags(a: &UpdateArgs) -> Result<LinuxResources> {
    let spec = |e| Error::spec("build resources from update flags")(e);
    let mut res = LinuxResourcesBuilder::default();
    let mut mem = LinuxMemoryBuilder::default();
    let mut any_mem = false;
    if let Some(v) = &a.memory {
        mem = mem.limit(parse_bytes("--memory", v)?);
        any_mem = true;
    }
    if let Some(v) = &a.memory_reservation {
        mem = mem.reservation(parse_bytes("--memory-reservation", v)?);
        any_mem = true;
    }
    if let Some(v) = &a.memory_swap {
        mem = mem.swap(parse_bytes("--memory-swap", v)?);
        any_mem = true;
    }
    if a.kernel_memory.is_some() || a.kernel_memory_tcp.is_some() {
        tracing::warn!("kernel memory limits are deprecated and ignored");
    }
    if any_mem {
        res = res.memory(mem.build().map_err(spec)?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    macro_rules! set_cpu {
        ($field:ident, $method:ident) => {
            if let Some(v) = a.$field.clone() {
                cpu = cpu.$method(v);
                any_cpu = true;
            }
        };
    }
    set_cpu!(cpu_share, shares);
    set_cpu!(cpu_quota, quota);
    set_cpu!(cpu_period, period);
    set_cpu!(cpu_rt_period, realtime_period);
    set_cpu!(cpu_rt_runtime, realtime_runtime);
    set_cpu!(cpuset_cpus, cpus);
    set_cpu!(cpuset_mems, mems);
    if any_cpu {
        res = res.cpu(cpu.build().map_err(spec)?);
    }
    if let Some(limit) = a.pids_limit {
        res = res.pids(
            LinuxPidsBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec)?,
        );
    }
    if let Some(w) = a.blkio_weight {
        res = res.block_io(
            LinuxBlockIoBuilder::default()
                .weight(w)
                .build()
                .map_err(spec)?,
        );
    }
    if a.l3_cache_schema.is_some() || a.mem_bw_schema.is_some() {
        return Err(Error::Unsupported(
            "Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported by ferry update"
                .to_string(),
        ));
    }
    res.build().map_err(spec)
}

/// Reads the resources document of `-r`.
fn from_file(path: &std::path::Path) -> Result<LinuxResources> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(Error::io("read resources from", "stdin"))?;
    } else {
        buf = std::fs::read(path).map_err(Error::io("read resources from", path))?;
    }
    serde_json::from_slice(&buf).map_err(Error::json(format!("parse resources {}", path.display())))
}

/// Runs `ferry update`.
pub(super) fn run(ctx: &Ctx, a: &UpdateArgs) -> Result<()> {
    let id = a.container_id.as_str();
    let container = ctx.load(id)?;
    if container.status() == ContainerStatus::Stopped {
        return Err(Error::NotRunning);
    }
    let resources = match &a.resources {
        Some(path) => from_file(path)?,
        None => from_flags(a)?,
    };
    let manager = ctx.cgroup_manager(&container)?;
    manager
        .apply(&ControllerOpt {
            resources: &resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(Error::cgroup(format!("update resources of container {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn byte_units() {
        assert_eq!(parse_bytes("m", "1024").unwrap(), 1024);
        assert_eq!(parse_bytes("m", "512k").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("m", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("m", "1GB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("m", "-1").unwrap(), -1);
        assert!(parse_bytes("m", "lots").is_err());
        assert!(parse_bytes("m", "12q").is_err());
    }

    #[test]
    fn flags_become_resources() {
        let cli = crate::cli::Cli::try_parse_from([
            "ferry",
            "update",
            "--memory",
            "64m",
            "--cpu-quota",
            "-1",
            "--cpu-period",
            "100000",
            "--cpuset-cpus",
            "0",
            "--pids-limit",
            "50",
            "c1",
        ])
        .unwrap();
        let Some(crate::cli::Command::Update(a)) = cli.command else {
            panic!("not update")
        };
        let r = from_flags(&a).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(-1));
        assert_eq!(cpu.period(), Some(100000));
        assert_eq!(cpu.cpus().as_deref(), Some("0"));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 50);
        assert!(r.block_io().is_none());
    }
}
