//! Hostile servers: a one-shot command pointed at a server that never answers, trickles its
//! answer, sends an endless or a 100 MB body, garbage, huge headers or a redirect loop must
//! end on its own within its timeout times its attempts (plus the retry waits), stay small,
//! and say what the server did. Each server is a raw TCP listener on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{TOKEN, cmd};
use nix::sys::resource::{UsageWho, getrusage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with each connection.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Reads the request and never answers.
    Silence,
    /// Promises a body and sends one byte every 200 ms.
    Trickle,
    /// A chunked 200 whose chunks never end.
    Endless,
    /// A 200 with a 100 MB JSON-looking body.
    Huge,
    /// Bytes that are not HTTP, then close.
    Garbage,
    /// A status line followed by megabytes of headers.
    HugeHeaders,
    /// A redirect to itself, forever.
    RedirectLoop,
}

/// The request timeout given to every command, and its attempts (`--retry-max 1`).
const TIMEOUT_S: u64 = 2;
const ATTEMPTS: u64 = 2;
/// The bound a command must finish within: every attempt timing out, the retry waits
/// (`--retry-wait-max 1`), and generous slack for process start on a loaded machine.
const BOUND: Duration = Duration::from_secs(TIMEOUT_S * ATTEMPTS + 2 + 20);
/// The most memory a command may use while it is being abused.
const MAX_RSS_BYTES: i64 = 50 * 1024 * 1024;

async fn read_request(conn: &mut TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.len() > 1 << 20 {
            return;
        }
    }
}

async fn serve(mode: Hostile, mut conn: TcpStream, port: u16) {
    read_request(&mut conn).await;
    let _ = match mode {
        Hostile::Silence => {
            // Holds the connection open until the client gives up.
            let mut sink = [0u8; 1024];
            while let Ok(n) = conn.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            Ok(())
        }
        Hostile::Trickle => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{";
            let mut r = conn.write_all(head.as_bytes()).await;
            while r.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                r = conn.write_all(b" ").await;
            }
            r
        }
        Hostile::Endless => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let mut r = conn.write_all(head.as_bytes()).await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024));
            while r.is_ok() {
                r = conn.write_all(chunk.as_bytes()).await;
            }
            r
        }
        Hostile::Huge => {
            let len = 100 * 1024 * 1024;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            );
            let mut r = conn.write_all(head.as_bytes()).await;
            let block = vec![b' '; 1024 * 1024];
            let mut sent = 0;
            while r.is_ok() && sent < len {
                r = conn.write_all(&block).await;
                sent += block.len();
            }
            r
        }
        Hostile::Garbage => {
            let bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
            conn.write_all(&bytes).await
        }
        Hostile::HugeHeaders => {
            let mut r = conn.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("x-filler: {}\r\n", "h".repeat(8 * 1024));
            for _ in 0..1024 {
                if r.is_err() {
                    break;
                }
                r = conn.write_all(line.as_bytes()).await;
            }
            r
        }
        Hostile::RedirectLoop => {
            let answer = format!(
                "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{port}/again\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let r = conn.write_all(answer.as_bytes()).await;
            // Reads on (the request's body, the next request) until the client closes, so
            // that closing never resets a connection the client still writes to.
            let mut sink = [0u8; 1024];
            while let Ok(n) = conn.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            r
        }
    };
}

async fn hostile(mode: Hostile) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("bound").port();
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(mode, conn, port));
        }
    });
    (port, task)
}

/// The peak RSS of the largest child this process has waited for, in bytes.
fn children_max_rss() -> i64 {
    // Linux reports ru_maxrss in kilobytes.
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0, |u| u.max_rss() * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_end_small_and_say_what_a_hostile_server_did() {
    // (server, what the error must say, in lower case).
    let table: [(Hostile, &[&str]); 7] = [
        (Hostile::Silence, &["timed out"]),
        (Hostile::Trickle, &["timed out"]),
        (Hostile::Endless, &["larger than"]),
        (Hostile::Huge, &["larger than"]),
        (Hostile::Garbage, &["invalid http", "http"]),
        (Hostile::HugeHeaders, &["header", "http"]),
        (Hostile::RedirectLoop, &["redirect", "302"]),
    ];
    let mut failures = Vec::new();
    for (mode, says) in table {
        let (port, server) = hostile(mode).await;
        let mut c = cmd();
        c.args([
            "scale-set",
            "get",
            "--id",
            "1",
            "--url",
            &format!("http://127.0.0.1:{port}/org"),
            "--token",
            TOKEN,
            "--timeout",
            &TIMEOUT_S.to_string(),
            "--retry-max",
            "1",
            "--retry-wait-max",
            "1",
        ]);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let before = children_max_rss();
        let Ok(out) = tokio::time::timeout(BOUND, c.output()).await else {
            failures.push(format!("{mode:?}: still running after {BOUND:?}"));
            server.abort();
            continue;
        };
        server.abort();
        let out = out.expect("the command runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        let code = out.status.code().unwrap_or(-1);
        eprintln!("{mode:?}: exit {code}: {last}");
        if code == 0 || code == 2 {
            failures.push(format!("{mode:?}: exit {code}: {last}"));
        }
        if !says.iter().any(|s| last.contains(s)) {
            failures.push(format!("{mode:?}: the error says none of {says:?}: {last}"));
        }
        if stderr.contains("panicked") || stderr.contains(&TOKEN.to_lowercase()) {
            failures.push(format!(
                "{mode:?}: a panic or the token was printed: {stderr}"
            ));
        }
        let rss = children_max_rss();
        if rss > MAX_RSS_BYTES && rss > before {
            failures.push(format!("{mode:?}: peak RSS {} MB", rss / (1024 * 1024)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
