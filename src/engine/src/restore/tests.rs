//! Unit tests of the restore orchestrator's pure parts.

use super::*;
use crate::restore_range::choose_range;

fn task(vmas: &[(u64, u64)]) -> TaskPlan {
    let mm = pb::MmEntry {
        vmas: vmas
            .iter()
            .map(|&(start, end)| pb::VmaEntry {
                start,
                end,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    TaskPlan {
        alive: true,
        state: state::ALIVE,
        mem: Some(MemImage {
            pid: 1,
            mm,
            runs: Vec::new(),
            pages: PathBuf::new(),
        }),
        ..Default::default()
    }
}

#[test]
fn range_avoids_every_layout_and_ourselves() {
    let a = task(&[(0x40_0000, 0x50_0000), (0x7ff0_0000_0000, 0x7ff0_1000_0000)]);
    let b = task(&[(0x7fe0_0000_0000, 0x7ff0_0000_0000)]);
    let len = 64 << 20;
    let at = choose_range(&[a, b], len).expect("a range");
    assert_eq!(at % (2 << 20), 0);
    let mine = std::fs::read_to_string("/proc/self/maps").unwrap();
    for (s, e) in [
        (0x40_0000u64, 0x50_0000u64),
        (0x7fe0_0000_0000, 0x7ff0_1000_0000),
    ] {
        assert!(at + len <= s || at >= e, "{at:#x} overlaps {s:#x}-{e:#x}");
    }
    for l in mine.lines() {
        let (s, e) = l
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        assert!(
            at + len <= s || at >= e,
            "{at:#x} overlaps own {s:#x}-{e:#x}"
        );
    }
}

#[test]
fn tree_order_is_checked() {
    let e = |pid, ppid| pb::PstreeEntry {
        pid,
        ppid,
        ..Default::default()
    };
    let kids = pst::children(&[e(10, 0), e(11, 10), e(12, 11), e(13, 10)]).unwrap();
    assert_eq!(kids, vec![vec![1, 3], vec![2], vec![], vec![]]);
    assert!(pst::children(&[e(10, 0), e(12, 11)]).is_err());
    assert!(pst::children(&[]).is_err());
}
