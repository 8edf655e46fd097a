//! Mutual TLS (`--client-cert`/`--client-key`, their variables, the TOML `[connection]` keys)
//! and token files (`--token-file`, TOML `token_file`) through the `scaleset` binary.
//!
//! The TLS server is a proxy on 127.0.0.1 that requires a client certificate (generated at
//! test time) and forwards to the in-process simulator; the simulator's own URLs (tenant,
//! queue) stay plain HTTP, so the proxy sees the GitHub API calls. Every wait has a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{DEADLINE, Streaming, TOKEN, cmd, run, sim};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use scaleset_sim::Simulator;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

/// Files of one test: the server's CA, a client certificate and its key, in a fresh directory.
struct Pki {
    dir: PathBuf,
    server_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A line of the client key's PEM body: must never be printed.
    key_line: String,
    acceptor: TlsAcceptor,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!(
        "scaleset-cli-mtls-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    // The server: a self-signed leaf for 127.0.0.1.
    let server_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server_cert = p.self_signed(&server_key).expect("server cert");
    // The client: a certificate issued by a client CA the server trusts.
    let client_ca =
        CertifiedIssuer::self_signed(ca_params("client ca"), KeyPair::generate().expect("key"))
            .expect("client ca");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "scaleset client");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().expect("key");
    let client_cert = p.signed_by(&client_key, &client_ca).expect("client cert");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der().clone()).expect("client CA");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server config");

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let key_pem = client_key.serialize_pem();
    let key_line = key_pem.lines().nth(1).expect("a body line").to_string();
    Pki {
        server_ca: write("server-ca.pem", &server_cert.pem()),
        client_cert: write("client.crt", &client_cert.pem()),
        client_key: write("client.key", &key_pem),
        key_line,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        dir,
    }
}

/// A TLS proxy requiring a client certificate in front of the simulator: its https base and
/// the count of completed handshakes.
async fn mtls_proxy(sim: &Simulator, acceptor: TlsAcceptor) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("https://{}", listener.local_addr().expect("addr"));
    let upstream = sim.addr();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    (base, handshakes)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_flags_and_variables() {
    let sim = sim().await;
    let pki = pki("flags");
    let (base, handshakes) = mtls_proxy(&sim, pki.acceptor.clone()).await;
    let url = format!("{base}/sim-org/sim-repo");
    let list = |extra: &[&str]| {
        let mut c = cmd();
        c.args(["scale-set", "list", "--url", &url, "--token", TOKEN])
            .args(["--ca-cert", &s(&pki.server_ca), "--retry-max", "0"])
            .args(extra);
        c
    };

    // With the certificate: accepted.
    let r = run(list(&[
        "--client-cert",
        &s(&pki.client_cert),
        "--client-key",
        &s(&pki.client_key),
    ]))
    .await;
    r.expect_code(0);
    assert!(r.json().is_array(), "{r:?}");
    assert!(handshakes.load(Ordering::SeqCst) >= 1);

    // From SCALESET_CLIENT_CERT / SCALESET_CLIENT_KEY.
    let mut c = list(&[]);
    c.env("SCALESET_CLIENT_CERT", &pki.client_cert)
        .env("SCALESET_CLIENT_KEY", &pki.client_key);
    run(c).await.expect_code(0);

    // Without it: the server refuses the handshake, a transport failure.
    let before = handshakes.load(Ordering::SeqCst);
    let r = run(list(&[])).await;
    r.expect_code(1);
    assert_eq!(handshakes.load(Ordering::SeqCst), before);

    // Half of a pair, a missing file, a file of the wrong kind: exit 2 before any request,
    // naming the flag and the path, never the key.
    let r = run(list(&["--client-cert", &s(&pki.client_cert)])).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--client-key"), "{r:?}");
    let r = run(list(&["--client-key", &s(&pki.client_key)])).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--client-cert"), "{r:?}");
    let missing = pki.dir.join("nope.key");
    let r = run(list(&[
        "--client-cert",
        &s(&pki.client_cert),
        "--client-key",
        &s(&missing),
    ]))
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--client-key"), "{r:?}");
    assert!(r.last_err_line().contains(&s(&missing)), "{r:?}");
    // The key given as the certificate: named, not quoted.
    let r = run(list(&[
        "--client-cert",
        &s(&pki.client_key),
        "--client-key",
        &s(&pki.client_key),
    ]))
    .await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--client-cert"), "{r:?}");
    assert!(r.last_err_line().contains(&s(&pki.client_key)), "{r:?}");
    assert!(
        !r.stderr.contains(&pki.key_line),
        "the key is never printed"
    );
    // The certificate given as the key.
    let r = run(list(&[
        "--client-cert",
        &s(&pki.client_cert),
        "--client-key",
        &s(&pki.client_cert),
        "--log-format",
        "json",
    ]))
    .await;
    r.expect_code(2);
    let e = r.err_json();
    assert_eq!(e["kind"], "InvalidClientConfig");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--client-key"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_flag() {
    let sim = sim().await;
    let pki = pki("token");
    let file = pki.dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
    let list = |extra: &[&str]| {
        let mut c = cmd();
        c.args([
            "scale-set",
            "list",
            "--url",
            &sim.config_url(),
            "--retry-max",
            "0",
        ])
        .args(extra);
        c
    };
    let r = run(list(&["--token-file", &s(&file)])).await;
    r.expect_code(0);
    assert!(r.json().is_array());
    let mut c = list(&[]);
    c.env("SCALESET_TOKEN_FILE", &file);
    run(c).await.expect_code(0);

    // A missing file names the flag and the path.
    let missing = pki.dir.join("missing-token");
    let r = run(list(&["--token-file", &s(&missing)])).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("--token-file"), "{r:?}");
    assert!(r.last_err_line().contains(&s(&missing)), "{r:?}");
    // Both a token and a token file: ambiguous.
    let r = run(list(&["--token-file", &s(&file), "--token", TOKEN])).await;
    r.expect_code(2);
    assert!(r.last_err_line().contains("not both"), "{r:?}");
    // A refused token is never printed.
    let wrong = "ghp_wrongTokenFromTheFile0123456789";
    std::fs::write(&file, wrong).expect("token file");
    let r = run(list(&["--token-file", &s(&file)])).await;
    assert_ne!(r.code, 0);
    assert!(!r.stderr.contains(wrong), "{r:?}");
    assert!(!r.stdout.contains(wrong), "{r:?}");
}

