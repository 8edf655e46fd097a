//! The daemon's TOML configuration: `Config::from_toml_str` must return (never panic) on any
//! text, with an error that names a key or a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scaleset_autoscaler::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml_str(&text) {
        Ok(config) => {
            let _ = format!("{config:?}");
            for i in 0..config.scale_sets.len() {
                let _ = config.url_of(i);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
