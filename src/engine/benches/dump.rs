//! Dump benchmark (never a test): memhog holding 16/256/1024/4096 MiB of touched anonymous
//! memory is dumped with --leave-running semantics into /dev/shm. Sizes are interleaved and
//! each workload is dumped twice back to back: memory freed goes back to the host here, so the
//! first dump pays the host's first touch of fresh /dev/shm pages and the second reuses pages
//! the guest just freed. Printed per size, minimum over all dumps: frozen time and GiB/s of page
//! data over the frozen time; the minimum of the first dumps; the best vmsplice+splice bandwidth
//! measured in the same run on a same-sized buffer of this process (one thread vmsplicing, one
//! splicing into a /dev/shm file: the transfer ferry's drain does), the ratio to it, and the
//! time the pages-file reserve (`mem::reserve`) of that dump took before the freeze.
//!
//! `cargo bench -p ferry-engine --bench dump [-- SIZES_MIB...]`; env FERRY_BENCH_RUNS (3),
//! FERRY_BENCH_LOG (set: each dump's stage log with timings on stderr).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_engine::dump::{dump, DumpOptions};
use ferry_engine::dump_log::DumpLog;

const GIB: f64 = (1u64 << 30) as f64;

fn build_memhog(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/memhog.c");
    let src = if src.exists() {
        src
    } else {
        PathBuf::from("/work/shared/bench/memhog.c")
    };
    let out = dir.join("memhog");
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc memhog.c");
    out
}

struct Hog {
    child: Child,
    status: PathBuf,
}

impl Hog {
    fn start(bin: &Path, dir: &Path, mib: u64) -> Hog {
        let status = dir.join(format!("memhog-{mib}.status"));
        let _ = std::fs::remove_file(&status);
        let child = Command::new(bin)
            .arg(mib.to_string())
            .arg(&status)
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn memhog");
        let h = Hog { child, status };
        h.wait_pass(0);
        h
    }

