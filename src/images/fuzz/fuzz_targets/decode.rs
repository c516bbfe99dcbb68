//! libFuzzer target over the image reader: `cargo +nightly fuzz run decode` from src/images.
//! Seed it with the fixture images (see docs/image-format.md). Same properties as the stable
//! mutation test: no panic, and whatever decodes re-encodes to a fixed-point canonical form.

#![no_main]

use ferry_images::{dynamic, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = dynamic::decode("fuzz.img", data, None) else {
        return;
    };
    let bytes = img.encode("fuzz.img").expect("a decoded image re-encodes");
    let again = dynamic::decode("fuzz.img", &bytes, None).expect("re-encoded bytes decode");
    assert_eq!(again.encode("fuzz.img").unwrap(), bytes);
    assert_eq!(
        json::image_to_json(&again, false),
        json::image_to_json(&img, false)
    );
    for pretty in [false, true] {
        let j = json::image_to_json(&img, pretty).to_value();
        if let Ok(back) = json::json_to_image("fuzz.json", &j) {
            let _ = back.encode("fuzz.img");
        }
        let _ = serde_json::to_vec(&j);
    }
});
