//! The bad-input table: invalid flags, environment, TOML and credentials across every
//! subcommand. Each case must exit 2 before any request is sent (every command points at a
//! loopback listener that counts connections), name what was wrong, and print neither a
//! secret nor a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// How long one case may run: refusing bad input takes milliseconds.
const CASE_DEADLINE: Duration = Duration::from_secs(10);

/// The token every case carries (or a case's own secret): it must never be printed.
const SECRET: &str = "ghp_BadInputTableSecret0123456789";

/// A listener on 127.0.0.1 that counts the connections it is offered (and closes them).
struct Counter {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Counter {
    async fn start() -> Counter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Counter {
            url: format!("http://127.0.0.1:{port}/org"),
            hits,
        }
    }
}

/// The files the cases point at, in a private temporary directory.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = std::env::temp_dir().join(format!("scaleset-bad-input-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let f = Files { dir };
        f.write("garbage.pem", "this is not a PEM file\n");
        f.write(
            "public.pem",
            include_str!("../../actions-scaleset/tests/fixtures/app_key_public.pem"),
        );
        f.write("empty", "");
        f.write("a-file", "not a directory");
        f.write("pod.yaml", "spec:\n  containers:\n    - name: runner\n");
        f
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write a fixture");
        p.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A TOML file for `run --config`: `connection` and `scale_set` lines below the tables'
    /// headers, the URL at the counting server (the token comes from `GITHUB_TOKEN`).
    fn toml(&self, name: &str, url: &str, connection: &str, scale_set: &str) -> String {
        self.write(
            name,
            &format!(
                "[connection]\nurl = \"{url}\"\n{connection}\n\
                 [[scale_set]]\nname = \"linux\"\n{scale_set}\n"
            ),
        )
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One invalid input: the arguments (`{url}` is the counting server's URL), extra
/// environment, and what the error line must name.
struct Case {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    names: &'static str,
}

fn case(args: &[&str], names: &'static str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        names,
    }
}

fn with_env(mut c: Case, var: &'static str, value: &str) -> Case {
    c.env.push((var, value.to_string()));
    c
}

/// `command... --url {url} --token SECRET`, then `args`.
fn connected(command: &[&str], args: &[&str], names: &'static str) -> Case {
    let mut all: Vec<&str> = command.to_vec();
    all.extend(["--url", "{url}", "--token", SECRET]);
    all.extend(args);
    case(&all, names)
}

/// `scale-set get --id 1 --url {url}` (no credentials), then `args`.
fn get_scale_set(args: &[&str], names: &'static str) -> Case {
    let mut all = vec!["scale-set", "get", "--id", "1", "--url", "{url}"];
    all.extend(args);
    case(&all, names)
}

fn cases(f: &Files, url: &str) -> Vec<Case> {
    let garbage = f.path("garbage.pem");
    let public = f.path("public.pem");
    let empty = f.path("empty");
    let missing = f.path("missing");
    let a_file = f.path("a-file");
    let pod = f.path("pod.yaml");
    let get = ["scale-set", "get", "--id", "1"];
    let mut c = vec![
        // Ids and numbers.
        connected(&["scale-set", "get"], &["--id", "0"], "--id"),
        connected(&["scale-set", "get"], &["--id=-3"], "--id"),
        connected(&["scale-set", "get"], &["--id", "seven"], "--id"),
        connected(&["scale-set", "delete"], &["--id", "x"], "--id"),
        connected(&["scale-set", "delete"], &[], "--id"),
        connected(&["scale-set", "acquirable-jobs"], &["--id", "0"], "--id"),
        connected(
            &["scale-set", "get"],
            &["--runner-group-id", "0", "--name", "a"],
            "--runner-group-id",
        ),
        connected(
            &["scale-set", "list"],
            &["--runner-group-id", "abc"],
            "--runner-group-id",
        ),
        connected(
            &["scale-set", "update"],
            &["--id", "0", "--name", "a"],
            "--id",
        ),
        connected(&["runner", "get"], &["--id", "0"], "--id"),
        connected(&["runner", "get"], &[], "--id"),
        connected(&["runner", "remove"], &["--id=-1"], "--id"),
        connected(
            &["runner", "jit"],
            &["--scale-set-id", "0"],
            "--scale-set-id",
        ),
        connected(&["runner", "jit"], &[], "--scale-set-id"),
        connected(&["listen"], &["--scale-set-id", "0"], "--scale-set-id"),
        connected(
            &["listen"],
            &["--scale-set-id", "1", "--max-runners=-1"],
            "--max-runners",
        ),
        // Empty names.
        connected(&["scale-set", "create"], &["--name", ""], "--name"),
        connected(&["scale-set", "create"], &["--name", "   "], "--name"),
        connected(
            &["scale-set", "create"],
            &["--name", "a", "--label", ""],
            "--label",
        ),
        connected(
            &["scale-set", "create"],
            &["--name", "a", "--runner-group", ""],
            "--runner-group",
        ),
        connected(&["scale-set", "get"], &["--name", ""], "--name"),
        connected(
            &["scale-set", "update"],
            &["--id", "1", "--name", ""],
            "--name",
        ),
        connected(&["runner-group", "get"], &[""], "NAME"),
        connected(&["runner-group", "get"], &["  "], "NAME"),
        connected(&["runner", "get"], &["--name", ""], "--name"),
        connected(
            &["runner", "jit"],
            &["--scale-set-id", "1", "--name", ""],
            "--name",
        ),
        connected(
            &["runner", "jit"],
            &["--scale-set-id", "1", "--work-folder", ""],
            "--work-folder",
        ),
        connected(
            &["listen"],
            &["--scale-set-id", "1", "--owner", ""],
            "--owner",
        ),
        // Connection flags.
        case(
            &["scale-set", "get", "--id", "1", "--token", SECRET],
            "--url",
        ),
        case(
            &[
                "scale-set",
                "get",
                "--id",
                "1",
                "--url",
                "",
                "--token",
                SECRET,
            ],
            "--url",
        ),
        case(
            &[
                "scale-set",
                "get",
                "--id",
                "1",
                "--url",
                "not a url",
                "--token",
                SECRET,
            ],
            "not a url",
        ),
        case(
            &[
                "scale-set",
                "get",
                "--id",
                "1",
                "--url",
                "https://github.com/",
                "--token",
                SECRET,
            ],
            "https://github.com/",
        ),
        case(
            &[
                "scale-set",
                "get",
                "--id",
                "1",
                "--url",
                "ftp://github.com/o",
                "--token",
                SECRET,
            ],
            "ftp",
        ),
        case(&["scale-set", "get", "--id", "1", "--url", url], "--token"),
        connected(&get, &["--timeout", "0"], "--timeout"),
        connected(&get, &["--timeout", "soon"], "--timeout"),
        connected(&get, &["--retry-max=-1"], "--retry-max"),
        connected(&get, &["--retry-wait-max", "x"], "--retry-wait-max"),
        connected(&get, &["--ca-cert", &garbage], "garbage.pem"),
        connected(&get, &["--ca-cert", &missing], "missing"),
        connected(&get, &["--ca-cert", &empty], "empty"),
        connected(
            &get,
            &["--client-cert", &garbage, "--client-key", &garbage],
            "--client-cert",
        ),
        connected(
            &get,
            &["--client-cert", &missing, "--client-key", &missing],
            "missing",
        ),
        connected(&get, &["--log-level", "loud"], "--log-level"),
        connected(&get, &["--log-format", "xml"], "--log-format"),
        connected(&get, &["--no-such-flag"], "--no-such-flag"),
        // Credentials.
        get_scale_set(&["--token-file", &missing], "missing"),
        get_scale_set(&["--token-file", &empty], "empty"),
        get_scale_set(&["--token", "  "], "--token"),
        get_scale_set(
            &["--app-client-id", "Iv1.x", "--app-installation-id", "1"],
            "--app-private-key-file",
        ),
        get_scale_set(
            &[
                "--app-client-id",
                "Iv1.x",
                "--app-installation-id",
                "0",
                "--app-private-key-file",
                &public,
            ],
            "--app-installation-id",
        ),
        get_scale_set(
            &[
                "--app-client-id",
                "Iv1.x",
                "--app-installation-id",
                "1",
                "--app-private-key-file",
                &garbage,
            ],
            "private key",
        ),
        get_scale_set(
            &[
                "--app-client-id",
                "Iv1.x",
                "--app-installation-id",
                "1",
                "--app-private-key-file",
                &public,
            ],
            "public key",
        ),
        get_scale_set(
            &[
                "--app-client-id",
                "Iv1.x",
                "--app-installation-id",
                "1",
                "--app-private-key-file",
                &missing,
            ],
            "missing",
        ),
        // The environment.
        with_env(
            case(
                &["scale-set", "get", "--id", "1", "--token", SECRET],
                "nope",
            ),
            "SCALESET_URL",
            "nope",
        ),
        with_env(
            case(&["scale-set", "get", "--id", "1", "--url", url], "missing"),
            "SCALESET_TOKEN_FILE",
            &missing,
        ),
        with_env(connected(&get, &[], "chatty"), "SCALESET_LOG", "chatty"),
        with_env(
            get_scale_set(
                &["--app-client-id", "Iv1.x", "--app-installation-id", "1"],
                "public key",
            ),
            "SCALESET_APP_PRIVATE_KEY_FILE",
            &public,
        ),
        // config parse, demo, sim, sim-runner.
        case(&["config", "parse", "not a url"], "not a url"),
        case(
            &["config", "parse", "https://github.com/"],
            "https://github.com/",
        ),
        case(&["demo", "--jobs", "0"], "--jobs"),
        case(&["demo", "--job-duration", "-1"], "--job-duration"),
        case(&["demo", "--arrival-rate", "0"], "--arrival-rate"),
        case(&["demo", "--max-runners", "0"], "--max-runners"),
        case(&["demo", "--provisioner", "vm"], "--provisioner"),
        case(&["sim", "--port", "70000"], "--port"),
        case(&["sim", "--mode", "cloud"], "--mode"),
        case(&["sim-runner"], "--jitconfig"),
        case(&["sim-runner", "--jitconfig", "not-base64!"], "JIT config"),
        // run: flags.
        connected(&["run"], &["--name", "linux"], "--runner-command"),
        connected(
            &["run"],
            &["--name", "", "--runner-command", "/bin/true"],
            "--name",
        ),
        connected(&["run"], &["--runner-command", "/bin/true"], "--name"),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--max-runners",
                "0",
            ],
            "--max-runners",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--min-runners",
                "5",
                "--max-runners",
                "2",
            ],
            "min_runners",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--shutdown",
                "later",
            ],
            "--shutdown",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--provisioner",
                "vm",
            ],
            "--provisioner",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--metrics-addr",
                "nowhere",
            ],
            "--metrics-addr",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--runner-workdir",
                &a_file,
            ],
            "a-file",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--image",
                "runner:1",
            ],
            "--image",
        ),
        connected(
            &["run"],
            &["--name", "linux", "--provisioner", "docker"],
            "--image",
        ),
        connected(
            &["run"],
            &["--name", "linux", "--provisioner", "kubernetes"],
            "--pod-template",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--provisioner",
                "kubernetes",
                "--pod-template",
                &missing,
            ],
            "missing",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--provisioner",
                "kubernetes",
                "--pod-template",
                &pod,
                "--leader-election",
                "--lease-name",
                "Not_A_Name",
            ],
            "--lease-name",
        ),
        connected(
            &["run"],
            &[
                "--name",
                "linux",
                "--runner-command",
                "/bin/true",
                "--config",
                &missing,
            ],
            "--config",
        ),
        case(&["run", "--config", &missing], "missing"),
    ];
    // run --config: the TOML file.
    let tomls: [(&str, &str, &str, &'static str); 10] = [
        (
            "bad-syntax.toml",
            "",
            "max_runners = = 3",
            "bad-syntax.toml",
        ),
        ("unknown-key.toml", "", "max_runnerz = 3", "max_runnerz"),
        (
            "min-max.toml",
            "",
            "min_runners = 4\nmax_runners = 2\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"",
            "min_runners",
        ),
        ("no-provisioner.toml", "", "max_runners = 2", "provisioner"),
        (
            "bad-kind.toml",
            "",
            "[scale_set.provisioner]\nkind = \"vm\"",
            "vm",
        ),
        (
            "bad-shutdown.toml",
            "",
            "shutdown = \"later\"\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"",
            "later",
        ),
        (
            "bad-duration.toml",
            "",
            "idle_delay_secs = -5\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"",
            "idle_delay",
        ),
        (
            "empty-label.toml",
            "",
            "labels = [\"\"]\n[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"",
            "labels",
        ),
        ("workdir-file.toml", "", "", "a-file"),
        (
            "bad-client-cert.toml",
            "",
            "[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"",
            "client",
        ),
    ];
    for (name, connection, scale_set, names) in tomls {
        let (connection, scale_set) = match name {
            "workdir-file.toml" => (
                String::new(),
                format!(
                    "[scale_set.provisioner]\nkind = \"process\"\ncommand = \"/bin/true\"\nworkdir = \"{a_file}\""
                ),
            ),
            "bad-client-cert.toml" => (
                format!("client_cert_file = \"{garbage}\"\nclient_key_file = \"{garbage}\""),
                scale_set.to_string(),
            ),
            _ => (connection.to_string(), scale_set.to_string()),
        };
        let path = f.toml(name, url, &connection, &scale_set);
        c.push(with_env(
            case(&["run", "--config", &path], names),
            "GITHUB_TOKEN",
            SECRET,
        ));
    }
    c
}

