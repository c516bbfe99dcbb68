//! Every CRIU 4.2 fixture image decodes to crit's JSON (plain and pretty) and encodes back to the
//! same bytes.

mod common;

use ferry_images::{dynamic, json};

fn check(set: &str, name: &str, pretty: bool) -> Result<(), String> {
    let root = common::fixtures().join(set);
    let img = root.join("images").join(name);
    let data = std::fs::read(&img).map_err(|e| format!("{}: {e}", img.display()))?;
    let decoded = dynamic::decode(name, &data, None).map_err(|e| e.to_string())?;
    let ours = json::image_to_json(&decoded, pretty).to_value();
    let sub = if pretty { "json" } else { "json-plain" };
    let want_path = root.join(sub).join(format!("{name}.json"));
    let want: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&want_path).map_err(|e| format!("{}: {e}", want_path.display()))?,
    )
    .map_err(|e| e.to_string())?;
    if ours != want {
        return Err(format!(
            "{set}/{name} ({sub}) differs:\n ours: {}\n crit: {}",
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&want).unwrap()
        ));
    }
    let back = json::json_to_image(name, &want).map_err(|e| e.to_string())?;
    let bytes = back.encode(name).map_err(|e| e.to_string())?;
    if bytes != data {
        return Err(format!(
            "{set}/{name} ({sub}): encode is not byte-identical ({} vs {} bytes)",
            bytes.len(),
            data.len()
        ));
    }
    Ok(())
}

fn run(pretty: bool) {
    let all = common::decoded_images();
    assert!(
        all.len() > 60,
        "expected all fixture images, found {}",
        all.len()
    );
    let fails: Vec<String> = all
        .iter()
        .filter_map(|(s, n)| check(s, n, pretty).err())
        .collect();
    assert!(
        fails.is_empty(),
        "{} of {} images failed:\n{}",
        fails.len(),
        all.len(),
        fails.join("\n")
    );
}

#[test]
fn plain_decode_matches_crit_and_round_trips() {
    run(false);
}

#[test]
fn pretty_decode_matches_crit_and_round_trips() {
    run(true);
}
