//! The job messages of an envelope body (the JSON array inside its `body` string):
//! `parse_body` must return on any text, the same way as inside an envelope.
#![no_main]

use actions_scaleset::{Envelope, parse_body, parse_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let direct = parse_body(&text);
    if let Ok((jobs, problems)) = &direct {
        let _ = format!("{jobs:?} {problems:?}");
    }
    // The same body inside an envelope gives the same jobs.
    let envelope = format!(
        r#"{{"messageId":1,"messageType":"RunnerScaleSetJobMessages","body":{}}}"#,
        escape(&text)
    );
    if let (Ok((jobs, _)), Ok(Envelope::Message(m))) =
        (&direct, parse_envelope(envelope.as_bytes()))
    {
        assert_eq!(
            jobs, &m.jobs,
            "the body decodes differently inside an envelope"
        );
    }
});

/// `s` as a JSON string literal.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
