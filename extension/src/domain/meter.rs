//! Meters, the slots of the usage row that keep them, and what a session kind feeds.
//!
//! Usage is kept per meter slot: slot 1 keeps `practice_sessions`
//! (`tally.usage.practice_sessions_used`, limited by `tally.plans.practice_sessions_limit`),
//! slot 2 keeps `assessments` (`assessments_used`, `assessments_limit`). Every Rust
//! type that carries usage, changes, limits or reservations carries a `PerSlot` of
//! them, and a session kind feeds a set of slots (`Feeds`), so counting, limits and
//! the usage document have one shape whatever the number of meters.

use std::ops::{Index, IndexMut};

/// The number of meter slots of a usage row.
pub const SLOTS: usize = 2;

/// One meter's place in the usage row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot(usize);

impl Slot {
    /// Slot 1: `practice_sessions`.
    pub const PRACTICE_SESSIONS: Slot = Slot(0);
    /// Slot 2: `assessments`.
    pub const ASSESSMENTS: Slot = Slot(1);
    /// Every slot, in slot order (the order of the usage row's columns).
    pub const ALL: [Slot; SLOTS] = [Slot::PRACTICE_SESSIONS, Slot::ASSESSMENTS];

    /// The name of the meter the slot keeps (`tally.session_kinds.counter`'s value
    /// for a kind that feeds it, and the quota error's `counter=`).
    pub fn meter(self) -> &'static str {
        ["practice_sessions", "assessments"][self.0]
    }

    /// The slot keeping meter `name`, if a slot keeps it.
    pub fn of_meter(name: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|slot| slot.meter() == name)
    }

    /// The slot's column of tally.usage.
    pub fn used_column(self) -> &'static str {
        ["practice_sessions_used", "assessments_used"][self.0]
    }

    /// The slot's limit column of tally.plans.
    pub fn limit_column(self) -> &'static str {
        ["practice_sessions_limit", "assessments_limit"][self.0]
    }
}

/// One value per meter slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PerSlot<T>([T; SLOTS]);

impl<T> PerSlot<T> {
    /// The values in slot order (as the usage row's columns).
    pub const fn new(values: [T; SLOTS]) -> PerSlot<T> {
        PerSlot(values)
    }

    /// The value of each slot, made from the slot.
    pub fn from_fn(mut value: impl FnMut(Slot) -> T) -> PerSlot<T> {
        PerSlot(std::array::from_fn(|i| value(Slot(i))))
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> PerSlot<U> {
        PerSlot(self.0.map(f))
    }

    /// (slot, value), in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Slot, &T)> {
        Slot::ALL.into_iter().zip(self.0.iter())
    }

    /// Whether any slot's value passes `test`.
    pub fn any(&self, test: impl FnMut(&T) -> bool) -> bool {
        self.0.iter().any(test)
    }
}

impl PerSlot<i32> {
    /// Slot by slot; None on overflow.
    pub fn checked_add(self, other: PerSlot<i32>) -> Option<PerSlot<i32>> {
        let mut sum = self;
        for (value, add) in sum.0.iter_mut().zip(other.0) {
            *value = value.checked_add(add)?;
        }
        Some(sum)
    }
}

impl<T> Index<Slot> for PerSlot<T> {
    type Output = T;
    fn index(&self, slot: Slot) -> &T {
        &self.0[slot.0]
    }
}

impl<T> IndexMut<Slot> for PerSlot<T> {
    fn index_mut(&mut self, slot: Slot) -> &mut T {
        &mut self.0[slot.0]
    }
}

/// The meter slots a session kind feeds: its completed sessions count in each, and
/// its started ones hold a reservation in each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Feeds(PerSlot<bool>);

impl Feeds {
    /// What a kind with `tally.session_kinds.counter` = `name` feeds (its CHECK
    /// allows a shipped meter's name or `none`).
    pub fn from_counter(name: &str) -> Feeds {
        match name {
            "none" => Feeds::default(),
            meter => {
                let slot = Slot::of_meter(meter)
                    .unwrap_or_else(|| panic!("tally: unknown counter {meter:?}"));
                Feeds(PerSlot::from_fn(|s| s == slot))
            }
        }
    }

    /// Whether the kind feeds any slot.
    pub fn metered(self) -> bool {
        self.0.any(|feeds| *feeds)
    }

    /// The slots fed, in slot order.
    pub fn slots(self) -> impl Iterator<Item = Slot> {
        Slot::ALL.into_iter().filter(move |slot| self.0[*slot])
    }

    /// The change to every slot when one session of this kind changes by `sign`.
    pub fn deltas(self, sign: i32) -> PerSlot<i32> {
        self.0.map(|feeds| if feeds { sign } else { 0 })
    }
}

#[cfg(test)]
mod unit_tests {
    use super::{Feeds, PerSlot, Slot};

    #[test]
    fn slots_name_their_meters_and_columns() {
        assert_eq!(Slot::PRACTICE_SESSIONS.meter(), "practice_sessions");
        assert_eq!(Slot::ASSESSMENTS.used_column(), "assessments_used");
        assert_eq!(
            Slot::PRACTICE_SESSIONS.limit_column(),
            "practice_sessions_limit"
        );
        for slot in Slot::ALL {
            assert_eq!(Slot::of_meter(slot.meter()), Some(slot));
        }
        assert_eq!(Slot::of_meter("none"), None);
    }

    #[test]
    fn feeds_round_trip_and_change_their_slots() {
        for slot in Slot::ALL {
            let feeds = Feeds::from_counter(slot.meter());
            assert_eq!(feeds.slots().collect::<Vec<_>>(), [slot]);
            assert!(feeds.metered());
        }
        let assessments = Feeds::from_counter("assessments");
        assert_eq!(assessments.deltas(-1), PerSlot::new([0, -1]));
        assert_eq!(Feeds::from_counter("none").slots().count(), 0);
        assert_eq!(Feeds::from_counter("none").deltas(1), PerSlot::new([0, 0]));
        assert!(!Feeds::from_counter("none").metered());
    }

    #[test]
    fn per_slot_values_add_and_index_by_slot() {
        let mut used = PerSlot::new([3, 4]);
        used[Slot::ASSESSMENTS] += 1;
        assert_eq!(used[Slot::ASSESSMENTS], 5);
        assert_eq!(
            used.checked_add(PerSlot::new([1, -5])),
            Some(PerSlot::new([4, 0]))
        );
        assert_eq!(used.checked_add(PerSlot::new([i32::MAX, 0])), None);
        assert_eq!(
            PerSlot::from_fn(Slot::meter)[Slot::ASSESSMENTS],
            "assessments"
        );
        assert_eq!(
            used.iter().map(|(slot, n)| (slot, *n)).last(),
            Some((Slot::ASSESSMENTS, 5))
        );
    }
}