fn show(c: &Case) -> String {
    let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} scaleset {}", env.join(" "), c.args.join(" "))
}

fn no_secret(text: &str) -> bool {
    !text.contains(SECRET) && !text.contains("-----BEGIN") && !text.contains("panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_exits_2_before_any_request_naming_what_was_wrong() {
    let server = Counter::start().await;
    let files = Files::new();
    let table = cases(&files, &server.url);
    assert!(table.len() >= 60, "the table holds {} cases", table.len());
    let mut failures = Vec::new();
    for c in &table {
        let before = server.hits.load(Ordering::SeqCst);
        let mut cmd = cmd();
        cmd.args(c.args.iter().map(|a| a.replace("{url}", &server.url)));
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        cmd.current_dir(Path::new(&files.dir));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // A command that accepts its input starts work (and retries a server that drops every
        // connection): that is a failure of this case, reported as such, not a hung table.
        let Ok(out) = tokio::time::timeout(CASE_DEADLINE, cmd.output()).await else {
            failures.push(format!(
                "{}\n  still running after {CASE_DEADLINE:?}: the input was accepted",
                show(c)
            ));
            continue;
        };
        let out = out.expect("the command runs");
        let r = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let sent = server.hits.load(Ordering::SeqCst) - before;
        let line = r.last_err_line();
        let mut wrong = Vec::new();
        if r.code != 2 {
            wrong.push(format!("exit {}", r.code));
        }
        if sent != 0 {
            wrong.push(format!("{sent} connection(s) to the server"));
        }
        if !r.stderr.contains(c.names) {
            wrong.push(format!("the error does not name {:?}", c.names));
        }
        if !no_secret(&r.stderr) || !no_secret(&r.stdout) {
            wrong.push("a secret, a key or a panic was printed".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}\n  {}\n  last line: {line}",
                show(c),
                wrong.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs misbehaved:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}
