//! [`RecentIds`]: drops messages whose `_unique_id` was seen recently, as oslo.messaging does.
//!
//! A publisher that retries after a lost confirm can deliver the same message twice. The set is
//! bounded: only the last `capacity` ids are remembered, which covers retries (they follow within
//! seconds) without growing for the life of the guest.

use std::collections::{HashSet, VecDeque};

/// How many recent ids a guest remembers.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The most recent message ids, oldest evicted first.
#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for RecentIds {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl RecentIds {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            ids: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
        }
    }

    /// Records `id` and returns whether it is new. An empty id (a sender that sets none) is always new
    /// and never recorded.
    pub fn insert(&mut self, id: &str) -> bool {
        if id.is_empty() {
            return true;
        }
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }

    /// Forgets `id`, so that a redelivery of a message that is being retried is handled again.
    pub fn forget(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.order.retain(|x| x != id);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused() {
        let mut seen = RecentIds::default();
        assert!(seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(!seen.insert("a"));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn empty_ids_are_never_duplicates() {
        let mut seen = RecentIds::default();
        assert!(seen.insert(""));
        assert!(seen.insert(""));
        assert!(seen.is_empty());
    }

    #[test]
    fn only_the_most_recent_are_kept() {
        let mut seen = RecentIds::new(3);
        for id in ["a", "b", "c", "d"] {
            assert!(seen.insert(id));
        }
        assert_eq!(seen.len(), 3);
        // "a" was evicted, so it counts as new again; the others are still remembered.
        assert!(!seen.insert("d"));
        assert!(!seen.insert("b"));
        // Re-inserting "a" evicts the oldest remaining id, "b".
        assert!(seen.insert("a"));
        assert!(!seen.insert("c"));
        assert!(seen.insert("b"));
    }

    #[test]
    fn forgotten_ids_are_new_again() {
        let mut seen = RecentIds::new(2);
        assert!(seen.insert("a"));
        seen.forget("a");
        seen.forget("never-seen");
        assert!(seen.is_empty());
        assert!(seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(seen.insert("c"));
        assert_eq!(seen.len(), 2);
    }
}
