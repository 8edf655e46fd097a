//! An unsuccessful answer of the service: the error built from any status, content type and
//! body must build, classify and format without panicking.
#![no_main]

use actions_scaleset::{ApiError, Error, Url};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [hi, lo, flags, body @ ..] = data else {
        return;
    };
    let status = StatusCode::from_u16(100 + u16::from_be_bytes([*hi, *lo]) % 500)
        .expect("100..=599 is a valid status");
    let mut headers = HeaderMap::new();
    if flags & 1 != 0 {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if flags & 2 != 0 {
        headers.insert(
            "activityid",
            HeaderValue::from_static("00000000-0000-0000-0000-000000000000"),
        );
    }
    let url = Url::parse("https://user:secret@tenant.example/_apis/runtime/runnerscalesets/1")
        .expect("a static URL");
    let api = ApiError::new(&Method::GET, &url, status, &headers, body);
    assert!(
        !api.url().contains("secret"),
        "the error kept the URL's password"
    );
    assert!(api.body().len() <= 1024 + '…'.len_utf8());
    let error = Error::from_response(api);
    let _ = (
        error.kind(),
        error.status(),
        error.is_retryable(),
        error.exception(),
    );
    let _ = format!("{error} {error:?}");
});
