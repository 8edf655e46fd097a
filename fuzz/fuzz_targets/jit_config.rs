//! The JIT config a runner is given (`decode_jit_config` of the simulated runner): base64 of a
//! JSON object whose values are base64 file contents. Each input is tried three ways so the
//! fuzzer reaches the inner layers: as the config itself, as the JSON inside the outer base64,
//! and as the `.runner` / `.credentials` files inside a well-formed outer layer.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use scaleset_sim::runner::decode_jit_config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_jit_config(&text);
    let _ = decode_jit_config(&B64.encode(data));
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (runner, credentials) = data.split_at(split);
    let credentials = credentials.get(1..).unwrap_or_default();
    let files = format!(
        r#"{{".runner":"{}",".credentials":"{}"}}"#,
        B64.encode(runner),
        B64.encode(credentials)
    );
    if let Ok(info) = decode_jit_config(&B64.encode(files)) {
        let _ = format!("{info:?}");
    }
});
