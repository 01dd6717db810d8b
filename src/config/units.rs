//! Durations as the config file writes them.
//!
//! Grammar (no spaces, no sign, no fractions):
//!
//! ```text
//! duration := group+                      "250ms", "5s", "2m", "1h", "1m30s"
//! group    := digit+ unit
//! unit     := "ms" | "s" | "m" | "h"
//! ```
//!
//! Why so strict when `humantime` (which does the arithmetic) accepts far more
//! ("5 seconds", "1.5s", "2weeks")? A config file is read by people who did not write it:
//! one short spelling per unit keeps files uniform and makes a typo an error instead of a
//! surprise. A bare number is refused because `5` could mean seconds (nginx) or
//! milliseconds (HAProxy); the unit must be written. Whether zero is allowed depends on
//! the key (a zero timeout is meaningless, a zero shutdown grace is not), so the caller
//! decides with [`parse_duration`]'s `allow_zero`.

use std::time::Duration;

/// The units accepted, in the order messages list them.
const UNITS: [&str; 4] = ["ms", "s", "m", "h"];

/// What a duration key accepts, for the "(what is allowed)" part of messages.
pub(crate) const DURATION_HINT: &str =
    "a whole number and a unit: ms, s, m or h; e.g. \"250ms\", \"5s\", \"2m\", \"1h\"";

/// Why a string is not a duration; `Display` is the "what is wrong" part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DurationError {
    Empty,
    Negative,
    NoUnit,
    UnknownUnit(String),
    Malformed,
    Zero,
    TooLarge,
}

/// Parses a duration written with the grammar above.
///
/// # Errors
/// Any string outside the grammar, a zero duration unless `allow_zero`, and durations
/// too large to represent.
pub(crate) fn parse_duration(text: &str, allow_zero: bool) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::NoUnit);
    }
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let letters = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || letters == 0 {
            return Err(DurationError::Malformed);
        }
        let unit = &rest[digits..digits + letters];
        if !UNITS.contains(&unit) {
            return Err(DurationError::UnknownUnit(unit.to_owned()));
        }
        rest = &rest[digits + letters..];
    }
    // The grammar is a subset of humantime's, so an error here can only be overflow.
    let duration = humantime::parse_duration(text).map_err(|_| DurationError::TooLarge)?;
    if duration.is_zero() && !allow_zero {
        return Err(DurationError::Zero);
    }
    Ok(duration)
}

impl DurationError {
    /// The whole message for `text`: what is wrong, then what is allowed.
    pub(crate) fn message(&self, text: &str) -> String {
        match self {
            DurationError::Empty => format!("empty duration ({DURATION_HINT})"),
            DurationError::Negative => format!("{text:?} is negative ({DURATION_HINT})"),
            DurationError::NoUnit => format!("{text:?} has no unit ({DURATION_HINT})"),
            DurationError::UnknownUnit(unit) => {
                format!("{text:?} has an unknown unit {unit:?} (units: ms, s, m, h)")
            }
            DurationError::Malformed => format!("{text:?} is not a duration ({DURATION_HINT})"),
            DurationError::Zero => {
                format!("{text:?} is zero (a duration greater than zero, e.g. \"5s\")")
            }
            DurationError::TooLarge => format!("{text:?} is too large ({DURATION_HINT})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        parse_duration(text, false).unwrap()
    }

    #[test]
    fn accepts_the_spec_examples_and_compounds() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h1ms"), Duration::from_millis(3_600_001));
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("", DurationError::Empty),
            ("-1s", DurationError::Negative),
            ("5", DurationError::NoUnit),
            ("5 seconds", DurationError::Malformed),
            ("5s ", DurationError::Malformed),
            (" 5s", DurationError::Malformed),
            ("1.5s", DurationError::Malformed),
            ("s", DurationError::Malformed),
            ("+5s", DurationError::Malformed),
            ("5sec", DurationError::UnknownUnit("sec".into())),
            ("2d", DurationError::UnknownUnit("d".into())),
            ("5S", DurationError::UnknownUnit("S".into())),
            ("0s", DurationError::Zero),
            ("0ms0s", DurationError::Zero),
            ("99999999999999999999h", DurationError::TooLarge),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text, false), Err(want), "{text:?}");
        }
    }

    #[test]
    fn zero_only_where_allowed() {
        assert_eq!(parse_duration("0s", true), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s", false), Err(DurationError::Zero));
    }

    #[test]
    fn messages() {
        assert_eq!(
            DurationError::Malformed.message("5 seconds"),
            "\"5 seconds\" is not a duration (a whole number and a unit: ms, s, m or h; e.g. \"250ms\", \"5s\", \"2m\", \"1h\")"
        );
        assert_eq!(
            DurationError::UnknownUnit("sec".into()).message("5sec"),
            "\"5sec\" has an unknown unit \"sec\" (units: ms, s, m, h)"
        );
    }
}