/// `scaleset run --config` with `connection` lines; returns the finished run.
async fn run_with(sim_url: &str, dir: &Path, connection: &str, extra: &[&str]) -> common::Run {
    let config = dir.join("autoscaler.toml");
    let toml = format!(
        "[connection]\nurl = {sim_url:?}\n{connection}\n\n[[scale_set]]\nname = \"mtls-run\"\n[scale_set.provisioner]\nkind = \"process\"\ncommand = {cmd:?}\nargs = [\"sim-runner\"]\nworkdir = {wd:?}\n",
        cmd = env!("CARGO_BIN_EXE_scaleset"),
        wd = dir.join("runners").display().to_string(),
    );
    std::fs::write(&config, toml).expect("config");
    let mut c = cmd();
    c.args(["run", "--config", &s(&config), "--log-level", "info"])
        .args(extra);
    // Either it listens (then it is stopped) or it exits with a configuration error.
    tokio::time::timeout(
        DEADLINE,
        Streaming::spawn(c).finish_or_stop_after("listening"),
    )
    .await
    .expect("the run ends before the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_the_client_certificate_and_token_file_from_the_config() {
    let sim = sim().await;
    let pki = pki("run");
    let (base, handshakes) = mtls_proxy(&sim, pki.acceptor.clone()).await;
    let url = format!("{base}/sim-org/sim-repo");
    let token = pki.dir.join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let ca = s(&pki.server_ca);
    let connection = format!(
        "token_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        s(&token),
        s(&pki.client_cert),
        s(&pki.client_key)
    );
    let out = run_with(&url, &pki.dir, &connection, &["--ca-cert", &ca]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    assert!(!out.stderr.contains(TOKEN));
    assert!(!out.stderr.contains(&pki.key_line));

    // A missing key file names the key of the config file and the path.
    let missing = pki.dir.join("absent.key");
    let connection = format!(
        "token_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        s(&token),
        s(&pki.client_cert),
        s(&missing)
    );
    let out = run_with(&url, &pki.dir, &connection, &["--ca-cert", &ca]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("connection.client_key_file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&s(&missing)), "{}", out.stderr);
    // So does an unreadable token file.
    let connection = format!("token_file = {:?}", s(&missing));
    let out = run_with(&url, &pki.dir, &connection, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("connection.token_file"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&s(&missing)), "{}", out.stderr);
}
