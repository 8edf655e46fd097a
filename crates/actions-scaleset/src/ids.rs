//! Typed ids: a newtype per kind of id the service hands out, so that a runner id cannot be
//! passed where a scale set id is expected.
//!
//! Each id wraps the `i64` the service sends and is exactly that number on the wire
//! (`#[serde(transparent)]`): `{"id":7}` reads as `ScaleSetId::new(7)` and writes back as
//! `7`, and `Display` prints the bare number, so URLs, log lines, labels and state files read
//! as they did when the ids were plain integers. The Go reference types these fields `int` or
//! `int64`, the Node seed `number`; here they are one type per kind:
//!
//! | Rust | Go reference | Node seed | Wire fields |
//! |---|---|---|---|
//! | [`ScaleSetId`] | `int` (`runnerScaleSetID`, `RunnerScaleSet.Id`) | `number` | `id` of a scale set, `runnerScaleSetId`, `scale_set_id` of the `User-Agent`, the `{id}` of `runnerscalesets/{id}` |
//! | [`RunnerGroupId`] | `int` (`runnerGroupID`, `RunnerScaleSet.RunnerGroupId`) | `number` | `runnerGroupId`, `id` of a runner group |
//! | [`RunnerId`] | `int` or `int64`, by method (`GetRunner`, `RemoveRunner`, `RunnerReference.Id`) | `number` | `id` of a runner (agent), `runnerId`, the `{id}` of `agents/{id}` |
//! | [`MessageId`] | `int` or `int64` (`lastMessageID`, `messageID`, `RunnerScaleSetMessage.MessageId`) | `number` | `messageId`, `lastMessageId` |
//! | [`RunnerRequestId`] | `int64` (`requestIds []int64`, `RunnerRequestId`) | `number` | `runnerRequestId`, the job request ids of acquire-jobs |
//!
//! The number is reached with [`get`](ScaleSetId::get) (or `i64::from`) and an id is made
//! with [`new`](ScaleSetId::new) (a `const fn`) or `From<i64>`; the field is private so the
//! representation can change without breaking callers. `0` is what an absent or `null` id
//! decodes to ([`Default`]), as it was for the plain integers. [`FromStr`] parses the decimal
//! number (so `clap` parses a flag straight into an id), with an error naming the kind of id.
//!
//! The kinds do not mix:
//!
//! ```compile_fail
//! use actions_scaleset::{RunnerId, ScaleSetId};
//!
//! fn scale_set_only(_: ScaleSetId) {}
//! scale_set_only(RunnerId::new(42)); // error[E0308]: mismatched types
//! ```
//!
//! ```
//! use actions_scaleset::{RunnerId, ScaleSetId};
//!
//! let set = ScaleSetId::new(7);
//! assert_eq!(set.to_string(), "7");
//! assert_eq!(set.get(), 7);
//! assert_eq!("42".parse::<RunnerId>()?, RunnerId::from(42));
//! assert_eq!(serde_json::to_string(&set)?, "7");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        ///
        /// See [the module](crate::ids) for what every id type offers.
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            #[doc = concat!("The ", $what, " with this number.")]
            pub const fn new(id: i64) -> $name {
                $name(id)
            }

            #[doc = concat!("The number of this ", $what, ", as the service sends it.")]
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> $name {
                $name(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl fmt::Display for $name {
            /// The bare number, as in URLs and on the wire.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            /// Parses the decimal number (an optional sign, then digits).
            fn from_str(s: &str) -> Result<$name, ParseIdError> {
                s.parse::<i64>().map($name).map_err(|e| ParseIdError {
                    kind: $what,
                    input: s.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    };
}

id_type!(
    /// The id of a runner scale set (`id` of a scale set, `runnerScaleSetId`).
    ScaleSetId,
    "scale set id"
);
id_type!(
    /// The id of a runner group (`runnerGroupId`); the `default` group is
    /// [`DEFAULT_RUNNER_GROUP_ID`](crate::DEFAULT_RUNNER_GROUP_ID).
    RunnerGroupId,
    "runner group id"
);
id_type!(
    /// The id of a runner, which the service also calls an agent (`id` of a runner,
    /// `runnerId`).
    RunnerId,
    "runner id"
);
id_type!(
    /// The id of a message of the queue (`messageId`), acknowledged by
    /// [`MessageSessionClient::delete_message`](crate::MessageSessionClient::delete_message)
    /// and sent back as `lastMessageId`.
    MessageId,
    "message id"
);
id_type!(
    /// The id of a job request (`runnerRequestId`), what
    /// [`MessageSessionClient::acquire_jobs`](crate::MessageSessionClient::acquire_jobs) takes.
    RunnerRequestId,
    "runner request id"
);

/// A string that is not an id: the error of the ids' [`FromStr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
    reason: String,
}

impl ParseIdError {
    /// The kind of id that was expected, e.g. `scale set id`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The text that was refused.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a {} (a whole number is expected: {})",
            self.input, self.kind, self.reason
        )
    }
}

impl std::error::Error for ParseIdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_is_the_bare_number() {
        assert_eq!(
            serde_json::to_string(&ScaleSetId::new(7)).expect("encodes"),
            "7"
        );
        assert_eq!(
            serde_json::to_string(&RunnerId::new(-1)).expect("encodes"),
            "-1"
        );
        assert_eq!(
            serde_json::from_str::<RunnerGroupId>("1").expect("decodes"),
            RunnerGroupId::new(1)
        );
        assert_eq!(
            serde_json::from_str::<MessageId>("9007199254740993").expect("decodes"),
            MessageId::new(9_007_199_254_740_993)
        );
        let ids = vec![RunnerRequestId::new(1), RunnerRequestId::new(2)];
        let text = serde_json::to_string(&ids).expect("encodes");
        assert_eq!(text, "[1,2]");
        assert_eq!(
            serde_json::from_str::<Vec<RunnerRequestId>>(&text).expect("decodes"),
            ids
        );
        // Only integers, as for the plain i64 fields before.
        assert!(serde_json::from_str::<ScaleSetId>("\"7\"").is_err());
        assert!(serde_json::from_str::<ScaleSetId>("7.5").is_err());
    }

    #[test]
    fn in_a_struct_the_field_is_a_number() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Record {
            scale_set_id: ScaleSetId,
            runner_id: RunnerId,
        }
        let r = Record {
            scale_set_id: ScaleSetId::new(3),
            runner_id: RunnerId::new(42),
        };
        let text = serde_json::to_string(&r).expect("encodes");
        assert_eq!(text, r#"{"scale_set_id":3,"runner_id":42}"#);
        assert_eq!(serde_json::from_str::<Record>(&text).expect("decodes"), r);
    }

    #[test]
    fn display_is_the_number() {
        assert_eq!(ScaleSetId::new(7).to_string(), "7");
        assert_eq!(RunnerGroupId::new(1).to_string(), "1");
        assert_eq!(RunnerId::new(42).to_string(), "42");
        assert_eq!(MessageId::new(-1).to_string(), "-1");
        assert_eq!(RunnerRequestId::new(5).to_string(), "5");
        assert_eq!(format!("{:>4}", ScaleSetId::new(7)), "   7");
        assert_eq!(format!("{:?}", ScaleSetId::new(7)), "ScaleSetId(7)");
    }

    #[test]
    fn conversions_round_trip() {
        let id = RunnerId::from(42);
        assert_eq!(id.get(), 42);
        assert_eq!(i64::from(id), 42);
        assert_eq!(ScaleSetId::default().get(), 0);
        assert!(RunnerRequestId::new(1) < RunnerRequestId::new(2));
    }

    #[test]
    fn parsing_names_the_kind_of_id() {
        assert_eq!("7".parse::<ScaleSetId>(), Ok(ScaleSetId::new(7)));
        assert_eq!("-1".parse::<MessageId>(), Ok(MessageId::new(-1)));
        let e = "x7".parse::<ScaleSetId>().expect_err("not a number");
        assert_eq!(e.kind(), "scale set id");
        assert_eq!(e.input(), "x7");
        assert_eq!(
            e.to_string(),
            r#""x7" is not a scale set id (a whole number is expected: invalid digit found in string)"#
        );
        let e = "".parse::<RunnerId>().expect_err("empty");
        assert!(e.to_string().contains("runner id"), "{e}");
        assert!(" 7".parse::<RunnerGroupId>().is_err());
    }
}
