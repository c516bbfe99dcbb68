//! Seeded mutation fuzzing of the reader on stable Rust: every fixture image is damaged in many
//! ways (bit flips, boundary u32s in length fields, truncation, insertion, splicing) and fed to
//! the generic decoder, the JSON converters, the encoder and the directory verifier. Nothing may
//! panic; whatever decodes re-encodes to a canonical form that is a fixed point (same bytes, same
//! JSON after another decode/encode).
//!
//! Bounded for CI: `FERRY_FUZZ_ITERS` (default 20000) iterations or `FERRY_FUZZ_SECS` (default 30)
//! seconds, whichever comes first; `FERRY_FUZZ_SEED` picks the seed (default fixed, so a failure
//! reproduces). A failing input is written to `$TMPDIR/ferry-fuzz-failure-*.img`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ferry_images::{dynamic, json, verify, ImageDir};

/// xorshift64*: small, seedable, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const INTERESTING: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xfff,
    0x1000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x0400_0001,
    0x5456_4319,
    0x5510_5940,
    0x5831_3116,
];

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0u8, 0xff, 0x7f, 0x80, 0x08, 0x0a, 0x12][rng.below(7)];
            }
            2 if len >= 4 => {
                // A boundary value where a length prefix or magic may sit.
                let i = if rng.below(2) == 0 {
                    8.min(len - 4)
                } else {
                    rng.below(len - 3)
                };
                let v = match rng.below(3) {
                    0 => INTERESTING[rng.below(INTERESTING.len())],
                    1 => (len as u32)
                        .wrapping_add(rng.below(3) as u32)
                        .wrapping_sub(1),
                    _ => rng.next() as u32,
                };
                data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len > 0 => data.truncate(rng.below(len)),
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            5 if len > 2 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                data.drain(a..b);
            }
            6 if len > 2 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = data[a..b].to_vec();
                let i = rng.below(len + 1);
                data.splice(i..i, chunk);
            }
            7 => {
                // Splice: our header, another image's body (or the reverse).
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len.min(other.len()) + 1);
                let mut v = data[..cut.min(len)].to_vec();
                v.extend_from_slice(&other[cut.min(other.len())..]);
                *data = v;
            }
            _ => {
                // Varint-heavy garbage inside the payload area.
                if len > 12 {
                    let i = 12 + rng.below(len - 12);
                    data[i] = 0x80 | rng.next() as u8;
                }
            }
        }
    }
}

fn exercise(name: &str, data: &[u8]) {
    let kind = ferry_images::dir::kind_for_name(name);
    for expected in [None, kind] {
        let Ok(img) = dynamic::decode(name, data, expected) else {
            continue;
        };
        let bytes = img.encode(name).expect("a decoded image re-encodes");
        // Canonical form is a fixed point: re-decoding and re-encoding changes nothing (an empty
        // packed list may vanish from the in-memory set, so bytes and JSON are compared).
        let again = dynamic::decode(name, &bytes, expected).expect("re-encoded bytes decode");
        assert_eq!(
            again.encode(name).unwrap(),
            bytes,
            "encode(decode(encode(decode(x)))) differs"
        );
        assert_eq!(
            json::image_to_json(&again, false),
            json::image_to_json(&img, false)
        );
        for pretty in [false, true] {
            let j = json::image_to_json(&img, pretty).to_value();
            if let Ok(back) = json::json_to_image(name, &j) {
                let _ = back.encode(name);
            }
            let _ = serde_json::to_string(&j).expect("JSON serialises");
        }
    }
    let mut r = match ferry_images::ImageReader::new(name, data) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().contains('\n'));
            return;
        }
    };
    while let Ok(Some(_)) = r.next_frame() {}
}

#[test]
fn mutated_images_never_panic() {
    let seed = env_u64("FERRY_FUZZ_SEED", 0x00f3_4447_1111_2026);
    let iters = env_u64("FERRY_FUZZ_ITERS", 20_000);
    let budget = Duration::from_secs(env_u64("FERRY_FUZZ_SECS", 30));
    let mut corpus = Vec::new();
    let mut names = Vec::new();
    for (set, name) in common::decoded_images() {
        corpus
            .push(std::fs::read(common::fixtures().join(set).join("images").join(&name)).unwrap());
        names.push(name);
    }
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut done = 0u64;
    while done < iters && start.elapsed() < budget {
        let k = rng.below(corpus.len());
        let mut data = corpus[k].clone();
        mutate(&mut rng, &mut data, &corpus);
        let name = &names[k];
        if catch_unwind(AssertUnwindSafe(|| exercise(name, &data))).is_err() {
            let p = std::env::temp_dir().join(format!("ferry-fuzz-failure-{seed:x}-{done}-{name}"));
            let _ = std::fs::write(&p, &data);
            panic!(
                "seed {seed:#x} iteration {done}: {name} mutated input panicked; saved to {}",
                p.display()
            );
        }
        done += 1;
    }
    eprintln!(
        "fuzz: {done} mutated images in {:?} (seed {seed:#x})",
        start.elapsed()
    );
    assert!(
        done >= 1000.min(iters),
        "only {done} iterations ran in the time budget"
    );
}

#[test]
fn mutated_directories_verify_and_show_without_panic() {
    let seed = env_u64("FERRY_FUZZ_SEED", 0x00f3_4447_1111_2026) ^ 0x5a5a;
    let iters = env_u64("FERRY_FUZZ_ITERS", 20_000) / 50;
    let src = common::fixtures().join("tree/images");
    let t = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        std::fs::copy(e.path(), t.path().join(&n)).unwrap();
        if n.ends_with(".img") && !n.starts_with("pages-") {
            files.push(n);
        }
    }
    files.sort();
    let corpus: Vec<Vec<u8>> = files
        .iter()
        .map(|n| std::fs::read(t.path().join(n)).unwrap())
        .collect();
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    for i in 0..iters {
        if start.elapsed() > Duration::from_secs(env_u64("FERRY_FUZZ_SECS", 30)) {
            break;
        }
        let k = rng.below(files.len());
        let mut data = corpus[k].clone();
        mutate(&mut rng, &mut data, &corpus);
        let p = t.path().join(&files[k]);
        std::fs::write(&p, &data).unwrap();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let d = ImageDir::open(t.path()).unwrap();
            let r = verify::verify(&d);
            for e in &r.errors {
                assert!(!e.contains('\n'), "multi-line error {e:?}");
            }
            let _ = ferry_images::show::render(&d);
        }));
        std::fs::write(&p, &corpus[k]).unwrap();
        assert!(
            res.is_ok(),
            "seed {seed:#x} iteration {i}: verify/show panicked on mutated {}",
            files[k]
        );
    }
}
