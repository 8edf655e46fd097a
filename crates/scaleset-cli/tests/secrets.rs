//! Every command at trace level, in both log formats, with a known token and a known App
//! private key: neither may appear anywhere in stdout or stderr. The JIT config that
//! `runner jit` prints on purpose must not contain the token either.

mod common;

use base64::Engine as _;
use common::{Run, Streaming, TOKEN, cmd, create_scale_set, run, sim};
use scaleset_sim::{APP_PRIVATE_KEY_PEM, Simulator};

/// How the CLI gets its credentials in one pass.
#[derive(Clone, Copy, Debug)]
enum Creds {
    Token,
    AppKeyInEnv,
    AppKeyFile,
}

const KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scaleset-sim/keys/app-private-key.pem"
);

fn command(sim: &Simulator, creds: Creds, format: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = cmd();
    c.args(args).args([
        "--url",
        &sim.config_url(),
        "--log-level",
        "trace",
        "--log-format",
        format,
    ]);
    let app = sim.app_credentials();
    match creds {
        Creds::Token => {
            c.env("SCALESET_TOKEN", TOKEN);
        }
        Creds::AppKeyInEnv => {
            c.env("SCALESET_APP_CLIENT_ID", &app.client_id)
                .env(
                    "SCALESET_APP_INSTALLATION_ID",
                    app.installation_id.to_string(),
                )
                .env("SCALESET_APP_PRIVATE_KEY", &app.private_key_pem)
                // Present but unused: the token must not leak from the environment either.
                .env("GITHUB_TOKEN", TOKEN);
        }
        Creds::AppKeyFile => {
            c.args([
                "--app-client-id",
                &app.client_id,
                "--app-installation-id",
                &app.installation_id.to_string(),
                "--app-private-key-file",
                KEY_FILE,
            ]);
        }
    }
    c
}

fn assert_clean(what: &str, r: &Run) {
    for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        assert!(
            !text.contains(TOKEN),
            "{what}: the token is in {stream}:\n{text}"
        );
        for line in APP_PRIVATE_KEY_PEM
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            assert!(
                !text.contains(line),
                "{what}: a private key line is in {stream}: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_prints_a_credential_at_trace_level() {
    let sim = sim().await;
    let set = create_scale_set(&sim, "secret-set").await.to_string();
    sim.add_runner_group("blue").expect("group");
    let mut n = 0;
    for creds in [Creds::Token, Creds::AppKeyInEnv, Creds::AppKeyFile] {
        for format in ["text", "json"] {
            n += 1;
            let name = format!("s-{n}");
            let runner = format!("r-{n}");
            let mut commands: Vec<Vec<String>> = vec![
                vec!["config".into(), "parse".into(), sim.config_url()],
                vec!["runner-group".into(), "get".into(), "blue".into()],
                vec!["runner-group".into(), "get".into(), "nope".into()],
                vec!["scale-set".into(), "list".into()],
                vec!["scale-set".into(), "get".into(), "--id".into(), set.clone()],
                vec![
                    "scale-set".into(),
                    "get".into(),
                    "--id".into(),
                    "999999".into(),
                ],
                vec![
                    "scale-set".into(),
                    "get".into(),
                    "--name".into(),
                    "secret-set".into(),
                ],
                vec![
                    "scale-set".into(),
                    "create".into(),
                    "--name".into(),
                    name.clone(),
                ],
                vec![
                    "scale-set".into(),
                    "create".into(),
                    "--name".into(),
                    name.clone(),
                ],
                vec![
                    "runner".into(),
                    "get".into(),
                    "--name".into(),
                    "nope".into(),
                ],
                vec![
                    "runner".into(),
                    "get".into(),
                    "--id".into(),
                    "999999".into(),
                ],
                vec![
                    "runner".into(),
                    "remove".into(),
                    "--id".into(),
                    "999999".into(),
                ],
                vec!["listen".into(), "--scale-set-id".into(), "999999".into()],
            ];
            // Commands whose arguments depend on earlier answers.
            let jit_args = [
                "runner".to_string(),
                "jit".into(),
                "--scale-set-id".into(),
                set.clone(),
                "--name".into(),
                runner.clone(),
            ];
            for args in commands.drain(..) {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                let r = run(command(&sim, creds, format, &argv)).await;
                assert_clean(&format!("{creds:?} {format} {args:?}"), &r);
            }

            let argv: Vec<&str> = jit_args.iter().map(String::as_str).collect();
            let r = run(command(&sim, creds, format, &argv)).await;
            r.expect_code(0);
            assert_clean(&format!("{creds:?} {format} runner jit"), &r);
            let jit = r.json()["encodedJITConfig"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(jit.trim())
                .expect("the JIT config is base64");
            assert!(
                !String::from_utf8_lossy(&decoded).contains(TOKEN),
                "the JIT config holds the token"
            );
            let rid = r.json()["runner"]["id"].to_string();
            let created = sim
                .state()
                .scale_set_by_name(&name)
                .map(|s| s.id.to_string())
                .expect("created above");
            for args in [
                vec!["runner", "get", "--id", &rid],
                vec!["runner", "remove", "--id", &rid],
                vec!["scale-set", "update", "--id", &created, "--label", "x"],
                vec!["scale-set", "delete", "--id", &created],
            ] {
                let r = run(command(&sim, creds, format, &args)).await;
                r.expect_code(0);
                assert_clean(&format!("{creds:?} {format} {args:?}"), &r);
            }

            // A stream: start, first event, SIGTERM.
            let mut listen = Streaming::spawn(command(
                &sim,
                creds,
                format,
                &["listen", "--scale-set-id", &set],
            ));
            let first = listen.next_json().await;
            assert_eq!(first["event"], "statistics");
            listen.sigterm();
            let r = listen.finish().await;
            r.expect_code(0);
            assert_clean(&format!("{creds:?} {format} listen"), &r);
        }
    }
}
