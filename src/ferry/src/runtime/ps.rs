//! `ferry ps`: the container's processes (from its cgroup), as JSON pids or as ps(1)'s table
//! filtered to those pids, like runc.

use std::io::Write;

use libcgroups::common::CgroupManager;

use super::{Ctx, Error, Result};
use crate::cli::PsArgs;

/// Keeps ps(1)'s header and the lines whose PID column is one of `pids`.
pub(super) fn filter_table(output: &str, pids: &[i32]) -> Result<String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header
        .split_whitespace()
        .position(|f| f == "PID")
        .ok_or_else(|| Error::Tool {
            tool: "ps",
            message: "couldn't find PID field in ps output".to_string(),
        })?;
    let mut out = format!("{header}\n");
    for line in lines {
        let Some(field) = line.split_whitespace().nth(pid_col) else {
            continue;
        };
        let pid: i32 = field.parse().map_err(|_| {
            Error::Usage(format!(
                "unexpected pid {field:?} in ps output line {line:?}"
            ))
        })?;
        if pids.contains(&pid) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Runs `ferry ps`.
pub(super) fn run(ctx: &Ctx, a: &PsArgs) -> Result<()> {
    let container = ctx.load(&a.container_id)?;
    let manager = ctx.cgroup_manager(&container)?;
    let mut pids: Vec<i32> = manager
        .get_all_pids()
        .map_err(Error::cgroup(format!(
            "list processes of container {}",
            a.container_id
        )))?
        .into_iter()
        .map(|p| p.as_raw())
        .collect();
    pids.sort_unstable();
    let text = if a.format == "json" {
        let mut s = serde_json::to_string(&pids).map_err(Error::json("encode pids"))?;
        s.push('\n');
        s
    } else {
        let args: Vec<String> = if a.ps_options.is_empty() {
            vec!["-ef".to_string()]
        } else {
            a.ps_options.clone()
        };
        let output = std::process::Command::new("ps")
            .args(&args)
            .output()
            .map_err(Error::io("run", "ps"))?;
        if !output.status.success() {
            return Err(Error::Tool {
                tool: "ps",
                message: format!(
                    "ps {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        filter_table(&String::from_utf8_lossy(&output.stdout), &pids)?
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(Error::io("write ps to", "stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_header_and_container_pids() {
        let ps = "UID        PID  PPID  C STIME TTY          TIME CMD\n\
                  root         1     0  0 00:57 ?        00:00:01 /sbin/init\n\
                  root     10310     1  0 01:03 ?        00:00:00 sh -c loop\n\
                  root     10337 10310  0 01:03 ?        00:00:00 sleep 1\n";
        let out = filter_table(ps, &[10310, 10337]).unwrap();
        assert_eq!(out.lines().count(), 3);
        assert!(out.starts_with("UID        PID"));
        assert!(!out.contains("/sbin/init"));
    }

    #[test]
    fn no_pid_column_is_an_error() {
        assert!(filter_table("USER CMD\nroot x\n", &[1]).is_err());
    }
}
