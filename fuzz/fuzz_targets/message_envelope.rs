//! A 200 answer of the message queue: `parse_envelope` must return (never panic) on any
//! bytes, and a decoded message must format.
#![no_main]

use actions_scaleset::{Envelope, parse_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_envelope(data) {
        Ok(Envelope::Message(message)) => {
            let _ = format!("{message:?}");
            let _ = message.jobs_available().count() + message.jobs_completed().count();
        }
        Ok(other) => {
            let _ = format!("{other:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
