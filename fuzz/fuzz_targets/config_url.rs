//! The config URL (`--url`, `url =`): parsing must return on any text, and a parsed config
//! must give its API URL and registration-token path without panicking.
#![no_main]

use actions_scaleset::parse_github_config_from_url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_github_config_from_url(&text) {
        Ok(config) => {
            let _ = config.is_hosted();
            let _ = config.github_api_url("/actions/runner-registration");
            let _ = config.registration_token_path();
            // Parsing is idempotent: the stored URL parses back to the same config.
            let again = parse_github_config_from_url(config.config_url.as_str())
                .expect("a parsed config URL parses again");
            assert_eq!(again, config);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
