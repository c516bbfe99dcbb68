//! `ferry list`: every container under `--root`, as runc's tab-aligned table or JSON array
//! (`null` when there is none, as Go encodes a nil slice).

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use libcontainer::container::Container;

use super::state::{self, RuncState};
use super::{Ctx, Error, Result};
use crate::cli::ListArgs;

/// Loads every container of the root, sorted by id; unreadable ones are skipped with a warning.
pub(super) fn collect(ctx: &Ctx) -> Result<Vec<RuncState>> {
    let entries = match std::fs::read_dir(&ctx.root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read state root", &ctx.root)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.join("state.json").exists() {
            continue;
        }
        match Container::load(dir.clone()) {
            Ok(c) => {
                let mut s = state::of(&c);
                s.owner = owner_of(&dir);
                out.push(s);
            }
            Err(e) => tracing::warn!("skip {}: {e}", dir.display()),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The user owning a state directory, by name when known (runc shows `root`).
fn owner_of(dir: &std::path::Path) -> String {
    let Ok(meta) = std::fs::metadata(dir) else {
        return String::new();
    };
    let uid = meta.uid();
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("#{uid}"),
    }
}

/// Go's text/tabwriter with runc's settings (minwidth 12, tabwidth 1, padding 3, ' '):
/// every cell but the last of a line is padded to its column's width.
pub(super) fn tabwrite(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max((cell.chars().count() + 3).max(12));
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// Runs `ferry list`.
pub(super) fn run(ctx: &Ctx, a: &ListArgs) -> Result<()> {
    let states = collect(ctx)?;
    let text = if a.quiet {
        states.iter().map(|s| format!("{}\n", s.id)).collect()
    } else if a.format == "json" {
        if states.is_empty() {
            "null\n".to_string()
        } else {
            let mut s = serde_json::to_string(&states).map_err(Error::json("encode list"))?;
            s.push('\n');
            s
        }
    } else {
        let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
            .map(String::from)
            .to_vec()];
        for s in &states {
            rows.push(vec![
                s.id.clone(),
                s.pid.to_string(),
                s.status.clone(),
                s.bundle.display().to_string(),
                s.created.clone(),
                s.owner.clone(),
            ]);
        }
        tabwrite(&rows)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(Error::io("write list to", "stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_runc_layout() {
        let rows = vec![
            ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(String::from)
                .to_vec(),
            [
                "r1",
                "10310",
                "created",
                "/tmp/fb",
                "2026-11-27T01:03:34.822229051Z",
                "root",
            ]
            .map(String::from)
            .to_vec(),
        ];
        // Captured from runc 1.1.5 `list` on this machine.
        let expected = "ID          PID         STATUS      BUNDLE      CREATED                          OWNER\n\
                        r1          10310       created     /tmp/fb     2026-11-27T01:03:34.822229051Z   root\n";
        assert_eq!(tabwrite(&rows), expected);
    }
}
