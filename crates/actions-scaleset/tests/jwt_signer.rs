//! A custom [`JwtSigner`] against the `scaleset-sim` simulator: it signs the App JWT the
//! client sends (with the claims the reference sends), and its output never shows in `Debug`,
//! errors or logs.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actions_scaleset::listener::BoxError;
use actions_scaleset::{Client, Credentials, DEFAULT_RUNNER_GROUP_ID, JwtSigner, PemJwtSigner};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use scaleset_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("finishes before the deadline")
}

/// A test signer: signs with the simulator's App key (standing in for a KMS) and records what
/// it was asked to sign and what it returned; or returns fixed bytes, or fails.
struct TestSigner {
    inner: Option<PemJwtSigner>,
    fixed: Vec<u8>,
    fail: bool,
    calls: AtomicUsize,
    seen: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl TestSigner {
    fn real() -> Arc<TestSigner> {
        Arc::new(TestSigner {
            inner: Some(
                PemJwtSigner::from_pem(scaleset_sim::APP_PRIVATE_KEY_PEM).expect("the sim key"),
            ),
            fixed: Vec::new(),
            fail: false,
            calls: AtomicUsize::new(0),
            seen: Mutex::default(),
        })
    }

    fn fixed(bytes: &[u8]) -> Arc<TestSigner> {
        Arc::new(TestSigner {
            inner: None,
            fixed: bytes.to_vec(),
            fail: false,
            calls: AtomicUsize::new(0),
            seen: Mutex::default(),
        })
    }

    fn failing() -> Arc<TestSigner> {
        Arc::new(TestSigner {
            inner: None,
            fixed: Vec::new(),
            fail: true,
            calls: AtomicUsize::new(0),
            seen: Mutex::default(),
        })
    }
}

impl JwtSigner for TestSigner {
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, BoxError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err("the test HSM is offline".into());
            }
            let signature = match &self.inner {
                Some(pem) => pem.sign(message).await?,
                None => self.fixed.clone(),
            };
            self.seen
                .lock()
                .expect("lock")
                .push((message.to_vec(), signature.clone()));
            Ok(signature)
        })
    }
}

/// Everything logged at any level while `f` runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

async fn sim() -> Simulator {
    Simulator::start(SimConfig::default())
        .await
        .expect("simulator starts")
}

fn app_client(sim: &Simulator, signer: Arc<TestSigner>) -> Client {
    let app = sim.app_credentials();
    let credentials =
        Credentials::github_app_with_signer(app.client_id, app.installation_id, signer)
            .expect("credentials");
    Client::builder(sim.org_config_url(), credentials)
        .retry_max(0)
        .build()
        .expect("client")
}

#[tokio::test]
async fn the_custom_signer_signs_the_app_jwt() {
    let (logs, _guard) = capture();
    let sim = sim().await;
    let signer = TestSigner::real();
    let client = app_client(&sim, signer.clone());
    within(client.list_runner_scale_sets(DEFAULT_RUNNER_GROUP_ID))
        .await
        .expect("the simulator accepts the JWT the custom signer signed");
    assert!(signer.calls.load(Ordering::SeqCst) >= 1);

    let seen = signer.seen.lock().expect("lock").clone();
    let (message, signature) = seen.first().expect("signed once").clone();
    // The signing input is `base64url(header).base64url(claims)`, the reference's claims.
    let message = String::from_utf8(message).expect("ASCII");
    let (header, claims) = message.split_once('.').expect("two parts");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("JSON");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("JSON");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], sim.app_credentials().client_id.as_str());
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!(exp > iat, "{claims}");

    // The signer's output never shows: not in Debug, not in the logs.
    let b64 = URL_SAFE_NO_PAD.encode(&signature);
    for text in [format!("{client:?}"), logs.text()] {
        assert!(!text.contains(&b64), "signer output leaked: {text}");
    }
    let app = sim.app_credentials();
    let credentials = Credentials::github_app_with_signer(
        app.client_id,
        app.installation_id,
        signer.clone() as Arc<dyn JwtSigner>,
    )
    .expect("credentials");
    assert!(!format!("{credentials:?}").contains(&b64));
}

#[tokio::test]
async fn a_refused_or_failing_signer_is_an_error_without_its_output() {
    let (logs, _guard) = capture();
    let sim = sim().await;
    let secret = b"SIGNER-OUTPUT-0123456789-not-a-signature";
    let signer = TestSigner::fixed(secret);
    let client = app_client(&sim, signer.clone());
    let e = within(client.list_runner_scale_sets(DEFAULT_RUNNER_GROUP_ID))
        .await
        .expect_err("the simulator refuses a bad signature");
    assert_eq!(signer.calls.load(Ordering::SeqCst), 1, "not retried: {e}");
    let b64 = URL_SAFE_NO_PAD.encode(secret);
    let raw = String::from_utf8_lossy(secret).into_owned();
    for text in [
        e.to_string(),
        format!("{e:?}"),
        format!("{client:?}"),
        logs.text(),
    ] {
        assert!(!text.contains(&b64), "signer output leaked: {text}");
        assert!(!text.contains(&raw), "signer output leaked: {text}");
    }

    let failing = TestSigner::failing();
    let other = app_client(&sim, failing.clone());
    let e = within(other.list_runner_scale_sets(DEFAULT_RUNNER_GROUP_ID))
        .await
        .expect_err("the signer fails");
    assert!(
        e.to_string().contains("the test HSM is offline"),
        "the signer's error is kept: {e}"
    );
}
