//! Properties of the TOML configuration (`Config::from_toml_str`): it returns, never panics, on
//! any text and on documents made of the keys it knows with values of any type, and a written
//! configuration reads back with the same settings. The `toml_config` cargo-fuzz target in
//! `fuzz/` checks the same for longer.

use proptest::prelude::*;
use scaleset_autoscaler::{Config, ShutdownPolicy};

const SECTIONS: &[&str] = &[
    "",
    "[connection]",
    "[metrics]",
    "[[scale_set]]",
    "[scale_set.provisioner]",
    "[leader_election]",
];

const KEYS: &[&str] = &[
    "url",
    "name",
    "labels",
    "min_runners",
    "max_runners",
    "idle_headroom",
    "shutdown",
    "kind",
    "command",
    "args",
    "workdir",
    "env",
    "image",
    "pull",
    "namespace",
    "pod_template",
    "addr",
    "poll_window_secs",
    "token_env",
    "token_file",
    "app_client_id",
    "app_installation_id",
    "app_private_key_file",
    "lease_duration_secs",
    "enabled",
    "max_concurrent_starts",
    "drain_timeout_secs",
    "runner_group",
    "labels.team",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1.5".to_string()),
        Just("\"https://github.com/o/r\"".to_string()),
        Just("\"process\"".to_string()),
        Just("\"docker\"".to_string()),
        Just("\"kubernetes\"".to_string()),
        Just("\"drain\"".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("{ a = 1 }".to_string()),
        "\"[ -~]{0,12}\"",
    ]
}

proptest! {
    #[test]
    fn any_text_does_not_panic(text in any::<String>()) {
        let _ = Config::from_toml_str(&text);
    }

    #[test]
    fn any_document_of_known_keys_does_not_panic(
        lines in prop::collection::vec(
            (prop::sample::select(SECTIONS), prop::sample::select(KEYS), value()), 0..24),
    ) {
        let text: String = lines
            .iter()
            .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
            .collect();
        if let Err(e) = Config::from_toml_str(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn a_written_config_reads_back(
        name in "[a-z][a-z0-9-]{0,20}",
        labels in prop::collection::vec("[a-z][a-z0-9-]{0,10}", 0..4),
        (min, max) in (0u32..50).prop_flat_map(|min| (Just(min), (min.max(1))..100)),
        shutdown in prop::sample::select(&["keep", "drain", "delete"][..]),
        org in "[a-z][a-z0-9-]{0,20}",
    ) {
        let labels_toml: Vec<String> = labels.iter().map(|l| format!("{l:?}")).collect();
        let text = format!(
            "[connection]\nurl = \"https://github.com/{org}\"\n\n[[scale_set]]\nname = {name:?}\n\
             labels = [{}]\nmin_runners = {min}\nmax_runners = {max}\nshutdown = {shutdown:?}\n\n\
             [scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"\n",
            labels_toml.join(", ")
        );
        let config = Config::from_toml_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let set = &config.scale_sets[0];
        let expected_url = format!("https://github.com/{org}");
        prop_assert_eq!(config.url_of(0), Some(expected_url.as_str()));
        prop_assert_eq!(&set.name, &name);
        prop_assert_eq!(&set.labels, &labels);
        prop_assert_eq!((set.min_runners, set.max_runners), (min, max));
        prop_assert_eq!(set.shutdown, shutdown.parse::<ShutdownPolicy>().expect("a policy"));
    }
}
