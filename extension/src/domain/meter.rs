//! The counters a session kind maps to (`tally.session_kinds.counter`).

/// `practice_sessions`, `assessments`, or `none` (a kind that counts nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    PracticeSessions,
    Assessments,
    Unmetered,
}

impl Counter {
    /// The counter named by the column's text (its CHECK allows only these).
    pub fn from_sql(name: &str) -> Counter {
        match name {
            "practice_sessions" => Counter::PracticeSessions,
            "assessments" => Counter::Assessments,
            "none" => Counter::Unmetered,
            other => panic!("tally: unknown counter {other:?}"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Counter::PracticeSessions => "practice_sessions",
            Counter::Assessments => "assessments",
            Counter::Unmetered => "none",
        }
    }

    pub fn metered(self) -> bool {
        self != Counter::Unmetered
    }

    /// This metered counter's value out of a (practice, assessments) pair.
    pub fn of<T>(self, practice: T, assessments: T) -> T {
        match self {
            Counter::PracticeSessions => practice,
            Counter::Assessments => assessments,
            Counter::Unmetered => panic!("tally: the counter 'none' has no value"),
        }
    }

    /// (practice, assessments) changes for a change of `sign` to a session of this counter.
    pub fn deltas(self, sign: i32) -> (i32, i32) {
        match self {
            Counter::PracticeSessions => (sign, 0),
            Counter::Assessments => (0, sign),
            Counter::Unmetered => (0, 0),
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::Counter;

    #[test]
    fn names_round_trip_and_values_pick_their_side() {
        for counter in [
            Counter::PracticeSessions,
            Counter::Assessments,
            Counter::Unmetered,
        ] {
            assert_eq!(Counter::from_sql(counter.as_str()), counter);
        }
        assert_eq!(Counter::PracticeSessions.of(1, 2), 1);
        assert_eq!(Counter::Assessments.of(1, 2), 2);
        assert_eq!(Counter::Assessments.deltas(-1), (0, -1));
        assert_eq!(Counter::Unmetered.deltas(1), (0, 0));
        assert!(!Counter::Unmetered.metered());
    }
}
