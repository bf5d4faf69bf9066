//! The waiting queue: highest priority first, then first come first served. Preempted sequences
//! re-enter with their original arrival number, so they resume ahead of later arrivals.

use std::cmp::Reverse;

use crate::request::RequestId;

type Key = (Reverse<i32>, u64);

#[derive(Debug, Default)]
pub struct WaitQueue {
    entries: Vec<(Key, RequestId)>,
}

impl WaitQueue {
    pub fn push(&mut self, priority: i32, arrival: u64, id: RequestId) {
        let key = (Reverse(priority), arrival);
        let at = self.entries.partition_point(|(k, _)| *k <= key);
        self.entries.insert(at, (key, id));
    }

    pub fn front(&self) -> Option<RequestId> {
        self.entries.first().map(|&(_, id)| id)
    }

    pub fn pop_front(&mut self) -> Option<RequestId> {
        (!self.entries.is_empty()).then(|| self.entries.remove(0).1)
    }

    pub fn remove(&mut self, id: RequestId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|&(_, i)| i != id);
        self.entries.len() != before
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids in service order.
    pub fn iter(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.entries.iter().map(|&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_arrival() {
        let mut q = WaitQueue::default();
        q.push(0, 1, 10);
        q.push(0, 2, 20);
        q.push(5, 3, 30);
        q.push(0, 0, 5); // a preempted sequence from earlier
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![30, 5, 10, 20]);
        assert!(q.remove(10));
        assert_eq!(q.pop_front(), Some(30));
        assert_eq!(q.len(), 2);
    }
}
