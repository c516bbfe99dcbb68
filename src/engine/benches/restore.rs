//! Restore benchmark (never a test): memhog holding 16/256/1024/4096 MiB of touched anonymous
//! memory is dumped by `ferry-criu dump` into /dev/shm, then restored by `ferry-criu restore -d`.
//! Printed per size, minimum over the runs (sizes interleaved: memory freed goes back to the
//! host, so first touches are slow): the engine's restore time (stats-restore: from reading the
//! images to the tree running again), the command's wall time, GiB/s of page data, and the
//! ratio to read()-into-fresh-memory bandwidth of the same pages file measured in the same run.
//! After each restore memhog must complete a full verification pass (it checks every page).
//!
//! `cargo bench -p ferry-engine --bench restore [-- SIZES_MIB...]`; env FERRY_BENCH_RUNS (3).

use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_images::{pb, ImageDir};

const GIB: f64 = (1u64 << 30) as f64;
const CRIU: &str = env!("CARGO_BIN_EXE_ferry-criu");

fn build_memhog(dir: &Path) -> PathBuf {
    let out = dir.join("memhog");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg("/work/shared/bench/memhog.c")
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc memhog.c");
    out
}

fn pass(status: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(status).ok()?;
    assert!(!s.starts_with("CORRUPT"), "memhog: {s}");
    s.split_whitespace()
        .find_map(|kv| kv.strip_prefix("pass="))
        .and_then(|v| v.parse().ok())
}

fn wait_pass(status: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while pass(status).is_none_or(|p| p < n) {
        assert!(Instant::now() < deadline, "memhog made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reap(pid: u32) {
    // SAFETY: kill and reap by pid a workload this benchmark started or restored.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid as i32, &mut st, libc::__WALL);
    }
}

/// read() of the whole pages file into freshly mapped memory: the floor of any restore that
/// has to bring page data back from a file.
fn read_bandwidth(pages: &Path) -> f64 {
    let f = std::fs::File::open(pages).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: fresh private anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping is len bytes, ours alone.
    let buf = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        let n = f.read_at(&mut buf[off..], off as u64).unwrap();
        assert!(n > 0);
        off += n;
    }
    let secs = t.elapsed().as_secs_f64();
    // SAFETY: unmaps the mapping made above.
    unsafe { libc::munmap(p, len) };
    len as f64 / GIB / secs
}

struct Run {
    engine: Duration,
    wall: Duration,
    gibs: f64,
    base: f64,
}

fn one(hog: &Path, work: &Path, mib: u64) -> Run {
    let status = work.join(format!("memhog-{mib}.status"));
    let _ = std::fs::remove_file(&status);
    let mut c = Command::new(hog);
    c.arg(mib.to_string())
        .arg(&status)
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid between fork and exec touches no shared state.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c.spawn().expect("spawn memhog");
    let pid = child.id();
    std::mem::forget(child);
    wait_pass(&status, 1);
    let dir = PathBuf::from(format!("/dev/shm/ferry-bench-restore-{mib}"));
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new(CRIU)
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "dump of memhog {mib} MiB");
    reap(pid);
    let before = pass(&status).unwrap_or(0);
    let t = Instant::now();
    let out = Command::new(CRIU)
        .args(["restore", "-d", "-D"])
        .arg(&dir)
        .output()
        .unwrap();
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "restore of memhog {mib} MiB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restored memhog verifies every page on its next pass.
    wait_pass(&status, before + 1);
    reap(pid);
    let d = ImageDir::open(&dir).unwrap();
    let stats: pb::StatsEntry = d.read_one("stats-restore").unwrap();
    let r = stats.restore.unwrap();
    let engine = Duration::from_micros(u64::from(r.restore_time));
    let bytes = r.pages_restored.unwrap_or(0) as f64 * 4096.0;
    let base = read_bandwidth(&dir.join("pages-1.img"));
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        engine,
        wall,
        gibs: bytes / GIB / engine.as_secs_f64(),
        base,
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![16, 256, 1024, 4096]
    } else {
        sizes
    };
    let runs: usize = std::env::var("FERRY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // SAFETY: prctl with integer arguments: restored memhogs become our children to reap.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let work = tempfile::tempdir().unwrap();
    let hog = build_memhog(work.path());
    let mut best: Vec<Option<Run>> = sizes.iter().map(|_| None).collect();
    for _ in 0..runs {
        for (i, &mib) in sizes.iter().enumerate() {
            let r = one(&hog, work.path(), mib);
            if best[i].as_ref().is_none_or(|b| r.engine < b.engine) {
                best[i] = Some(r);
            }
        }
    }
    println!("restore of memhog from /dev/shm (min of {runs} runs)");
    println!(
        "{:>8} {:>12} {:>12} {:>9} {:>13} {:>7}",
        "MiB", "engine ms", "wall ms", "GiB/s", "read() GiB/s", "ratio"
    );
    for (mib, r) in sizes.iter().zip(best) {
        let r = r.unwrap();
        println!(
            "{mib:>8} {:>12.1} {:>12.1} {:>9.2} {:>13.2} {:>7.2}",
            r.engine.as_secs_f64() * 1e3,
            r.wall.as_secs_f64() * 1e3,
            r.gibs,
            r.base,
            r.gibs / r.base
        );
    }
}
