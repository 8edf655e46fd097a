//! The GitHub App private key: `PemJwtSigner::from_pem` must refuse (never panic on) any text,
//! and its error must not quote the input.
#![no_main]

use actions_scaleset::PemJwtSigner;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = PemJwtSigner::from_pem(&text) {
        let _ = format!("{e} {e:?}");
    }
});
