//! Get-or-create of a scale set against the simulator: created with the configured labels,
//! adopted as is when they match, and its labels reconciled when the configuration changed.

use actions_scaleset::{Client, Credentials};
use scaleset_autoscaler::config::Config;
use scaleset_autoscaler::daemon::get_or_create_scale_set;
use scaleset_sim::{SimConfig, Simulator};

fn config(sim: &Simulator, labels: &str) -> Config {
    Config::from_toml_str(&format!(
        r#"
        [connection]
        url = "{}"
        [[scale_set]]
        name = "linux"
        labels = [{labels}]
        [scale_set.provisioner]
        kind = "process"
        command = "/bin/true"
        "#,
        sim.config_url()
    ))
    .expect("a valid config")
}

fn label_names(set: &actions_scaleset::RunnerScaleSet) -> Vec<String> {
    let mut names: Vec<String> = set.labels.iter().map(|l| l.name.clone()).collect();
    names.sort();
    names
}

fn patches(sim: &Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.contains("/runnerscalesets/"))
        .count()
}

#[tokio::test]
async fn created_then_adopted_then_labels_reconciled() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("sim starts");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("token"),
    )
    .build()
    .expect("client");

    let first = config(&sim, r#""linux", "x64""#);
    let created = get_or_create_scale_set(&client, &first.scale_sets[0])
        .await
        .expect("created");
    assert_eq!(label_names(&created), ["linux", "x64"]);
    assert_eq!(sim.state().scale_sets.len(), 1);

    // Same labels: adopted as it is, no update sent.
    let adopted = get_or_create_scale_set(&client, &first.scale_sets[0])
        .await
        .expect("adopted");
    assert_eq!(adopted.id, created.id);
    assert_eq!(patches(&sim), 0);

    // The configuration changed: the labels are updated in place, same scale set.
    let changed = config(&sim, r#""linux", "arm64""#);
    let updated = get_or_create_scale_set(&client, &changed.scale_sets[0])
        .await
        .expect("reconciled");
    assert_eq!(updated.id, created.id);
    assert_eq!(label_names(&updated), ["arm64", "linux"]);
    assert_eq!(patches(&sim), 1);
    let on_service = sim.state();
    assert_eq!(on_service.scale_sets.len(), 1, "no second scale set");
    sim.shutdown().await;
}

// One label rule: a scale set created as `create --name linux --label x64` has
// `[linux, x64]`; the autoscaler configured with `name = "linux"`, `labels = ["x64"]` wants
// the same labels, so it adopts the scale set without rewriting it to `[x64]` (which would
// strand every workflow with `runs-on: linux`).
#[tokio::test]
async fn the_name_stays_the_first_label_when_extra_labels_are_configured() {
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("sim starts");
    let client = Client::builder(
        sim.config_url(),
        Credentials::token(sim.token()).expect("token"),
    )
    .build()
    .expect("client");
    let created = client
        .create_runner_scale_set(&actions_scaleset::RunnerScaleSet {
            name: "linux".into(),
            runner_group_id: actions_scaleset::DEFAULT_RUNNER_GROUP_ID,
            labels: vec![actions_scaleset::Label::system("x64")],
            ..Default::default()
        })
        .await
        .expect("created");
    assert_eq!(label_names(&created), ["linux", "x64"]);

    let cfg = config(&sim, r#""x64", "LINUX""#);
    assert_eq!(cfg.scale_sets[0].effective_labels(), ["linux", "x64"]);
    let adopted = get_or_create_scale_set(&client, &cfg.scale_sets[0])
        .await
        .expect("adopted");
    assert_eq!(adopted.id, created.id);
    assert_eq!(label_names(&adopted), ["linux", "x64"]);
    assert_eq!(patches(&sim), 0, "the labels were not rewritten");
    sim.shutdown().await;
}
