//! `metav1.Condition` bookkeeping shared by the calculation and schedule controllers.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The longest message a condition may carry (`metav1.Condition` validation), and the
/// bound Tally keeps every status message to.
pub const MESSAGE_LIMIT: usize = 32 * 1024;

/// `message`, cut to [`MESSAGE_LIMIT`] bytes at a character boundary with a note that
/// it was cut: an error that quotes a long SQL source must not make the status write
/// fail.
pub fn bounded(message: &str) -> String {
    const CUT: &str = " … (cut)";
    if message.len() <= MESSAGE_LIMIT {
        return message.to_string();
    }
    let mut end = MESSAGE_LIMIT - CUT.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &message[..end])
}

pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: bounded(message),
        observed_generation: Some(generation),
        last_transition_time: Time(now),
    }
}

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let transition = if existing.status == new.status {
                existing.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time: transition,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

/// The reason of a condition, if it is set.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_the_condition_limit() {
        let short = "a missing column";
        assert_eq!(bounded(short), short);
        for long in ["x".repeat(100_000), "é".repeat(40_000)] {
            let cut = bounded(&long);
            assert!(cut.len() <= MESSAGE_LIMIT, "{}", cut.len());
            assert!(cut.ends_with("(cut)"));
            let made = condition("Ready", false, "Failed", &long, 1, Timestamp::UNIX_EPOCH);
            assert!(made.message.len() <= MESSAGE_LIMIT);
        }
    }
}