    fn pass(&self) -> Option<u64> {
        let s = std::fs::read_to_string(&self.status).ok()?;
        assert!(!s.starts_with("CORRUPT"), "memhog: {s}");
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix("pass="))
            .and_then(|v| v.parse().ok())
    }

    fn wait_pass(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.pass().is_none_or(|p| p < n) {
            assert!(Instant::now() < deadline, "memhog made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// vmsplice (one thread) + splice into a /dev/shm file (this thread) of `mib` MiB: GiB/s.
fn splice_bandwidth(mib: u64) -> f64 {
    let len = (mib as usize) << 20;
    let mut buf = vec![0u8; len];
    for (i, c) in buf.chunks_mut(4096).enumerate() {
        c.fill((i % 251) as u8 | 1);
    }
    let mut p = [0i32; 2];
    // SAFETY: room for two fds.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl on our own pipe.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let path = "/dev/shm/ferry-bench-splice";
    let out = File::create(path).unwrap();
    let t = Instant::now();
    let addr = buf.as_ptr() as usize;
    let writer = std::thread::spawn(move || {
        let mut off = 0usize;
        while off < len {
            let iov = libc::iovec {
                iov_base: (addr + off) as *mut _,
                iov_len: len - off,
            };
            // SAFETY: the buffer outlives the thread (joined below) and is not written meanwhile.
            let n = unsafe { libc::vmsplice(wr.as_raw_fd(), &iov, 1, libc::SPLICE_F_GIFT) };
            assert!(n > 0, "vmsplice: {}", std::io::Error::last_os_error());
            off += n as usize;
        }
    });
    let mut moved = 0usize;
    while moved < len {
        // SAFETY: both fds are valid; offsets are the file position.
        let n = unsafe {
            libc::splice(
                rd.as_raw_fd(),
                std::ptr::null_mut(),
                out.as_raw_fd(),
                std::ptr::null_mut(),
                len - moved,
                libc::SPLICE_F_MOVE,
            )
        };
        assert!(n > 0, "splice: {}", std::io::Error::last_os_error());
        moved += n as usize;
    }
    writer.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(out);
    let _ = std::fs::remove_file(path);
    drop(buf);
    len as f64 / GIB / secs
}

/// Best figures of one size.
#[derive(Clone)]
struct Best {
    frozen: Duration,
    gibs: f64,
    first: Duration,
    splice: f64,
    reserve: Duration,
}

impl Default for Best {
    fn default() -> Best {
        Best {
            frozen: Duration::MAX,
            gibs: 0.0,
            first: Duration::MAX,
            splice: 0.0,
            reserve: Duration::ZERO,
        }
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if args.is_empty() {
        vec![16, 256, 1024, 4096]
    } else {
        args
    };
    let runs: usize = std::env::var("FERRY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let stage_log = std::env::var_os("FERRY_BENCH_LOG").is_some();
    let tmp = tempfile::tempdir().unwrap();
    let bin = build_memhog(tmp.path());
    let mut best = vec![Best::default(); sizes.len()];
    for run in 0..runs {
        for (i, &mib) in sizes.iter().enumerate() {
            let hog = Hog::start(&bin, tmp.path(), mib);
            let dir = PathBuf::from(format!("/dev/shm/ferry-bench-dump-{mib}"));
            // Two dumps back to back: the first pays the host's first touch of fresh /dev/shm
            // pages, the second reuses pages the guest just freed. Both are reported.
            for attempt in 0..2 {
                let _ = std::fs::remove_dir_all(&dir);
                let mut opts = DumpOptions::new(hog.child.id() as i32, &dir);
                opts.leave_running = true;
                opts.shell_job = true;
                let mut log = if stage_log {
                    DumpLog::new(None, 4, true)
                } else {
                    DumpLog::none()
                };
                let r = dump(&opts, &mut log);
                let _ = std::fs::remove_dir_all(&dir);
                let rep = match r {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("run {run} {mib:>5} MiB: dump failed: {e}");
                        continue;
                    }
                };
                let gibs = rep.page_bytes as f64 / GIB / rep.frozen_time.as_secs_f64();
                eprintln!(
                    "run {run} {mib:>5} MiB dump {attempt}: frozen {:>9.1} ms, {gibs:.2} GiB/s \
                     (reserve before the freeze {:.1} ms)",
                    rep.frozen_time.as_secs_f64() * 1e3,
                    rep.reserve_time.as_secs_f64() * 1e3
                );
                let b = &mut best[i];
                if attempt == 0 {
                    b.first = b.first.min(rep.frozen_time);
                }
                if rep.frozen_time < b.frozen {
                    b.frozen = rep.frozen_time;
                    b.gibs = gibs;
                    b.reserve = rep.reserve_time;
                }
            }
            let pass = hog.pass().unwrap_or(0);
            hog.wait_pass(pass + 1); // still verifying its memory after the dumps
            drop(hog);
            let bw = splice_bandwidth(mib).max(splice_bandwidth(mib));
            eprintln!("run {run} {mib:>5} MiB: vmsplice+splice {bw:.2} GiB/s");
            best[i].splice = best[i].splice.max(bw);
        }
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "ferry dump (minimum of {runs} runs x 2 dumps, images on /dev/shm, --leave-running)"
    )
    .unwrap();
    writeln!(
        o,
        "{:>6} {:>10} {:>7} {:>15} {:>13} {:>6} {:>11}",
        "MiB", "frozen ms", "GiB/s", "1st-dump ms", "splice GiB/s", "ratio", "reserve ms"
    )
    .unwrap();
    for (i, &mib) in sizes.iter().enumerate() {
        let b = &best[i];
        if b.frozen == Duration::MAX {
            writeln!(o, "{mib:>6} every run failed").unwrap();
            continue;
        }
        writeln!(
            o,
            "{mib:>6} {:>10.1} {:>7.2} {:>15.1} {:>13.2} {:>6.2} {:>11.1}",
            b.frozen.as_secs_f64() * 1e3,
            b.gibs,
            b.first.as_secs_f64() * 1e3,
            b.splice,
            b.gibs / b.splice,
            b.reserve.as_secs_f64() * 1e3
        )
        .unwrap();
    }
}
