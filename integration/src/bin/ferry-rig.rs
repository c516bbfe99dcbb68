//! ferry-rig: the test rig's bundle maker, for scripts (the demo, the benchmarks).
//!
//! ```text
//! ferry-rig rootfs                               print the cached busybox rootfs path
//! ferry-rig bundle DIR --id ID [-- ARGS...]     make DIR/rootfs + DIR/config.json
//! ferry-rig image WORKDIR NAME                   write WORKDIR/image.tar (OCI layout)
//! ```
//! The bundle's cgroup is `/ferry-it-ID`; ARGS default to `sh`.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_integration::{ociimage, rootfs, Bundle};

fn usage() -> ExitCode {
    eprintln!(
        "usage: ferry-rig rootfs\n       ferry-rig bundle DIR --id ID [-- ARGS...]\n       \
         ferry-rig image WORKDIR NAME"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rootfs") => {
            println!("{}", rootfs::rootfs().display());
            ExitCode::SUCCESS
        }
        Some("bundle") if args.len() >= 4 && args[2] == "--id" => {
            let dir = PathBuf::from(&args[1]);
            let id = &args[3];
            let rest: Vec<&str> = match args.get(4).map(String::as_str) {
                Some("--") => args[5..].iter().map(String::as_str).collect(),
                None => vec!["sh"],
                Some(_) => return usage(),
            };
            let rest = if rest.is_empty() { vec!["sh"] } else { rest };
            let b = Bundle::create(&dir, id, &rest);
            println!("{}", b.path.display());
            ExitCode::SUCCESS
        }
        Some("image") if args.len() == 3 => {
            let work = PathBuf::from(&args[1]);
            std::fs::create_dir_all(&work).expect("create WORKDIR");
            let t = ociimage::build_image(&work, &rootfs::rootfs(), &args[2], &["sh"]);
            println!("{}", t.display());
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
