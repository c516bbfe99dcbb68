//! Container resources across `ferry checkpoint`/`ferry restore`: a bind mount from the bundle's
//! config (external: restored from the config's source), content the container wrote into its
//! /dev/shm tmpfs (restored from the image's archive).

mod cr_common;

use cr_common::*;
use ferry_integration::TestEnv;

#[test]
fn cr_bind_mount_and_dev_shm_content_come_back() {
    let env = TestEnv::new("crres");
    let id = env.id("c");
    let b = env.bundle(
        &id,
        &[
            "sh",
            "-c",
            "echo written-before > /dev/shm/note && mkdir /dev/shm/dir && \
             echo nested > /dev/shm/dir/f && exec counter /count 50",
        ],
    );
    let data = env.dir.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("host.txt"), "from the host\n").unwrap();
    b.edit_config(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": data.to_str().unwrap(), "options": ["rbind", "rw"]
        }))
    });
    start_counter(&env, &b);
    let img = env.dir.join("img");
    checkpoint(&env, &id, &img, &[]).ok();
    let stopped_at = settled_count(&b);
    // The bind mount's content belongs to the host: not archived.
    let listing: Vec<String> = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        listing.iter().any(|f| f.starts_with("tmpfs-dev-")),
        "tmpfs archives written: {listing:?}"
    );
    restore(&env, &b, &id, &img, &[]).ok();
    assert_carries_on_here(&env, &b, &id, stopped_at);
    let o = env.ferry(&["exec", &id, "cat", "/dev/shm/note"]).ok();
    assert_eq!(o.stdout, "written-before\n", "/dev/shm content restored");
    let o = env.ferry(&["exec", &id, "cat", "/dev/shm/dir/f"]).ok();
    assert_eq!(o.stdout, "nested\n");
    let o = env.ferry(&["exec", &id, "cat", "/data/host.txt"]).ok();
    assert_eq!(
        o.stdout, "from the host\n",
        "bind mount from the config's source"
    );
    // Writes through the bind reach the host directory.
    env.ferry(&["exec", &id, "sh", "-c", "echo back > /data/out.txt"])
        .ok();
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "back\n"
    );
}

#[track_caller]
fn assert_carries_on_here(env: &TestEnv, b: &ferry_integration::Bundle, id: &str, at: u64) {
    assert_eq!(env.status(id), "running");
    assert_counts_on_from(b, at);
}
