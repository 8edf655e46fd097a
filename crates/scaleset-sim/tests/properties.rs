//! Properties of the simulated runner's JIT config decoder (`decode_jit_config`): it returns,
//! never panics, on any input at each of its layers (the outer base64, the JSON map, the base64
//! files, the files' JSON), and decodes back a config encoded the way the service encodes one.
//! The `jit_config` cargo-fuzz target in `fuzz/` checks the same for longer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use scaleset_sim::runner::decode_jit_config;
use serde_json::json;

fn files(runner: &str, credentials: &str) -> String {
    B64.encode(
        json!({".runner": B64.encode(runner), ".credentials": B64.encode(credentials)}).to_string(),
    )
}

proptest! {
    #[test]
    fn any_text_does_not_panic(text in any::<String>()) {
        let _ = decode_jit_config(&text);
    }

    #[test]
    fn base64_of_any_bytes_does_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_jit_config(&B64.encode(&bytes));
    }

    #[test]
    fn any_files_do_not_panic(runner in any::<String>(), credentials in any::<String>()) {
        let _ = decode_jit_config(&files(&runner, &credentials));
    }

    #[test]
    fn an_encoded_config_decodes_back(
        agent_id in any::<i64>(),
        agent_name in any::<String>(),
        server_url in "https?://[a-z0-9.]{1,20}(:[0-9]{1,5})?(/[a-z0-9]{0,8}){0,3}/?",
        work_folder in any::<String>(),
        secret in any::<String>(),
    ) {
        let runner = json!({
            "agentId": agent_id,
            "agentName": agent_name,
            "serverUrl": server_url,
            "workFolder": work_folder,
        });
        let credentials = json!({"scheme": "OAuth", "data": {"simRunnerSecret": secret}});
        let info = decode_jit_config(&files(&runner.to_string(), &credentials.to_string()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let printed = format!("{:?}", info);
        prop_assert_eq!(info.agent_id, agent_id);
        prop_assert_eq!(info.agent_name, agent_name);
        prop_assert_eq!(info.server_url, server_url.trim_end_matches('/'));
        prop_assert_eq!(info.work_folder, work_folder);
        prop_assert_eq!(&info.secret, &secret);
        prop_assert!(secret.len() < 12 || !printed.contains(&secret), "Debug shows the secret");
    }
}
