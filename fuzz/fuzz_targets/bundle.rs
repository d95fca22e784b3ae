//! Untrusted bytes from MQTT: a bundle archive (tar + TOML manifest + signature), a
//! transfer chunk (CBOR), a model manifest inside a bundle. None of them may panic, hang
//! or allocate without bound, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maeday_update::transfer::Chunk;
use maeday_update::bundle::{Bundle, BundleManifest};

fuzz_target!(|data: &[u8]| {
    // A fixed, valid key: parsing and verification must reject forged input cleanly.
    let key = ed25519_dalek::VerifyingKey::from_bytes(&[
        215, 90, 152, 1, 130, 177, 10, 183, 213, 75, 254, 211, 201, 100, 7, 58, 14, 225, 114,
        243, 218, 166, 35, 37, 175, 2, 26, 104, 247, 7, 81, 26,
    ])
    .unwrap();
    if let Ok(b) = Bundle::parse(data, 1 << 20) {
        let _ = b.verify(&[key]);
        let _ = b.targets("dev", &["g".to_string()]);
    }
    let _ = Chunk::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = toml::from_str::<BundleManifest>(text);
        let _ = toml::from_str::<maeday_core::model::manifest::Manifest>(text);
    }
});
